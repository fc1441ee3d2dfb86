// Package redisstore is a dedupe.Store on Redis, through a go-redis v9
// redis.UniversalClient (a single server, Sentinel failover, Ring or
// Cluster).
//
// # Guarantee
//
// Every operation is atomic on one key and takes one round trip (or a share
// of one, see Batching). Claim is a plain SET NX GET: it creates the record
// of an absent key, or returns the existing record, from which Claim answers
// Busy, Duplicate or Conflict with storekit.Decide itself, in Go; only a
// takeover after an expired lease, or a record past its retention that
// Redis has not yet collected, takes a second round trip: a Lua script that
// swaps the record only if it is still the version decided on (else the
// claim is decided again). Complete, Release and Extend are one Lua script
// each, which checks the token and rewrites the record (the first call of
// a script after a server start or SCRIPT FLUSH takes one more round trip:
// EVALSHA answers NOSCRIPT and the script is sent with EVAL). Touching a
// single key per operation keeps the store correct on Redis Cluster. The
// scripts mirror dedupe's CompleteRecord, ReleaseRecord, DeleteRecord and ExtendRecord
// and are held to them by the dedupe/storetest suite. Redis 7.0 or later
// (or Valkey) is required, for SET with both NX and GET.
//
// Duplicates are suppressed as long as the record is kept: for its retention
// after completion. A crash inside the handler leaves an in-progress record
// that blocks redeliveries (Busy) until its lease ends; the next attempt then
// takes over with a new fencing token and the old holder's Complete fails
// with dedupe.ErrLeaseLost.
//
// # Time
//
// Expiry is computed from Config.Now, in the client process, and passed to
// the scripts; the Redis server's clock is never read, so clients of one
// store must keep their clocks reasonably in sync (as for any lease). Times
// are stored in whole milliseconds. Each key also gets a PEXPIRE of its
// remaining logical lifetime plus GCMargin: garbage collection, never the
// authority.
//
// # Batching
//
// By default the store coalesces concurrent calls: while one pipeline is in
// flight, Claim, Complete, Release and Extend calls from other goroutines
// queue, and the first of them, once the pipeline returns, sends everything
// queued (up to Config.MaxBatch operations) as the next pipeline: one round
// trip for the batch instead of one per call. There is no timer and no
// background goroutine: a lone caller sends its call at once, and a busy
// consumer's 64 workers share a few round trips and one connection instead
// of queueing for the client's pool. Each operation stays atomic on its own
// and answers exactly as it would alone; operations of a batch are not
// atomic together. Per-operation error replies stay per operation; a failed
// round trip fails every call it carried; scripts the server forgot
// (NOSCRIPT) are resent with EVAL in a second pipeline.
//
// A caller whose context ends returns ctx.Err() at once if its operation is
// still queued, and the operation is never sent. If the operation is already
// on the wire it may still take effect: an abandoned Claim leaves an
// in-progress record that answers Busy until its lease expires and a
// redelivery takes it over; an abandoned Complete, Release or Extend either
// happened or did not, exactly as when a single command's reply is lost.
// The caller that sends a batch returns when its round trip does; the
// round trip is cancelled only once every caller in it has given up.
//
// Config.MaxBatch 1 turns batching off: every call is its own command on
// its own pool connection.
//
// ClaimMany and CompleteMany send an explicit batch in one pipeline (one
// round trip per server), for consumers that fetch messages in batches.
//
// # Connection pool
//
// Without batching, each concurrent call holds one of the go-redis client's
// pool connections for its round trip: set the client's PoolSize (default
// 10 per CPU) at least to the consumer's concurrency (its worker count), or
// workers wait for connections instead of for Redis. With batching on (the
// default) one store uses one connection at a time for its calls, and the
// default PoolSize is ample.
//
// # Limits
//
// Durability is Redis's: with no AOF fsync, or an asynchronous replica
// promoted after a failover, a completed record can be lost and the message
// processed again. Use it for idempotent or re-runnable effects; use the SQL
// store inside the handler's transaction for exactly-once database effects.
// A record is a Redis string (at most 512 MB; keep results small).
//
// # Record format
//
// A record is one string at Config.Prefix + key, readable with GET (or with
// Store.Get and Store.Scan, which decode it):
//
//	byte 1        state: 'I' in progress, 'D' done, 'F' failed
//	bytes 2-14    retention end, Unix milliseconds, 13 digits, zero-padded;
//	              from then on the record counts as absent
//	bytes 15-27   lease end, Unix milliseconds, 13 digits (zeros once completed
//	              or released)
//	bytes 28-40   creation time, Unix milliseconds, 13 digits
//	bytes 41-46   attempts: leases granted for the key, 6 digits
//	bytes 47-66   fence: the numeric fencing token of the current (or last)
//	              lease, dedupe.Claim.Fence, 20 digits
//	then          fencing token (empty once released), ":", fingerprint
//	              length in decimal, ":", fingerprint, and the stored result
//	              (binary, to the end)
//
// For example, a first claim at 2030-01-01T00:00:00Z with a 30s lease, 1h
// retention and fingerprint "fp" stores
// "I189345960000018934560300001893456000000000001" +
// "00001893456000000000" + token + ":2:fp".
// Fixed-width fields let the scripts compare them as strings and cut them
// at fixed offsets: no parsing, no number formatting, one GET and one SET
// (or DEL) per script. Times are clamped to 13 digits (year 2286), attempts
// to 999999.
//
// Records written before fences existed have lower-case states ('i', 'd',
// 'f') and no fence field (a 46-byte header). They are still read, with
// fence 0: duplicates and conflicts are answered from them and an expired
// lease is taken over (writing the new format); their in-progress leases
// cannot be completed by this version, nor new records by the earlier one
// (each version's scripts check the state letter), so a rolling upgrade
// errs towards ErrLeaseLost and a redelivery, never towards a wrong answer.
//
// # Durability
//
// CheckDurability reads the server's persistence settings (CONFIG GET
// appendonly, appendfsync, save) and says what a restart would forget; a
// consumer calls it at start and logs the answer as a warning. Redis
// without AOF forgets every record on restart, and duplicates delivered
// after that run again.
package redisstore
