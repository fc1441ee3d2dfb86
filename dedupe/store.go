package dedupe

import (
	"context"
	"errors"
	"fmt"
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

// ErrNotDurable is wrapped by a store's Complete error when the store took
// the write but could not confirm that it is durable as configured
// (redisstore.ErrNotReplicated: fewer replicas acknowledged it than
// Config.WaitReplicas asked). The record is complete where it was written,
// so retrying Complete would answer ErrLeaseLost; a consumer acknowledges
// the message and reports the doubt instead of retrying.
var ErrNotDurable = errors.New("dedupe: write not confirmed durable")

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
// atomically call storekit's Decide, CompleteRecord, ReleaseRecord,
// DeleteRecord and ExtendRecord so that the state machine exists once; stores that must run it server-side (the
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

// Snoozer is implemented by stores that can give a lease back without it
// counting as an attempt (every store in this module does): Snooze is
// Release, except that the next Claim is Acquired with the same Attempt as
// the snoozed one. The pipeline uses it for a handler's consumer.Snooze.
// ErrLeaseLost unless token is current.
type Snoozer interface {
	Snooze(ctx context.Context, key, token string) error
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
