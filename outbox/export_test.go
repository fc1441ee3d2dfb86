package outbox

import (
	"context"
	"time"
)

// SetAfterPublish installs a failpoint that runs after a round's PubAcks and
// before its marks are committed (on Postgres the rows are already marked
// sent in the claim transaction); an error aborts the round as a crash
// would (the claim transaction rolls back) and ends Run with that error.
func SetAfterPublish(r *Relay, f func(ids []string) error) { r.afterPublish = f }

// Round runs one claim-publish-mark round.
func Round(ctx context.Context, r *Relay) (claimed, done int, err error) { return r.round(ctx) }

// ErrHook is the error Run wraps around a failpoint's error.
var ErrHook = errHook

// AwakeLockKey and InflightLockKey are the SQL expressions of table's
// wake-up lock keys.
func AwakeLockKey(table string) string    { return lockKey(awakeLock, table) }
func InflightLockKey(table string) string { return lockKey(inflightLock, table) }

// AwakeLockClass and InflightLockClass are the keys' high 32 bits, as
// pg_locks shows them in classid.
const (
	AwakeLockClass    = awakeLock
	InflightLockClass = inflightLock
)

// StayAwake asks a running relay to take the awake lock, as two rounds
// with rows close together do.
func StayAwake(r *Relay) { signal(r.wake.busy) }

// Awake reports whether the relay holds the awake lock.
func Awake(r *Relay) bool { return r.awake() }

// SetAwakeIdle sets how long an awake relay stays awake without rows.
func SetAwakeIdle(r *Relay, d time.Duration) { r.wake.idle.Store(int64(d)) }

// TooFewConns is tooFewConns, for tests.
var TooFewConns = tooFewConns
