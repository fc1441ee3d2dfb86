// Package natskv is a dedupe.Store on a NATS JetStream key-value bucket,
// through the nats.go jetstream package. It works on NATS server 2.9 and
// later.
//
// # Guarantee
//
// Each operation reads the record and writes it back with a
// compare-and-set: Claim is Get, then storekit.Decide in Go, then Create when
// the key is absent (atomic: only one creator wins) or Update with the
// revision it read; Complete and Extend are Update with the read revision;
// Release is Delete with the read revision as the expected last revision. A
// writer that loses the race re-reads and decides again (at most
// MaxAttempts times, then ErrContention). The state machine is
// storekit.Decide itself, so the answers are the other stores' answers; the
// dedupe/storetest suite checks them against NATS 2.9 and the current 2.x.
// Each operation costs two round trips (read, conditional write); replies
// from the bucket's stream leader make them linearizable with Replicas > 1.
//
// Duplicates are suppressed while the record is kept: its retention after
// completion. A crash inside the handler leaves an in-progress record that
// answers Busy until its lease ends; the next claim then takes over with a
// new fencing token and the old holder's Complete fails with
// dedupe.ErrLeaseLost.
//
// # Keys
//
// KV keys allow only [-/_=.a-zA-Z0-9], so a dedupe key is stored under
// "k_" + base64url(key) (no padding), and a key longer than MaxInlineKey
// bytes under "h_" + base64url(SHA-256(key)). Any byte string is a valid
// dedupe key.
//
// # Time and retention
//
// Lease and retention ends are computed from Config.Now and stored in the
// record; the server's clock is not consulted. The bucket's TTL (stream
// MaxAge, Config.TTL, default 72h) only collects records whose retention
// is over: a retention or lease longer than the TTL is rejected with
// ErrRetentionTooLong, so the server never drops a live record. (NATS 2.9
// has no per-key TTL; the bucket's TTL is the only physical expiry.)
//
// # Results
//
// A result that fits in one message (the server's max payload, 1 MB by
// default, less 4 KiB) is stored inline. A larger one is first written in
// chunks under keys "r_<id>_<n>" with a fresh id, and the completed record
// refers to them; a Complete that then loses its lease leaves the chunks to
// be purged (best effort) or collected by the TTL.
//
// # Inspection
//
// Get reads one live record and List walks the bucket's records (the idemq
// CLI's "dedupe get", "list" and "count"); neither changes anything.
//
// # Limits
//
// Throughput is bounded by JetStream's per-message cost: expect a few
// thousand operations a second on one bucket. Durability is the bucket's:
// use Replicas 3 in production clusters.
package natskv
