package dedupe

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// ErrLeaseLost is returned by Complete, Release and Extend when the caller's
// fencing token is no longer the record's current token: the lease expired and
// another attempt took over, the record was released, or it has already been
// completed. The caller must not assume its result was recorded.
var ErrLeaseLost = errors.New("dedupe: lease lost")

// ErrInvalidLease is returned when a lease or retention passed to a Store is
// not positive, or a retention is shorter than the lease.
var ErrInvalidLease = errors.New("dedupe: invalid lease or retention")

// State is the state of a dedupe record.
type State uint8

const (
	// StateInProgress: an attempt holds the lease and is running the handler.
	StateInProgress State = 1
	// StateDone: the operation completed; its result is stored.
	StateDone State = 2
	// StateFailed: the operation completed with a final business failure
	// ("402 No Money!"); the failure is stored and replayed, never re-evaluated.
	StateFailed State = 3
)

// String returns "in_progress", "done" or "failed".
func (s State) String() string {
	switch s {
	case StateInProgress:
		return "in_progress"
	case StateDone:
		return "done"
	case StateFailed:
		return "failed"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// ParseState is the inverse of State.String.
func ParseState(s string) (State, error) {
	switch s {
	case "in_progress":
		return StateInProgress, nil
	case "done":
		return StateDone, nil
	case "failed":
		return StateFailed, nil
	}
	return 0, fmt.Errorf("dedupe: unknown state %q", s)
}

// Result is what a completed operation leaves behind, replayed to every
// duplicate. Data is opaque to idemq (a response body, an encoded reply).
type Result struct {
	// Failed records a final business failure. It is stored and replayed like
	// a success; it is not a reason to run the operation again.
	Failed bool
	// Data is the stored result. Stores accept at least 1 MiB.
	Data []byte
}

// Status is the answer of Claim.
type Status uint8

const (
	// Acquired: the caller holds the lease and must run the operation, then
	// Complete (or Release on a transient failure).
	Acquired Status = 1
	// Busy: another attempt holds a live lease. Retry after Claim.RetryAfter.
	Busy Status = 2
	// Duplicate: the operation already completed; Claim.Result holds its
	// stored result. Acknowledge and replay, do not run again.
	Duplicate Status = 3
	// Conflict: the key completed with a different fingerprint. The same key
	// was reused for a different operation: never run it, never drop it
	// silently (HTTP 409, dead-letter reason "conflict").
	Conflict Status = 4
)

// String returns the status name in lower case.
func (s Status) String() string {
	switch s {
	case Acquired:
		return "acquired"
	case Busy:
		return "busy"
	case Duplicate:
		return "duplicate"
	case Conflict:
		return "conflict"
	}
	return fmt.Sprintf("Status(%d)", uint8(s))
}

// Claim is the outcome of Store.Claim.
type Claim struct {
	// Status says what the caller must do.
	Status Status
	// Token is the fencing token of the new lease (Acquired only). Complete,
	// Release and Extend require it.
	Token string
	// Takeover is true when Acquired replaced an in-progress record whose
	// lease had expired (the previous attempt crashed or stalled).
	Takeover bool
	// Fence is the fencing token of the new lease as a number (Acquired
	// only): larger than the Fence of every earlier lease of the same key,
	// so that a downstream system can refuse writes from a holder that was
	// taken over (it remembers the largest Fence it has seen per key and
	// rejects smaller ones). Token is the store's own check; Fence is for
	// systems the store does not know. Never 0 for an Acquired claim. See
	// NextFence for how it is made and what its order relies on.
	Fence uint64
	// Attempt is the number of this attempt (Acquired only): 1 for the first
	// claim of a key, one more for every later claim that is Acquired after
	// a Release or a takeover. It counts runs of the operation, not
	// deliveries: Busy, Duplicate and Conflict answers and failed Claim calls
	// leave it as it is. Retry policies count attempts with it.
	Attempt int
	// RetryAfter is the remainder of the other attempt's lease (Busy only).
	RetryAfter time.Duration
	// Result is the stored result (Duplicate only).
	Result Result
	// Fingerprint is the fingerprint stored with the record (Duplicate and
	// Conflict), for diagnostics.
	Fingerprint string
}

// Store persists dedupe records and applies the claim state machine
// atomically. Every implementation must pass the conformance suite in
// package dedupe/storetest. Implementations that can read and write a record
// atomically call Decide, CompleteRecord, ReleaseRecord and ExtendRecord so that
// the state machine exists once; stores that must run it server-side (the
// Redis Lua script) mirror it and are held to it by the suite.
type Store interface {
	// Claim applies the state machine for key. lease is how long an Acquired
	// claim is exclusive; retention is how long the record is kept (from the
	// claim while in progress, from completion once done). lease > 0 and
	// retention >= lease, else ErrInvalidLease.
	Claim(ctx context.Context, key, fingerprint string, lease, retention time.Duration) (Claim, error)
	// Complete stores res for key and marks it done (or failed when
	// res.Failed), kept for retention from now. ErrLeaseLost unless token is
	// the current token of an in-progress record.
	Complete(ctx context.Context, key, token string, res Result, retention time.Duration) error
	// Release ends the lease of an in-progress record after a transient
	// failure, so that the next Claim is Acquired at once (no takeover)
	// with the next Attempt. The record and its attempt count are kept; the
	// token stops being current. ErrLeaseLost unless token is current.
	Release(ctx context.Context, key, token string) error
	// Delete removes the in-progress record, attempt count included, so that
	// a later Claim starts again at Attempt 1 (the message was dead-lettered
	// and may be replayed). ErrLeaseLost unless token is current.
	Delete(ctx context.Context, key, token string) error
	// Extend pushes the lease out to now+lease (a heartbeat for a long
	// handler). ErrLeaseLost unless token is current.
	Extend(ctx context.Context, key, token string, lease time.Duration) error
}

// Pinger is implemented by stores that can tell cheaply whether they
// answer. A consumer paused by a store outage probes the store with Ping
// (capped exponential interval) and resumes when it succeeds; a store
// without Ping is probed by resuming. Every store in this module has it.
type Pinger interface {
	Ping(ctx context.Context) error
}

// DurabilityChecker is implemented by stores whose durability depends on
// the server's configuration (redisstore). CheckDurability returns, best
// effort, what a server restart or crash would forget ("" when completed
// records survive one), so that a consumer can warn at start. An error
// means the check could not be made (the server refused CONFIG, or did not
// answer); it is not a reason to refuse to start.
type DurabilityChecker interface {
	CheckDurability(ctx context.Context) (warning string, err error)
}

// Record is a stored dedupe record, as stores that run the state machine in
// Go keep it.
type Record struct {
	Key         string
	Fingerprint string
	State       State
	// Token is the fencing token of the current lease; empty after Release.
	Token string
	// Attempts is the number of leases granted for the key: the attempt
	// number of the current (or last) one.
	Attempts int
	// Fence is the numeric fencing token of the current (or last) lease, see
	// Claim.Fence and NextFence; 0 in records written before fences existed.
	Fence uint64
	// LeaseUntil is when the in-progress lease ends.
	LeaseUntil time.Time
	// Result is the stored result (done or failed).
	Result []byte
	// CreatedAt is when the record was created (first claim).
	CreatedAt time.Time
	// ExpiresAt is when retention is over; from then on the record counts as
	// absent.
	ExpiresAt time.Time
}

// Live reports whether the record exists at now (retention not over).
func (r *Record) Live(now time.Time) bool {
	return r != nil && now.Before(r.ExpiresAt)
}

// ValidateLease checks a lease and retention pair as Store.Claim requires.
func ValidateLease(lease, retention time.Duration) error {
	if lease <= 0 {
		return fmt.Errorf("%w: lease %v must be positive", ErrInvalidLease, lease)
	}
	if retention < lease {
		return fmt.Errorf("%w: retention %v is shorter than lease %v", ErrInvalidLease, retention, lease)
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
//   - absent → new in-progress record with a fresh token: Acquired, Attempt 1
//   - in progress, released (no token) → new token: Acquired, Attempt + 1
//   - in progress, lease alive → Busy with the lease remainder
//   - in progress, lease expired → new token: Acquired with Takeover, Attempt + 1
//   - done/failed, same fingerprint (or either empty) → Duplicate
//   - done/failed, different fingerprint → Conflict
//
// Every Acquired answer carries a new Fence: NextFence of the fence stored
// in cur (also when cur's retention is over), or of 0 when cur is nil.
func Decide(cur *Record, key, fingerprint string, now time.Time, lease, retention time.Duration) (Claim, *Record) {
	if cur.Live(now) {
		switch cur.State {
		case StateInProgress:
			released := cur.Token == ""
			if !released && now.Before(cur.LeaseUntil) {
				return Claim{Status: Busy, RetryAfter: cur.LeaseUntil.Sub(now), Fingerprint: cur.Fingerprint}, nil
			}
			next := *cur
			next.Fingerprint = fingerprint
			next.Token = NewToken()
			next.Attempts = max(cur.Attempts, 0) + 1
			next.Fence = NextFence(cur.Fence, now)
			next.LeaseUntil = now.Add(lease)
			next.ExpiresAt = laterOf(now.Add(retention), next.LeaseUntil)
			return Claim{Status: Acquired, Token: next.Token, Fence: next.Fence, Takeover: !released, Attempt: next.Attempts}, &next
		case StateDone, StateFailed:
			if fingerprint != "" && cur.Fingerprint != "" && fingerprint != cur.Fingerprint {
				return Claim{Status: Conflict, Fingerprint: cur.Fingerprint}, nil
			}
			return Claim{
				Status:      Duplicate,
				Result:      Result{Failed: cur.State == StateFailed, Data: cur.Result},
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
	rec := &Record{
		Key:         key,
		Fingerprint: fingerprint,
		State:       StateInProgress,
		Token:       NewToken(),
		Attempts:    1,
		Fence:       NextFence(prev, now),
		LeaseUntil:  now.Add(lease),
		CreatedAt:   now,
	}
	rec.ExpiresAt = laterOf(now.Add(retention), rec.LeaseUntil)
	return Claim{Status: Acquired, Token: rec.Token, Fence: rec.Fence, Attempt: 1}, rec
}

// CompleteRecord applies Complete to cur and returns the record to store.
func CompleteRecord(cur *Record, token string, res Result, now time.Time, retention time.Duration) (*Record, error) {
	if err := owned(cur, token, now); err != nil {
		return nil, err
	}
	next := *cur
	next.State = StateDone
	if res.Failed {
		next.State = StateFailed
	}
	next.Result = res.Data
	next.LeaseUntil = time.Time{}
	next.ExpiresAt = now.Add(retention)
	return &next, nil
}

// ReleaseRecord applies Release to cur and returns the record to store: the
// token cleared and the lease ended, the attempt count and retention kept.
func ReleaseRecord(cur *Record, token string, now time.Time) (*Record, error) {
	if err := owned(cur, token, now); err != nil {
		return nil, err
	}
	next := *cur
	next.Token = ""
	next.LeaseUntil = time.Time{}
	return &next, nil
}

// DeleteRecord checks that Delete may remove cur.
func DeleteRecord(cur *Record, token string, now time.Time) error {
	return owned(cur, token, now)
}

// ExtendRecord applies Extend to cur and returns the record to store.
func ExtendRecord(cur *Record, token string, now time.Time, lease time.Duration) (*Record, error) {
	if err := owned(cur, token, now); err != nil {
		return nil, err
	}
	next := *cur
	next.LeaseUntil = now.Add(lease)
	next.ExpiresAt = laterOf(next.ExpiresAt, next.LeaseUntil)
	return &next, nil
}

// owned reports ErrLeaseLost unless cur is a live in-progress record whose
// current token is token. An expired lease that nobody took over is still
// owned: the token, not the clock, is the authority.
func owned(cur *Record, token string, now time.Time) error {
	if !cur.Live(now) || cur.State != StateInProgress || token == "" || cur.Token != token {
		return ErrLeaseLost
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
// microseconds. Decide calls it for every Acquired answer; stores that run
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
