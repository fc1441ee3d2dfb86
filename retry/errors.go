package retry

import (
	"errors"
	"strconv"
	"time"
)

// ErrRetryLater is the cause carried by After(d, nil): the operation asked to be tried again later
// without failing.
var ErrRetryLater = errors.New("retry: retry later")

// ErrBudgetExhausted is joined to the last error by Do when the retry budget refused a retry.
var ErrBudgetExhausted = errors.New("retry: retry budget exhausted")

// PermanentError marks an error that must never be retried. Build it with Permanent and detect it
// with IsPermanent or errors.As; it stays detectable through fmt.Errorf("%w") and errors.Join.
type PermanentError struct {
	// Err is the underlying error, never nil when built by Permanent.
	Err error
}

// Error returns the underlying error's text unchanged.
func (e *PermanentError) Error() string { return e.Err.Error() }

// Unwrap returns the underlying error, so errors.Is sees through the mark.
func (e *PermanentError) Unwrap() error { return e.Err }

// Permanent marks err as not retryable: Do returns it at once and a consumer dead-letters the message
// with reason "permanent". Permanent(nil) returns nil, so `return retry.Permanent(err)` is safe on
// the success path.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &PermanentError{Err: err}
}

// IsPermanent reports whether err or any error it wraps was built by Permanent.
func IsPermanent(err error) bool {
	var p *PermanentError
	return errors.As(err, &p)
}

// AfterError asks for a retry no sooner than Delay. Build it with After and read it with AfterDelay
// or errors.As.
type AfterError struct {
	// Delay is the minimum wait before the next attempt; never negative when built by After.
	Delay time.Duration
	// Err is the underlying error; ErrRetryLater when After was given nil.
	Err error
}

// Error returns the underlying error's text followed by the requested delay.
func (e *AfterError) Error() string { return e.Err.Error() + " (retry after " + e.Delay.String() + ")" }

// Unwrap returns the underlying error, so errors.Is sees through the mark.
func (e *AfterError) Unwrap() error { return e.Err }

// After asks for the next attempt no sooner than d (negative d means zero), overriding the policy's
// backoff for this retry: use it for a server's Retry-After or a lease's remainder. The attempt still
// counts against the attempt limit and the retry budget. Unlike Permanent, After(d, nil) is not nil:
// it returns an error wrapping ErrRetryLater, for an operation that wants to be tried later without
// having failed.
func After(d time.Duration, err error) error {
	if err == nil {
		err = ErrRetryLater
	}
	return &AfterError{Delay: max(d, 0), Err: err}
}

// AfterDelay returns the delay requested by the first After in err's chain and true, or 0 and false
// when there is none.
func AfterDelay(err error) (time.Duration, bool) {
	var a *AfterError
	if errors.As(err, &a) {
		return a.Delay, true
	}
	return 0, false
}

// Class is what an operation's error asks the retrier to do. Read it with Classify.
type Class int

const (
	// Transient is any error not marked otherwise: retry after the policy's backoff while attempts
	// and budget remain. It is the zero value.
	Transient Class = iota
	// Terminal is an error built by Permanent: never retry; a consumer dead-letters the message with
	// reason "permanent".
	Terminal
	// Deferred is an error built by After: retry no sooner than AfterDelay(err).
	Deferred
	// Success is a nil error: nothing to retry.
	Success
)

// String returns the class's lower-case name ("transient", "terminal", "deferred", "success").
func (c Class) String() string {
	switch c {
	case Transient:
		return "transient"
	case Terminal:
		return "terminal"
	case Deferred:
		return "deferred"
	case Success:
		return "success"
	}
	return "class(" + strconv.Itoa(int(c)) + ")"
}

// Classify returns err's class, looking through wrapping (fmt.Errorf("%w"), errors.Join): Success for
// nil, Terminal when any error in the tree was built by Permanent (it wins over After), Deferred when
// one was built by After, Transient otherwise.
func Classify(err error) Class {
	switch {
	case err == nil:
		return Success
	case IsPermanent(err):
		return Terminal
	}
	if _, ok := AfterDelay(err); ok {
		return Deferred
	}
	return Transient
}
