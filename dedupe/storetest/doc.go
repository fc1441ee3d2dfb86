// Package storetest is the conformance suite every dedupe.Store must pass.
//
// A store's test calls Run with a Factory that returns a fresh, isolated
// store reading time from the given function:
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, func(t *testing.T, now func() time.Time) dedupe.Store {
//			return memstore.New(memstore.Config{Now: now})
//		})
//	}
//
// Each subtest creates its own Clock and its own store, so the suite never
// sleeps: lease and retention expiry are reached by advancing the fake clock.
// A store must therefore compute every expiry from the injected clock (pass
// it into a Lua script, store it in the record), never from the server's
// clock. Physical expiry (Redis PEXPIRE, NATS KV MaxAge, SQL cleanup) is
// garbage collection only and must not cut a live record short.
//
// The suite checks the state machine documented on storekit.Decide: claim of
// an absent key, Busy with the exact lease remainder, exactly one winner
// among concurrent claimers, takeover after lease expiry with a new fencing
// token and ErrLeaseLost for the old one, Duplicate replay of stored results
// and failures, Conflict on a different fingerprint, Release making the next
// claim Acquired (never Duplicate), Extend, retention expiry, 1 MiB and binary
// results, awkward keys, cancelled contexts, ErrInvalidLease, many
// independent keys, and fencing: every Acquired claim's Fence is above the
// fence of every earlier lease of its key — after a Release, after a
// takeover (raced by many claimers too), with the clock standing still or
// set back, and after the record was deleted or its retention ran out once
// the clock has moved on by a millisecond (storekit.NextFence).
//
// All instants the suite uses are whole milliseconds apart, so a store that
// keeps times with millisecond precision (the Redis store) is held to exact
// answers too; RetryAfter is allowed to differ from the exact remainder by
// less than one millisecond to admit such rounding.
package storetest
