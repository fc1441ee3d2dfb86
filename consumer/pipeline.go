package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/retry"
)

// Defaults applied by NewPipeline to zero-valued Config fields.
const (
	// DefaultBudgetDelay is Config.BudgetDelay when zero: 1 minute.
	DefaultBudgetDelay = time.Minute
	// DefaultStoreTimeout is Config.StoreTimeout when zero: 5 seconds.
	DefaultStoreTimeout = 5 * time.Second
)

// BusyMargin is added to a Busy claim's lease remainder so that the
// redelivery arrives just after the other attempt's lease ends: 25ms.
const BusyMargin = 25 * time.Millisecond

// ErrInvalidConfig is wrapped by NewPipeline's validation errors.
var ErrInvalidConfig = errors.New("consumer: invalid config")

// ErrConflict is Outcome.Err when the idempotency key was already completed
// with a different fingerprint (Reason conflict). A handler whose own dedupe
// (a transactional inbox) finds such a conflict returns an error wrapping
// ErrConflict, and the pipeline dead-letters it with reason conflict too.
var ErrConflict = errors.New("consumer: idempotency key reused with a different fingerprint")

// ErrExhausted is wrapped by Outcome.Err when a delivery arrives after the
// retry policy's attempts are used up (Reason exhausted). Transports also use
// it for messages the broker stopped redelivering.
var ErrExhausted = errors.New("consumer: attempts exhausted")

// ErrUnknownReason is wrapped by ParseReason for an unknown wire value.
var ErrUnknownReason = errors.New("consumer: unknown dead-letter reason")

// Config configures a Pipeline. Every field is optional: the zero Config
// runs the handler without dedupe, with retry.Policy{} (5 attempts, 100ms
// doubling to 30s with full jitter) and no retry budget.
type Config struct {
	// Guard dedupes messages by idempotency key. Nil disables dedupe: the
	// handler runs on every delivery. With a Guard the handler never runs
	// without a claim.
	Guard *dedupe.Guard
	// Retry is the attempt limit and backoff; attempts are the transport's
	// delivery count (Message.Attempt). Its zero value is usable.
	Retry retry.Policy
	// Budget caps retries to a ratio of first attempts. Nil means no budget.
	// A delivery with Attempt 1 deposits; every retry decision withdraws,
	// and an empty budget raises the delay to BudgetDelay.
	Budget *retry.Budget
	// BudgetDelay is the redelivery delay used when the budget is empty, to
	// shed load instead of hammering the failing dependency. Default 1m.
	BudgetDelay time.Duration
	// HeartbeatInterval is how often, while the handler runs, the pipeline
	// calls Message.KeepAlive and extends the dedupe lease (Guard.Extend).
	// Zero means a third of the guard's lease with a Guard, and no heartbeat
	// without one; negative disables heartbeats. With a Guard it must be
	// shorter than the lease.
	HeartbeatInterval time.Duration
	// StoreTimeout bounds each dedupe store call made after the handler
	// returned (Complete, Release) and each Extend. Those calls do not
	// inherit the cancellation of Process's context, so a shutdown still
	// records results and releases claims. Default 5s.
	StoreTimeout time.Duration
	// Logger receives the pipeline's logs: panics with their stack, store
	// failures, dead-letter decisions. Nil means slog.Default().
	Logger *slog.Logger
}

// Pipeline applies dedupe, the handler, error classification, the retry
// policy and budget, and the dead-letter decision in the one correct order.
// It is transport-neutral: adapters translate a delivery into a Message,
// call Process, and translate the Outcome into broker actions. A Pipeline is
// safe for concurrent use.
type Pipeline struct {
	h            Handler
	guard        *dedupe.Guard
	policy       retry.Policy
	budget       *retry.Budget
	budgetDelay  time.Duration
	heartbeat    time.Duration
	storeTimeout time.Duration
	log          *slog.Logger
}

// NewPipeline validates cfg, fills its defaults and returns a Pipeline
// running h. Errors wrap ErrInvalidConfig.
func NewPipeline(cfg Config, h Handler) (*Pipeline, error) {
	if h == nil {
		return nil, fmt.Errorf("%w: handler is nil", ErrInvalidConfig)
	}
	p := &Pipeline{
		h:            h,
		guard:        cfg.Guard,
		policy:       cfg.Retry,
		budget:       cfg.Budget,
		budgetDelay:  cfg.BudgetDelay,
		heartbeat:    cfg.HeartbeatInterval,
		storeTimeout: cfg.StoreTimeout,
		log:          cfg.Logger,
	}
	if p.budgetDelay <= 0 {
		p.budgetDelay = DefaultBudgetDelay
	}
	if p.storeTimeout <= 0 {
		p.storeTimeout = DefaultStoreTimeout
	}
	if p.log == nil {
		p.log = slog.Default()
	}
	if p.guard != nil {
		if p.guard.Store == nil {
			return nil, fmt.Errorf("%w: Guard.Store is nil", ErrInvalidConfig)
		}
		lease := p.guard.LeaseDuration()
		if p.heartbeat == 0 {
			p.heartbeat = lease / 3
		}
		if p.heartbeat >= lease {
			return nil, fmt.Errorf("%w: HeartbeatInterval %v must be shorter than the dedupe lease %v, or the lease lapses while the handler runs",
				ErrInvalidConfig, p.heartbeat, lease)
		}
	}
	if p.heartbeat < 0 {
		p.heartbeat = 0
	}
	return p, nil
}

// Policy returns the retry policy the pipeline applies.
func (p *Pipeline) Policy() retry.Policy { return p.policy }

// Guard returns the dedupe guard, nil without one.
func (p *Pipeline) Guard() *dedupe.Guard { return p.guard }

// HeartbeatInterval returns the heartbeat interval in effect (0: none).
func (p *Pipeline) HeartbeatInterval() time.Duration { return p.heartbeat }

// Process runs one delivery through the pipeline and returns what the
// transport must do with it (see the package documentation for the table).
// It never returns an Outcome without an Action. ctx bounds the claim and
// the handler; when ctx ends first, the Outcome is an Interrupted Retry.
func (p *Pipeline) Process(ctx context.Context, m *Message) Outcome {
	if m.Attempt < 1 {
		m.Attempt = 1
	}
	if m.Attempt == 1 {
		p.budget.Deposit()
	}
	if p.guard == nil {
		if m.Attempt > p.policy.Attempts() {
			return p.exhausted(m)
		}
		err, _ := p.call(ctx, m, nil)
		return p.classify(ctx, m, err, false, nil)
	}

	t, err := p.guard.Claim(ctx, dedupe.Input{Header: m.Header, Data: m.Data, MessageID: m.ID})
	switch {
	case err != nil && dedupe.IsInvalidInput(err):
		p.log.Warn("consumer: invalid message, dead-lettering", "subject", m.Subject, "id", m.ID, "err", err)
		return Outcome{Action: DeadLetter, Reason: ReasonInvalid, Err: err}
	case err != nil && ctx.Err() != nil:
		return Outcome{Action: Retry, Interrupted: true, Err: err}
	case err != nil:
		d := p.policy.Delay(m.Attempt)
		p.log.Error("consumer: dedupe claim failed, redelivering", "subject", m.Subject, "id", m.ID, "attempt", m.Attempt, "delay", d, "err", err)
		return Outcome{Action: Retry, Delay: d, Err: err}
	}
	switch t.Status {
	case dedupe.Busy:
		return Outcome{Action: Retry, Delay: t.RetryAfter + BusyMargin, Claim: dedupe.Busy}
	case dedupe.Duplicate:
		res := t.Result
		return Outcome{Action: Ack, Claim: dedupe.Duplicate, Replay: &res}
	case dedupe.Conflict:
		p.log.Warn("consumer: idempotency key conflict, dead-lettering", "subject", m.Subject, "id", m.ID, "key", t.Key)
		return Outcome{Action: DeadLetter, Reason: ReasonConflict, Err: ErrConflict, Claim: dedupe.Conflict}
	case dedupe.Acquired:
	default:
		d := p.policy.Delay(m.Attempt)
		return Outcome{Action: Retry, Delay: d, Err: fmt.Errorf("consumer: unexpected dedupe status %v", t.Status)}
	}

	if m.Attempt > p.policy.Attempts() {
		// A redelivery past the limit, e.g. after a failed dead-letter
		// publish: dead-letter without running the handler again.
		p.release(ctx, m, &t)
		out := p.exhausted(m)
		out.Claim = dedupe.Acquired
		return out
	}
	err, leaseLost := p.call(ctx, m, &t)
	out := p.classify(ctx, m, err, leaseLost, &t)
	out.Claim = dedupe.Acquired
	return out
}

func (p *Pipeline) exhausted(m *Message) Outcome {
	err := fmt.Errorf("%w: delivery %d exceeds the retry policy's %d attempts", ErrExhausted, m.Attempt, p.policy.Attempts())
	p.log.Warn("consumer: attempts exhausted, dead-lettering", "subject", m.Subject, "id", m.ID, "attempt", m.Attempt)
	return Outcome{Action: DeadLetter, Reason: ReasonExhausted, Err: err}
}

// classify turns the handler's error into an Outcome, recording or releasing
// the dedupe claim t (nil without a guard). leaseLost reports that a
// heartbeat found the claim taken over while the handler ran.
func (p *Pipeline) classify(ctx context.Context, m *Message, err error, leaseLost bool, t *dedupe.Ticket) Outcome {
	var rej *RejectError
	switch {
	case err == nil:
		data, _ := m.Result()
		res := dedupe.Result{Data: data}
		p.complete(ctx, m, t, res)
		return Outcome{Action: Ack, Result: &res}
	case errors.As(err, &rej):
		res := dedupe.Result{Failed: true, Data: rej.Data}
		p.complete(ctx, m, t, res)
		return Outcome{Action: Ack, Result: &res, Err: err}
	case errors.Is(err, ErrConflict):
		// Checked before Permanent: a transactional inbox reports its key
		// conflict as retry.Permanent(...ErrConflict).
		p.release(ctx, m, t)
		p.log.Warn("consumer: idempotency key conflict, dead-lettering", "subject", m.Subject, "id", m.ID, "attempt", m.Attempt, "err", err)
		return Outcome{Action: DeadLetter, Reason: ReasonConflict, Err: err}
	case errors.Is(err, ErrInvalid) || dedupe.IsInvalidInput(err):
		p.release(ctx, m, t)
		p.log.Warn("consumer: invalid message, dead-lettering", "subject", m.Subject, "id", m.ID, "attempt", m.Attempt, "err", err)
		return Outcome{Action: DeadLetter, Reason: ReasonInvalid, Err: err}
	case retry.IsPermanent(err):
		p.release(ctx, m, t)
		p.log.Warn("consumer: permanent failure, dead-lettering", "subject", m.Subject, "id", m.ID, "attempt", m.Attempt, "err", err)
		return Outcome{Action: DeadLetter, Reason: ReasonPermanent, Err: err}
	case ctx.Err() != nil:
		p.release(ctx, m, t)
		return Outcome{Action: Retry, Interrupted: true, Err: err}
	case leaseLost:
		// Another attempt took the key over while this one ran, and the
		// handler stopped: nothing to release. Come back after a lease; the
		// other attempt's result will answer as a duplicate.
		return Outcome{Action: Retry, Delay: p.guard.LeaseDuration(), Err: errors.Join(err, dedupe.ErrLeaseLost)}
	}
	p.release(ctx, m, t)
	if p.policy.Exhausted(m.Attempt) {
		p.log.Warn("consumer: attempts exhausted, dead-lettering", "subject", m.Subject, "id", m.ID, "attempt", m.Attempt, "err", err)
		return Outcome{Action: DeadLetter, Reason: ReasonExhausted, Err: err}
	}
	delay, ok := retry.AfterDelay(err)
	if !ok {
		delay = p.policy.Delay(m.Attempt)
	}
	out := Outcome{Action: Retry, Delay: delay, Err: err}
	if !p.budget.TryWithdraw() {
		out.Delay = max(delay, p.budgetDelay)
		out.Shed = true
	}
	p.log.Debug("consumer: transient failure, redelivering", "subject", m.Subject, "id", m.ID, "attempt", m.Attempt, "delay", out.Delay, "shed", out.Shed, "err", err)
	return out
}

// call runs the handler with panic recovery and, when configured, a
// heartbeat that calls m.KeepAlive and extends the claim t. leaseLost reports
// that Extend found the claim taken over; the handler's context was then
// cancelled with cause dedupe.ErrLeaseLost.
//
// The heartbeat costs nothing until the handler outlives one interval: it is
// a timer (time.AfterFunc), not a goroutine, armed per call and re-armed
// after each beat.
func (p *Pipeline) call(ctx context.Context, m *Message, t *dedupe.Ticket) (err error, leaseLost bool) {
	defer func() {
		if r := recover(); r != nil {
			stack := debug.Stack()
			err = &PanicError{Value: r, Stack: stack}
			p.log.Error("consumer: handler panicked", "subject", m.Subject, "id", m.ID, "attempt", m.Attempt,
				"panic", panicText(r), "stack", string(stack))
		}
	}()
	if p.heartbeat <= 0 || (m.KeepAlive == nil && t == nil) {
		return p.h(ctx, m), false
	}
	hctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	hb := &heartbeat{p: p, ctx: hctx, cancel: cancel, m: m, t: t}
	hb.mu.Lock()
	hb.timer = time.AfterFunc(p.heartbeat, hb.beat)
	hb.mu.Unlock()
	defer func() { leaseLost = hb.stop() }()
	return p.h(hctx, m), false
}

// heartbeat keeps one running handler's message and claim alive.
type heartbeat struct {
	p      *Pipeline
	ctx    context.Context
	cancel context.CancelCauseFunc
	m      *Message
	t      *dedupe.Ticket
	timer  *time.Timer

	mu      sync.Mutex
	stopped bool
	lost    bool
	beating sync.WaitGroup // a beat in progress
}

// beat runs on the timer's goroutine: one keep-alive and lease extension,
// then it re-arms the timer unless the handler returned, its context ended
// or the claim was lost.
func (h *heartbeat) beat() {
	h.mu.Lock()
	if h.stopped || h.ctx.Err() != nil {
		h.mu.Unlock()
		return
	}
	h.beating.Add(1)
	h.mu.Unlock()
	defer h.beating.Done()

	p, m, t := h.p, h.m, h.t
	if m.KeepAlive != nil {
		if err := m.KeepAlive(h.ctx); err != nil {
			p.log.Warn("consumer: keep-alive failed", "subject", m.Subject, "id", m.ID, "err", err)
		}
	}
	if t != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(h.ctx), p.storeTimeout)
		err := p.guard.Extend(sctx, *t)
		cancel()
		switch {
		case errors.Is(err, dedupe.ErrLeaseLost):
			p.log.Warn("consumer: dedupe lease lost while the handler ran; cancelling it", "subject", m.Subject, "id", m.ID, "key", t.Key)
			h.mu.Lock()
			h.lost = true
			h.mu.Unlock()
			h.cancel(dedupe.ErrLeaseLost)
			return
		case err != nil:
			p.log.Warn("consumer: dedupe lease extension failed", "subject", m.Subject, "id", m.ID, "key", t.Key, "err", err)
		}
	}
	h.mu.Lock()
	if !h.stopped && h.ctx.Err() == nil {
		h.timer.Reset(p.heartbeat)
	}
	h.mu.Unlock()
}

// stop ends the heartbeat, waits for a beat in progress and reports whether
// the claim was lost.
func (h *heartbeat) stop() bool {
	h.mu.Lock()
	h.stopped = true
	h.timer.Stop()
	h.mu.Unlock()
	h.beating.Wait()
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lost
}

// completeRetry retries Complete briefly on store errors: a result that is
// not recorded lets a later duplicate run the operation again.
var completeRetry = retry.Policy{MaxAttempts: 3, Backoff: retry.Exponential{Initial: 50 * time.Millisecond, Max: 500 * time.Millisecond}}

// complete records res for t. The work is done, so the message is acked
// whatever happens here: on ErrLeaseLost another attempt took over (and its
// own Complete decides what duplicates see); on a store error the record
// stays in progress until its lease lapses. Redelivering instead would run
// the handler a second time for certain.
func (p *Pipeline) complete(ctx context.Context, m *Message, t *dedupe.Ticket, res dedupe.Result) {
	if t == nil {
		return
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.storeTimeout)
	defer cancel()
	err := retry.Do(sctx, func(ctx context.Context) error {
		err := p.guard.Complete(ctx, *t, res)
		if errors.Is(err, dedupe.ErrLeaseLost) {
			return retry.Permanent(err)
		}
		return err
	}, &retry.DoOptions{Policy: completeRetry})
	switch {
	case errors.Is(err, dedupe.ErrLeaseLost):
		p.log.Warn("consumer: handler finished after its dedupe lease was taken over; acking", "subject", m.Subject, "id", m.ID, "key", t.Key)
	case err != nil:
		p.log.Error("consumer: recording the result failed; acking, a duplicate may run again after the lease", "subject", m.Subject, "id", m.ID, "key", t.Key, "err", err)
	}
}

// release deletes t's in-progress record so the redelivery (or a replay from
// the dead-letter queue) runs the handler again. A failure is logged: the
// record then lapses with its lease.
func (p *Pipeline) release(ctx context.Context, m *Message, t *dedupe.Ticket) {
	if t == nil {
		return
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.storeTimeout)
	defer cancel()
	if err := p.guard.Release(sctx, *t); err != nil {
		p.log.Warn("consumer: releasing the dedupe claim failed; it lapses with its lease", "subject", m.Subject, "id", m.ID, "key", t.Key, "err", err)
	}
}

func panicText(v any) string {
	if err, ok := v.(error); ok {
		return err.Error()
	}
	return fmt.Sprint(v)
}
