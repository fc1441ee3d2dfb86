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
// claim is decided again). Complete, Release, Snooze, Delete and Extend are
// one Lua script, which checks the token and rewrites the record; the
// operations of one batch that may share it (see Batching) go as one call
// of it, each key's operation applied and answered on its own (the first
// call of a script after a server start or SCRIPT FLUSH takes one more
// round trip: EVALSHA answers NOSCRIPT and the script is sent with EVAL).
// A script touches several keys only where they are on one server: any
// keys with a single server or Sentinel failover client, keys of one hash
// slot on Redis Cluster (so the store is correct there), one key per call
// on a Ring. The script mirrors dedupe's CompleteRecord, ReleaseRecord,
// DeleteRecord and ExtendRecord and is held to them by the dedupe/storetest
// suite. Redis 7.0 or later (or Valkey) is required, for SET with both NX
// and GET and for the script's shebang flags.
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
// trip for the batch instead of one per call; before it takes the batch it
// yields the processor (runtime.Gosched, a few times at most while the
// queue keeps growing), so that callers just woken by the previous round
// trip join it. There is no timer and no
// background goroutine: a lone caller sends its call at once, and a busy
// consumer's 64 workers share a few round trips and one connection instead
// of queueing for the client's pool. Each operation stays atomic on its own
// and answers exactly as it would alone; operations of a batch are not
// atomic together. The batch's Complete, Release, Snooze, Delete and
// Extend calls go as one script call per hash slot (one for all of them on
// a single server), which costs the server roughly a quarter to a third
// less per operation than one call each. Per-operation answers stay per operation (a key holding
// another type fails its own operation only); an error reply to a script
// call as a whole (OOM, READONLY) fails the operations it carried, none of
// which was applied; a failed round trip fails every call it carried;
// scripts the server forgot (NOSCRIPT) are resent with EVAL in a second
// pipeline.
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
// # Replication
//
// Redis replicates asynchronously: a master that acknowledged a write and
// then died (SIGKILL, a machine loss) before sending it on can be replaced
// by a replica that never saw it, and a completed record lost that way lets
// a duplicate run the operation again. Config.WaitReplicas N makes
// Complete and CompleteMany return only after N replicas of the master that
// took the write acknowledged it: the store sends WAIT N WaitTimeout on the
// same connection, right after the completions, once per master per
// pipeline (a batch of 50 completions costs one WAIT, not 50). Fewer
// acknowledgements within Config.WaitTimeout (default 1s) fail those
// completions with an error wrapping ErrNotReplicated: a store error that
// a consumer retries, never dedupe.ErrLeaseLost. The master has the record
// then (a retried Complete answers dedupe.ErrLeaseLost, a Claim Duplicate);
// only its survival is unknown.
//
// WAIT is not consensus, and what it promises is narrow: the record was in
// the memory of N replicas when Complete returned. It can still be lost
// when the replica promoted on failover is not one of those N (with more
// replicas than N; Sentinel and Cluster prefer the replica with the
// largest replication offset, but do not know which ones acknowledged),
// when those replicas restart without persistence before a failover, or
// when a partition cuts the master off together with those N replicas and
// a replica on the other side is promoted. The replicas acknowledge what
// they applied in memory: their appendfsync decides what a power loss
// takes. Claim, Release, Snooze,
// Delete and Extend do not wait: losing one of those writes amounts to a
// lease that ended early (an in-progress record lost, so a redelivery is
// Acquired anew with a larger fence), which fencing tokens and ErrLeaseLost
// already handle, or to a release or extension undone (the next claim
// waits for the lease, or takes over sooner), never to an operation run
// again after it completed. A claim batched with completions does not wait
// for WAIT either: they go in separate pipelines, sent together. While a
// replica is down every completion costs WaitTimeout, so size it with the
// consumer's store timeout in mind, and below the client's ReadTimeout.
//
// # Limits
//
// Durability is Redis's: with no AOF fsync, or an asynchronous replica
// promoted after a failover (see Replication), a completed record can be
// lost and the message processed again. Use it for idempotent or re-runnable effects; use the SQL
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
