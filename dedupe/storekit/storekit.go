package storekit

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemq/idemq/dedupe"
)

// ValidateLease checks a lease and retention pair as Store.Claim requires.
func ValidateLease(lease, retention time.Duration) error {
	if lease <= 0 {
		return fmt.Errorf("%w: lease %v must be positive", dedupe.ErrInvalidLease, lease)
	}
	if retention < lease {
		return fmt.Errorf("%w: retention %v is shorter than lease %v", dedupe.ErrInvalidLease, retention, lease)
	}
	return nil
}

// NewToken returns a fresh fencing token: 32 lower-case hex digits, a
// 64-bit prefix drawn from crypto/rand once per process (on the first call)
// followed by a 64-bit counter that the process increments atomically.
//
// A fencing token needs uniqueness, not secrecy: it tells a lease's holder
// from the attempt that took over after it, and every store compares it
// only for equality. Tokens of one process never repeat (2^64 calls); tokens
// of two processes collide only if their random prefixes do, which for a
// thousand processes sharing one store has a probability below 10^-13.
// Tokens are predictable within a process, so never use one as a secret.
// The call costs an atomic increment and a hex encoding, with no system
// call after the first.
func NewToken() string {
	tokenOnce.Do(func() {
		_, _ = rand.Read(tokenPrefix[:]) // crypto/rand.Read never returns an error (Go 1.24+).
	})
	var b [16]byte
	copy(b[:8], tokenPrefix[:])
	binary.BigEndian.PutUint64(b[8:], tokenCounter.Add(1))
	var h [32]byte
	hex.Encode(h[:], b[:])
	return string(h[:])
}

// The per-process state of NewToken: a random prefix drawn on first use
// (sync.Once, so importing the package has no side effect) and a counter.
var (
	tokenOnce    sync.Once
	tokenPrefix  [8]byte
	tokenCounter atomic.Uint64
)

// Decide is the dedupe state machine. Given the current record for key (nil
// when absent) it returns the claim answer and the record to store, or nil
// when the stored record must not change. A record whose retention is over
// counts as absent.
//
//   - absent → new in-progress record with a fresh token: dedupe.Acquired, Attempt 1
//   - in progress, released (no token) → new token: dedupe.Acquired, Attempt + 1
//   - in progress, lease alive → dedupe.Busy with the lease remainder
//   - in progress, lease expired → new token: dedupe.Acquired with Takeover, Attempt + 1
//   - done/failed, same fingerprint (or either empty) → dedupe.Duplicate
//   - done/failed, different fingerprint → dedupe.Conflict
//
// Every dedupe.Acquired answer carries a new Fence: NextFence of the fence stored
// in cur (also when cur's retention is over), or of 0 when cur is nil.
func Decide(cur *dedupe.Record, key, fingerprint string, now time.Time, lease, retention time.Duration) (dedupe.Claim, *dedupe.Record) {
	if cur.Live(now) {
		switch cur.State {
		case dedupe.StateInProgress:
			released := cur.Token == ""
			if !released && now.Before(cur.LeaseUntil) {
				return dedupe.Claim{Status: dedupe.Busy, RetryAfter: cur.LeaseUntil.Sub(now), Fingerprint: cur.Fingerprint}, nil
			}
			next := *cur
			next.Fingerprint = fingerprint
			next.Token = NewToken()
			next.Attempts = max(cur.Attempts, 0) + 1
			next.Fence = NextFence(cur.Fence, now)
			next.LeaseUntil = now.Add(lease)
			next.ExpiresAt = laterOf(now.Add(retention), next.LeaseUntil)
			return dedupe.Claim{Status: dedupe.Acquired, Token: next.Token, Fence: next.Fence, Takeover: !released, Attempt: next.Attempts}, &next
		case dedupe.StateDone, dedupe.StateFailed:
			if fingerprint != "" && cur.Fingerprint != "" && fingerprint != cur.Fingerprint {
				return dedupe.Claim{Status: dedupe.Conflict, Fingerprint: cur.Fingerprint}, nil
			}
			return dedupe.Claim{
				Status:      dedupe.Duplicate,
				Result:      dedupe.Result{Failed: cur.State == dedupe.StateFailed, Data: cur.Result},
				Fingerprint: cur.Fingerprint,
			}, nil
		}
	}
	// A record whose retention is over but that the store still holds
	// counts as absent, yet its fence still orders the new one.
	var prev uint64
	if cur != nil {
		prev = cur.Fence
	}
	rec := &dedupe.Record{
		Key:         key,
		Fingerprint: fingerprint,
		State:       dedupe.StateInProgress,
		Token:       NewToken(),
		Attempts:    1,
		Fence:       NextFence(prev, now),
		LeaseUntil:  now.Add(lease),
		CreatedAt:   now,
	}
	rec.ExpiresAt = laterOf(now.Add(retention), rec.LeaseUntil)
	return dedupe.Claim{Status: dedupe.Acquired, Token: rec.Token, Fence: rec.Fence, Attempt: 1}, rec
}

// CompleteRecord applies Complete to cur and returns the record to store.
func CompleteRecord(cur *dedupe.Record, token string, res dedupe.Result, now time.Time, retention time.Duration) (*dedupe.Record, error) {
	if err := owned(cur, token, now); err != nil {
		return nil, err
	}
	next := *cur
	next.State = dedupe.StateDone
	if res.Failed {
		next.State = dedupe.StateFailed
	}
	next.Result = res.Data
	next.LeaseUntil = time.Time{}
	next.ExpiresAt = now.Add(retention)
	return &next, nil
}

// ReleaseRecord applies Release to cur and returns the record to store: the
// token cleared and the lease ended, the attempt count and retention kept.
func ReleaseRecord(cur *dedupe.Record, token string, now time.Time) (*dedupe.Record, error) {
	if err := owned(cur, token, now); err != nil {
		return nil, err
	}
	next := *cur
	next.Token = ""
	next.LeaseUntil = time.Time{}
	return &next, nil
}

// SnoozeRecord applies Snooze to cur: ReleaseRecord, with the attempt it
// gives back uncounted.
func SnoozeRecord(cur *dedupe.Record, token string, now time.Time) (*dedupe.Record, error) {
	next, err := ReleaseRecord(cur, token, now)
	if err != nil {
		return nil, err
	}
	next.Attempts = max(next.Attempts-1, 0)
	return next, nil
}

// DeleteRecord checks that Delete may remove cur.
func DeleteRecord(cur *dedupe.Record, token string, now time.Time) error {
	return owned(cur, token, now)
}

// ExtendRecord applies Extend to cur and returns the record to store.
func ExtendRecord(cur *dedupe.Record, token string, now time.Time, lease time.Duration) (*dedupe.Record, error) {
	if err := owned(cur, token, now); err != nil {
		return nil, err
	}
	next := *cur
	next.LeaseUntil = now.Add(lease)
	next.ExpiresAt = laterOf(next.ExpiresAt, next.LeaseUntil)
	return &next, nil
}

// owned reports dedupe.ErrLeaseLost unless cur is a live in-progress record whose
// current token is token. An expired lease that nobody took over is still
// owned: the token, not the clock, is the authority.
func owned(cur *dedupe.Record, token string, now time.Time) error {
	if !cur.Live(now) || cur.State != dedupe.StateInProgress || token == "" || cur.Token != token {
		return dedupe.ErrLeaseLost
	}
	return nil
}

func laterOf(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// NextFence returns the fence of a new lease on a key whose last lease had
// fence prev (0 for none): the larger of prev+1 and the Unix time of now in
// microseconds. Decide calls it for every dedupe.Acquired answer; stores that run
// the state machine server-side store its result.
//
// # Ordering guarantee
//
// Fences of one key only grow, in the order the store granted the leases,
// with no clock assumption, for as long as the store keeps the key's record:
// each lease's fence is at least the previous one plus one, and a takeover
// always has a larger fence than the lease it replaced. A downstream system
// that records the largest fence it accepted for a key and refuses smaller
// ones therefore refuses every write of a holder that was taken over, even
// one that stalled past its lease and wakes up later.
//
// # Limits: resets and clocks
//
// Delete (after a dead letter) removes the record, and a store may collect
// a record once its retention is over; the next claim then starts a new
// record with no memory of the old fences. Its fence is the clock reading
// alone, in microseconds, so it is larger than the old record's last fence
// — the microsecond of the old record's last grant, plus one for each lease
// granted less than a microsecond after the one before — when the clock
// that stamps the new claim reads later than that. Clocks of the processes
// sharing a store must therefore not be apart, nor be set back, by more
// than the time between a reset and the next claim of the key: a retention
// (hours) after an expiry, the delay before a dead letter is replayed after
// a Delete. A store's injected clock that stands still (a test's fake
// clock) must move on between a reset and the next claim, by a microsecond
// per lease (a millisecond for the Redis store, which keeps times in
// milliseconds).
//
// A record whose retention is over but which the store still holds (Redis
// and NATS KV until their physical expiry, SQL until Cleanup) keeps the
// order clock-free: Decide continues from its fence. Fences read as
// microseconds since 1970, so they stay below 2^53 (exact in JavaScript and
// in JSON numbers) until the year 2255.
func NextFence(prev uint64, now time.Time) uint64 {
	var clock uint64
	if us := now.UnixMicro(); us > 0 {
		clock = uint64(us)
	}
	return max(prev+1, clock)
}
