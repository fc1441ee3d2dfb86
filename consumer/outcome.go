package consumer

import (
	"context"
	"fmt"
	"time"

	"github.com/idemq/idemq/dedupe"
)

// Action is what the transport must do with a delivery.
type Action uint8

const (
	// Ack acknowledges the message: it was processed, is a duplicate, or was
	// rejected as a final business failure. JetStream: Ack (DoubleAck where
	// configured).
	Ack Action = iota + 1
	// Retry hands the message back for redelivery after Outcome.Delay.
	// JetStream: NakWithDelay(Delay). Never sleep in process instead.
	Retry
	// DeadLetter publishes the message to the dead-letter queue with
	// Outcome.Reason and Outcome.Err, then terminates it. When the
	// dead-letter publish fails, the transport must Retry instead: never lose
	// the message.
	DeadLetter
)

// String returns "ack", "retry" or "dead_letter".
func (a Action) String() string {
	switch a {
	case Ack:
		return "ack"
	case Retry:
		return "retry"
	case DeadLetter:
		return "dead_letter"
	}
	return fmt.Sprintf("Action(%d)", uint8(a))
}

// Reason says why a message was dead-lettered. Its String is the value of
// the Idemq-Reason header, a wire format other tools read.
type Reason uint8

const (
	// ReasonPermanent: the handler returned retry.Permanent. Wire value
	// "permanent".
	ReasonPermanent Reason = iota + 1
	// ReasonExhausted: transient failures used up the retry policy's
	// attempts, or the broker stopped redelivering (MaxDeliver). Wire value
	// "exhausted".
	ReasonExhausted
	// ReasonConflict: the idempotency key was already completed with a
	// different fingerprint (a client bug), found by the guard or reported
	// by the handler with an error wrapping ErrConflict. Wire value
	// "conflict".
	ReasonConflict
	// ReasonInvalid: the message cannot be processed as sent (no usable
	// idempotency key, a body that is not the JSON the guard reads, or the
	// handler returned Invalid). Wire value "invalid".
	ReasonInvalid
)

// String returns the wire value: "permanent", "exhausted", "conflict" or
// "invalid"; "" for the zero Reason.
func (r Reason) String() string {
	switch r {
	case ReasonPermanent:
		return "permanent"
	case ReasonExhausted:
		return "exhausted"
	case ReasonConflict:
		return "conflict"
	case ReasonInvalid:
		return "invalid"
	case 0:
		return ""
	}
	return fmt.Sprintf("Reason(%d)", uint8(r))
}

// ParseReason is the inverse of Reason.String for the four wire values. It
// returns an error wrapping ErrUnknownReason for anything else.
func ParseReason(s string) (Reason, error) {
	switch s {
	case "permanent":
		return ReasonPermanent, nil
	case "exhausted":
		return ReasonExhausted, nil
	case "conflict":
		return ReasonConflict, nil
	case "invalid":
		return ReasonInvalid, nil
	}
	return 0, fmt.Errorf("%w: %q", ErrUnknownReason, s)
}

// Outcome is the pipeline's decision for one delivery. Transports translate
// it into broker actions and nothing else: the order of dedupe, handler,
// classification, retry budget and dead-lettering lives in Process.
type Outcome struct {
	// Action is what the transport must do.
	Action Action
	// Delay is the redelivery delay for Retry (zero means at once).
	Delay time.Duration
	// Reason is set for DeadLetter.
	Reason Reason
	// Err is the error behind the decision: the handler's error (including
	// a *RejectError on an Ack), the store or key error, ErrConflict,
	// ErrExhausted. Nil on a plain success or duplicate.
	Err error
	// Claim is the dedupe claim status (0 without a guard or when the claim
	// failed). HTTP-like transports answer Busy with 409 and Conflict with
	// 409 too.
	Claim dedupe.Status
	// Replay is the stored result of a Duplicate, to answer with where the
	// transport has a reply. Replay.Failed marks a stored rejection.
	Replay *dedupe.Result
	// Result is the result of this run when the handler ran to completion:
	// the SetResult data on success, the rejection's data with Failed set on
	// Reject. With a guard it is what was stored.
	Result *dedupe.Result
	// Interrupted is true when the caller's context ended the processing
	// (shutdown) before a decision about the message itself: Action is Retry
	// with zero Delay, the delivery is not counted as a failure and is never
	// dead-lettered. Transports hand the message back promptly.
	Interrupted bool
	// Snoozed is true on a Retry the handler asked for with Snooze: Delay
	// is its delay, and no attempt was used.
	Snoozed bool
	// Shed is true when the retry budget was empty and Delay was raised to
	// Config.BudgetDelay to shed load.
	Shed bool
	// Attempt is the attempt number of this run when a dedupe claim was
	// acquired: runs of the handler, counted in the dedupe record. 0
	// otherwise.
	Attempt int
	// Unavailable is set on a Retry because a dependency did not answer:
	// the dedupe store (the claim failed) or the dead-letter queue (the
	// publish failed). The handler did not run and no attempt was used.
	// Transports pause consuming until the dependency answers again
	// instead of churning through messages.
	Unavailable Dependency
	// Probe, with Unavailable HandlerUnavailable, is the handler's probe of
	// its dependency (consumer.Unavailable), nil when it gave none.
	Probe func(ctx context.Context) error
	// DeadLettered is true when Action is DeadLetter and the pipeline has
	// already published the dead letter through Config.DeadLetter: the
	// transport only terminates the message.
	DeadLettered bool
	// Wait, on a Busy Retry whose original attempt runs in this pipeline, is
	// closed when that attempt ends. Transports may hold the message (not a
	// worker) until then, up to Delay, and hand it back at once, so that the
	// duplicate is answered right after the original instead of after the
	// lease remainder.
	Wait <-chan struct{}
}

// Dependency names what did not answer (Outcome.Unavailable).
type Dependency uint8

const (
	// StoreUnavailable: the dedupe store did not answer the claim.
	StoreUnavailable Dependency = iota + 1
	// DeadLetterUnavailable: the dead-letter queue did not store the
	// dead letter.
	DeadLetterUnavailable
	// HandlerUnavailable: the handler reported that a dependency of its
	// own did not answer (consumer.Unavailable).
	HandlerUnavailable
)

// String returns "store", "dead_letter", "handler_dependency", or "" for
// none.
func (d Dependency) String() string {
	switch d {
	case StoreUnavailable:
		return "store"
	case DeadLetterUnavailable:
		return "dead_letter"
	case HandlerUnavailable:
		return "handler_dependency"
	case 0:
		return ""
	}
	return fmt.Sprintf("Dependency(%d)", uint8(d))
}
