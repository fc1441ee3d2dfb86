// Package redisstore is a dedupe.Store on Redis, through a go-redis v9
// redis.UniversalClient (a single server, Sentinel failover, Ring or
// Cluster).
//
// # Guarantee
//
// Every operation — Claim, Complete, Release, Extend — is one Lua script on
// one key, so it is atomic and takes one round trip (the first call after a
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
// # Batches
//
// ClaimMany and CompleteMany send many operations in one pipeline (one round
// trip per server), for consumers that fetch messages in batches.
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
