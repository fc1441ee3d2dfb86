package consumer

import (
	"context"
	"errors"
	"time"
)

// Message is one delivery of a message, translated from the transport into
// the pipeline's vocabulary. Adapters build it (natsjs.Convert for
// JetStream); handlers read it and may record a result with SetResult.
type Message struct {
	// ID identifies the message at the broker and stays the same across
	// redeliveries. It is dedupe.Input.MessageID, so dedupe.MessageIDKey
	// dedupes by it. natsjs sets the Nats-Msg-Id header when present, else
	// "<stream>:<stream sequence>".
	ID string
	// Subject is the subject (topic) the message was published to.
	Subject string
	// Header holds the message headers, keys as the transport delivered
	// them (NATS headers are case-sensitive). It may be nil.
	Header map[string][]string
	// Data is the message body.
	Data []byte
	// Attempt is the 1-based delivery count as the broker counts it
	// (JetStream: NumDelivered), so it survives crashes. Every delivery
	// counts, including those answered Busy. Values below 1 are taken as 1.
	// With a Guard the retry policy counts handler runs instead
	// (Outcome.Attempt); this count is then only a safety cap
	// (Config.MaxDeliveries). Transports without a delivery count set 1.
	Attempt int
	// Received is when the adapter received this delivery.
	Received time.Time
	// Native is the transport's own message (a jetstream.Msg for natsjs),
	// for handlers that need broker metadata. The pipeline never touches it,
	// and handlers must not acknowledge it: the adapter acts on the Outcome.
	Native any
	// Fence is the fencing token of this run's dedupe lease (dedupe.Claim.
	// Fence): larger than the Fence of every earlier run for the same key.
	// Pass it to downstream writes that must refuse a stale owner, and have
	// them reject a smaller one. The pipeline sets it (and outbox.Inbox for
	// its own claims) before the handler runs; 0 without a dedupe claim.
	Fence uint64
	// KeepAlive, when not nil, is called by Pipeline.Process every
	// Config.HeartbeatInterval while the handler runs, to tell the broker
	// that the message is still being worked on (natsjs: InProgress). Errors
	// are logged; the handler keeps running. Set by adapters.
	KeepAlive func(ctx context.Context) error
	// Sequence is the broker's sequence number of the message (JetStream:
	// the stream sequence), for logs; 0 when the transport has none.
	Sequence uint64

	result    []byte
	hasResult bool
	claim     ClaimResult // SetClaim
}

// SetResult records data as the operation's result. With a dedupe guard it
// is stored when the handler returns nil and replayed to every duplicate
// (Outcome.Replay); without one it is only reported in Outcome.Result. A
// later call replaces an earlier one. To record a final business failure
// instead, return Reject from the handler.
func (m *Message) SetResult(data []byte) {
	m.result = data
	m.hasResult = true
}

// Result returns the data recorded by SetResult and whether it was called.
func (m *Message) Result() ([]byte, bool) {
	return m.result, m.hasResult
}

// Handler processes one message. Its error decides what happens next:
//
//	nil                   ack (with a guard: the result is stored first)
//	Reject(data, err)     final business failure: stored, replayed, acked; never retried or dead-lettered
//	wraps ErrConflict     dead-letter with reason "conflict" (e.g. a transactional inbox's key conflict)
//	Invalid(err), or dedupe.IsInvalidInput(err)
//	                      dead-letter with reason "invalid": the message is not valid as sent
//	retry.Permanent(err)  dead-letter with reason "permanent"
//	retry.After(d, err)   redeliver no sooner than d (attempts and budget still count)
//	Snooze(d)             redeliver after d without using an attempt ("not now")
//	any other error       transient: redeliver after the policy's backoff, dead-letter "exhausted" at the limit
//
// A panic is recovered, logged with its stack and treated as a transient
// error (*PanicError). The handler should honour ctx: it is cancelled when
// the consumer shuts down past its deadline, or when the dedupe lease was
// lost to another attempt (context.Cause is then dedupe.ErrLeaseLost).
type Handler func(ctx context.Context, m *Message) error

// ErrRejected is the cause of Reject(data, nil).
var ErrRejected = errors.New("consumer: rejected")

// RejectError is a final business failure ("402 No Money!"): the operation
// was evaluated and refused. The pipeline stores it as a failed dedupe
// result, replays it to duplicates, and acknowledges the message; it is never
// retried and never dead-lettered. Build it with Reject.
type RejectError struct {
	// Data is the stored result, e.g. an encoded refusal reply.
	Data []byte
	// Err describes the refusal; ErrRejected when Reject was given nil.
	Err error
}

// Error returns the refusal's text.
func (e *RejectError) Error() string { return "consumer: rejected: " + e.Err.Error() }

// Unwrap returns Err.
func (e *RejectError) Unwrap() error { return e.Err }

// Reject returns an error that tells the pipeline the operation completed
// with a final business failure: data is stored (dedupe.Result{Failed:
// true}) and replayed to duplicates, the message is acknowledged. err
// describes the refusal; nil means ErrRejected. It is never nil.
func Reject(data []byte, err error) error {
	if err == nil {
		err = ErrRejected
	}
	return &RejectError{Data: data, Err: err}
}

// ErrInvalid is matched (errors.Is) by every error built with Invalid, and
// is the cause of Invalid(nil).
var ErrInvalid = errors.New("consumer: invalid message")

// InvalidError says that a message cannot be processed as sent (a body that
// does not decode, a field out of range): the pipeline dead-letters it with
// reason "invalid" and never retries it. Build it with Invalid.
type InvalidError struct {
	// Err says what is wrong with the message; ErrInvalid when Invalid was
	// given nil.
	Err error
}

// Error returns "consumer: invalid message: " followed by Err's text.
func (e *InvalidError) Error() string {
	if e.Err == ErrInvalid {
		return ErrInvalid.Error()
	}
	return ErrInvalid.Error() + ": " + e.Err.Error()
}

// Unwrap returns Err.
func (e *InvalidError) Unwrap() error { return e.Err }

// Is reports whether target is ErrInvalid.
func (e *InvalidError) Is(target error) bool { return target == ErrInvalid }

// UnavailableError reports that a dependency the handler needs did not
// answer — its database, an API — while the message itself is fine. Build
// it with Unavailable.
type UnavailableError struct {
	// Err is the dependency's error.
	Err error
	// Probe, when not nil, tells whether the dependency answers again
	// (a database ping); transports probe with it while paused.
	Probe func(ctx context.Context) error
}

// Error returns "consumer: dependency unavailable: " and Err's text.
func (e *UnavailableError) Error() string {
	return "consumer: dependency unavailable: " + e.Err.Error()
}

// Unwrap returns Err.
func (e *UnavailableError) Unwrap() error { return e.Err }

// Unavailable returns an error that tells the pipeline the handler could
// not run because a dependency did not answer: the message is handed back
// after Config.UnavailableDelay with Outcome.Unavailable set to
// HandlerUnavailable and probe attached, never dead-lettered for it, and
// with a Guard the attempt is given back uncounted (as for Snooze).
// Transports pause on it as on a store outage (natsjs probes with probe, or
// resumes after its probe interval when probe is nil). Without a Guard
// attempts are deliveries, so each delivery during the outage still counts:
// the pause keeps that to about one per message per outage.
// outbox.Inbox returns it when its database does not answer.
func Unavailable(err error, probe func(ctx context.Context) error) error {
	return &UnavailableError{Err: err, Probe: probe}
}

// SnoozeError asks for a redelivery after Delay without using an attempt
// (River's JobSnooze): "not now, try again later". Build it with Snooze.
type SnoozeError struct {
	// Delay is how long to wait before the redelivery.
	Delay time.Duration
}

// Error returns "consumer: snoozed for <Delay>".
func (e *SnoozeError) Error() string { return "consumer: snoozed for " + e.Delay.String() }

// Snooze returns an error that makes the pipeline hand the message back for
// redelivery after d (at least 0) without counting this run as an attempt:
// with a Guard whose store implements dedupe.Snoozer (every store here does)
// the next run has the same attempt number. Without a Guard attempts are
// deliveries, so a snooze still counts one. A message that snoozes for ever
// is bounded by Config.MaxDeliveries (1000 deliveries by default), after
// which it is dead-lettered as exhausted; every 100th snoozed delivery is
// logged at Warn.
func Snooze(d time.Duration) error { return &SnoozeError{Delay: max(d, 0)} }

// Invalid returns an error that tells the pipeline the message is not valid
// as sent: it is dead-lettered with reason "invalid" (Outcome.Reason
// ReasonInvalid), its dedupe claim released, and it is never retried,
// whatever the attempt. err says what is wrong; nil means ErrInvalid. It is
// never nil. A handler that decodes the body itself returns
// Invalid(decodeErr); errors for which dedupe.IsInvalidInput is true are
// treated the same way without the wrapper.
func Invalid(err error) error {
	if err == nil {
		err = ErrInvalid
	}
	return &InvalidError{Err: err}
}

// ErrPanic is matched (errors.Is) by every *PanicError.
var ErrPanic = errors.New("consumer: handler panicked")

// PanicError is the transient error a recovered handler panic becomes.
type PanicError struct {
	// Value is what the handler panicked with.
	Value any
	// Stack is the goroutine's stack at the panic (runtime/debug.Stack).
	Stack []byte
}

// Error returns "consumer: handler panicked: <value>".
func (e *PanicError) Error() string { return ErrPanic.Error() + ": " + panicText(e.Value) }

// Unwrap returns ErrPanic. It deliberately does not return a panicked
// error: a panic is always transient, even panic(retry.Permanent(err)).
func (e *PanicError) Unwrap() error { return ErrPanic }

// BatchHandler processes several messages together — typically in one
// database transaction — and returns one error per message, in order, each
// with Handler's meaning (nil, Reject, ErrConflict, Invalid,
// retry.Permanent, retry.After, transient). batchErr non-nil means the
// batch as a whole did not take effect (the transaction did not commit):
// every message is then redelivered, and errs is ignored. A BatchHandler
// may call SetResult on the messages. Transports run the pipeline's
// classification on each message's error, so a batch is retried and
// dead-lettered message by message exactly as Handler errors are
// (natsjs.NewBatch; outbox.Inbox.BatchHandler builds one).
type BatchHandler func(ctx context.Context, msgs []*Message) (errs []error, batchErr error)
