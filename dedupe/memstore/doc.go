// Package memstore is an in-memory dedupe.Store.
//
// It is sharded (one mutex per shard, keys spread by a seeded hash/maphash),
// bounded by Config.MaxKeys and evicts records whose retention is over as it
// is used, with no background goroutine. When it is full of live records,
// Claim returns ErrFull rather than forget a record: a forgotten record would
// let a redelivery run the operation twice.
//
// Records are compact and hold no pointers, so the garbage collector never
// scans them: a 24-byte record per key in pages, an open-addressing index of
// 4 bytes per slot and a control byte per slot beside it (the part of the
// index a new key's lookup reads: a new key is indexed later, with a batch
// of others), the key, fingerprint and result bytes copied into 64 KiB
// chunks (an entry over 16 KiB gets a chunk of its own), and lease state
// only while a record is in progress. An operation on a key first starts
// fetching the key's control bytes and index slot into the processor's
// caches (a prefetch instruction on amd64 and arm64, which does not wait),
// then reads the clock and takes the shard's lock, so that the lookup's
// cache miss in a large index overlaps that work instead of following it.
// A completed record with a 64-byte fingerprint and an 11-byte key holds
// about 117 bytes in all. Chunks are compacted once most of their bytes
// belong to records that are gone, so memory follows the live records. A
// shard addresses at most 65,536 chunks (4 GiB); past that, Claim and
// Complete of what it cannot hold return an error and change nothing. Claim
// and Complete of a fresh key make no allocation of their own, amortised;
// replaying a Duplicate allocates the copy of its result (and of the
// fingerprint when the caller's differs).
//
// Tokens are 16 hex digits, unique within a Store (they are compared, never
// trusted as secrets). Fences follow storekit.NextFence while a record is in
// progress; a completed record does not keep its fence, so the first lease
// after its retention is fenced by the clock, as after an eviction.
//
// Records live only as long as the process. Use memstore in tests, in
// examples, and for single-process consumers whose effects are idempotent
// anyway; use the Redis, SQL or NATS KV stores when several processes share
// the work or a restart must not forget what was done.
package memstore
