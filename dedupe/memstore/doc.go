// Package memstore is an in-memory dedupe.Store.
//
// It is sharded (one mutex per shard, keys spread by FNV-1a), bounded by
// Config.MaxKeys and evicts records whose retention is over as it is used,
// with no background goroutine. When it is full of live records, Claim
// returns ErrFull rather than forget a record: a forgotten record would let a
// redelivery run the operation twice.
//
// Records live only as long as the process. Use memstore in tests, in
// examples, and for single-process consumers whose effects are idempotent
// anyway; use the Redis, SQL or NATS KV stores when several processes share
// the work or a restart must not forget what was done.
package memstore
