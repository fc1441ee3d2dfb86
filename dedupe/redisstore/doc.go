// Package redisstore is a dedupe.Store on Redis, through a go-redis v9
// redis.UniversalClient (a single server, Sentinel failover, Ring or
// Cluster).
//
// # Guarantee
//
// Every operation — Claim, Complete, Release, Extend — is one Lua script on
// one key, so it is atomic and takes one round trip (or a share of one, see
// Batching) (the first call after a
// server start or SCRIPT FLUSH takes two: EVALSHA answers NOSCRIPT and the
// script is sent with EVAL). Touching a single key per script keeps the store
// correct on Redis Cluster. The scripts mirror dedupe.Decide and its
// companions exactly and are held to them by the dedupe/storetest suite.
//
// Duplicates are suppressed as long as the record is kept: for its retention
// after completion. A crash inside the handler leaves an in-progress record
// that blocks redeliveries (Busy) until its lease ends; the next attempt then
// takes over with a new fencing token and the old holder's Complete fails
// with dedupe.ErrLeaseLost.
//
// # Time
//
// Expiry is computed from Options.Now, in the client process, and passed to
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
// queued (up to Options.MaxBatch operations) as the next pipeline: one round
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
// Options.MaxBatch 1 turns batching off: every call is its own command on
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
// A record's result is a Redis string value (at most 512 MB; keep results
// small). Records are hashes at Options.Prefix + key with the fields listed
// in scripts.go, readable with HGETALL for inspection.
package redisstore
