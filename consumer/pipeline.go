package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
	// DefaultUnavailableDelay is Config.UnavailableDelay when zero: 1 second.
	DefaultUnavailableDelay = time.Second
	// DefaultBusyRecheck is Config.BusyRecheck when zero: 1 second.
	DefaultBusyRecheck = time.Second
	// DefaultMaxDeliveries is Config.MaxDeliveries when zero: 1000.
	DefaultMaxDeliveries = 1000
)

// BusyMargin is added to a Busy claim's lease remainder so that the
// redelivery arrives just after the other attempt's lease ends: 25ms.
const BusyMargin = 25 * time.Millisecond

// ErrInvalidConfig is wrapped by the validation errors of NewPipeline and
// of the transports' constructors (natsjs.ErrInvalidConfig is the same
// error), so one errors.Is check covers a configuration error anywhere.
var ErrInvalidConfig = errors.New("idemq: invalid config")

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

// DeadLetterFunc publishes m to the dead-letter queue as l says, and returns nil only once the queue has stored it.
// Transports set it (Config.DeadLetter); it is called with a context that
// is not cancelled by shutdown, and must bound its own wait.
type DeadLetterFunc func(ctx context.Context, m *Message, l DeadLetterInfo) error

// DeadLetterInfo is what the pipeline decided about a dead letter.
type DeadLetterInfo struct {
	// Reason is why the message is dead-lettered.
	Reason Reason
	// Err is the error behind it.
	Err error
	// Attempts is how many times the handler ran for the message (with a
	// Guard, counted in the dedupe record; without one, deliveries that ran
	// it). It fills the Idemq-Attempts header.
	Attempts int
}

// Config configures a Pipeline. Every field is optional: the zero Config
// runs the handler without dedupe, with retry.Policy{} (5 attempts, 100ms
// doubling to 30s with full jitter) and no retry budget.
type Config struct {
	// Guard dedupes messages by idempotency key. Nil disables dedupe: the
	// handler runs on every delivery. With a Guard the handler never runs
	// without a claim.
	Guard *dedupe.Guard
	// Retry is the attempt limit and backoff. With a Guard, attempts are
	// runs of the handler, counted durably in the dedupe record
	// (dedupe.Claim.Attempt): deliveries that did not run the handler (the
	// store did not answer, Busy, a failed dead-letter publish, a shutdown)
	// do not count. Without a Guard they are the transport's delivery count
	// (Message.Attempt). Its zero value is usable.
	Retry retry.Policy
	// MaxDeliveries is a safety cap on the transport's delivery count with a
	// Guard: a delivery past it is dead-lettered ("exhausted") instead of
	// run, however few handler attempts it used. It only matters for a
	// message that keeps coming back without running. Default 1000;
	// negative means no cap.
	MaxDeliveries int
	// DeadLetter publishes dead letters. Transports set it; when it is set,
	// the pipeline publishes a dead letter itself, in order: the dedupe
	// claim is kept until the queue stored the message, then deleted (so a
	// replay runs again); when the publish fails the message is retried
	// after UnavailableDelay with Outcome.Unavailable set, never lost, and
	// its attempt count is kept. Nil: Process returns Action DeadLetter and
	// the transport publishes (the claim is deleted first).
	DeadLetter DeadLetterFunc
	// UnavailableDelay is the redelivery delay of a message whose dedupe
	// claim or dead-letter publish failed because the dependency did not
	// answer (Outcome.Unavailable). Default 1s.
	UnavailableDelay time.Duration
	// BusyRecheck caps the redelivery delay of a message answered Busy
	// (another attempt holds its key): it is checked again after the lease
	// remainder or BusyRecheck, whichever is sooner, so that a duplicate is
	// acknowledged soon after the original completes. When the original
	// runs in this pipeline, Outcome.Wait is closed as soon as it ends.
	// Default 1s.
	BusyRecheck time.Duration
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
	// records results and releases claims. A call is given at least
	// StoreTimeout and at most StoreTimeout/64 (or 1ms) more: the calls
	// that start within one such window share one timer. Default 5s.
	StoreTimeout time.Duration
	// Logger receives the pipeline's logs: panics with their stack, store
	// failures, dead-letter decisions (Warn, with the reason and the
	// message's Sequence), suppressed duplicates (Debug, with the key).
	// Payloads are never logged. Nil means slog.Default().
	Logger *slog.Logger
	// Observer receives each delivery's claim, store calls, handler run and
	// Outcome (see Observer), for metrics, traces and tests. Transports
	// pass it through and report pauses to it when it implements
	// PauseObserver. Nil (the default) costs nothing.
	Observer Observer
}

// Pipeline applies dedupe, the handler, error classification, the retry
// policy and budget, and the dead-letter decision in the one correct order.
// It is transport-neutral: adapters translate a delivery into a Message,
// call Process, and translate the Outcome into broker actions. A Pipeline is
// safe for concurrent use.
type Pipeline struct {
	h             Handler
	guard         *dedupe.Guard
	policy        retry.Policy
	budget        *retry.Budget
	budgetDelay   time.Duration
	heartbeat     time.Duration
	storeTimeout  time.Duration
	deadlines     *deadlines // StoreTimeout's shared timers
	maxDeliveries int
	deadLetter    DeadLetterFunc
	unavailable   time.Duration
	busyRecheck   time.Duration
	log           *slog.Logger
	obs           Observer
	timings       Timings   // the durations obs uses
	epoch         time.Time // of clock, with its monotonic reading
	flights       flights
}

// NewPipeline validates cfg, fills its defaults and returns a Pipeline
// running h. Errors wrap ErrInvalidConfig.
func NewPipeline(cfg Config, h Handler) (*Pipeline, error) {
	if h == nil {
		return nil, fmt.Errorf("%w: handler is nil", ErrInvalidConfig)
	}
	p := &Pipeline{
		h:             h,
		guard:         cfg.Guard,
		policy:        cfg.Retry,
		budget:        cfg.Budget,
		budgetDelay:   cfg.BudgetDelay,
		heartbeat:     cfg.HeartbeatInterval,
		storeTimeout:  cfg.StoreTimeout,
		maxDeliveries: cfg.MaxDeliveries,
		deadLetter:    cfg.DeadLetter,
		unavailable:   cfg.UnavailableDelay,
		busyRecheck:   cfg.BusyRecheck,
		log:           cfg.Logger,
		obs:           cfg.Observer,
		epoch:         time.Now(),
	}
	p.flights.init()
	p.timings = TimeAll
	if t, ok := p.obs.(TimingObserver); ok {
		p.timings = t.Timings()
	}
	if p.maxDeliveries == 0 {
		p.maxDeliveries = DefaultMaxDeliveries
	}
	if p.unavailable <= 0 {
		p.unavailable = DefaultUnavailableDelay
	}
	if p.busyRecheck <= 0 {
		p.busyRecheck = DefaultBusyRecheck
	}
	if p.budgetDelay <= 0 {
		p.budgetDelay = DefaultBudgetDelay
	}
	if p.storeTimeout <= 0 {
		p.storeTimeout = DefaultStoreTimeout
	}
	p.deadlines = newDeadlines(p.storeTimeout)
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

// Observer returns Config.Observer (nil without one).
func (p *Pipeline) Observer() Observer { return p.obs }

// HeartbeatInterval returns the heartbeat interval in effect (0: none).
func (p *Pipeline) HeartbeatInterval() time.Duration { return p.heartbeat }

// Process runs one delivery through the pipeline and returns what the
// transport must do with it (see the package documentation for the table).
// It never returns an Outcome without an Action. ctx bounds the claim and
// the handler; when ctx ends first, the Outcome is an Interrupted Retry.
func (p *Pipeline) Process(ctx context.Context, m *Message) Outcome {
	if p.obs != nil {
		return p.observe(ctx, m)
	}
	out, _ := p.process(ctx, m)
	return out
}

// process is Process; it also reports what the claim answered (0 without
// a claim) for the Observer.
func (p *Pipeline) process(ctx context.Context, m *Message) (Outcome, ClaimResult) {
	if m.Attempt < 1 {
		m.Attempt = 1
	}
	if p.guard == nil {
		if m.Attempt == 1 {
			p.budget.Deposit()
		}
		if m.Attempt > p.policy.Attempts() {
			return p.exhausted(ctx, m, nil, m.Attempt, m.Attempt-1), 0
		}
		err, _ := p.run(ctx, m, nil)
		return p.classify(ctx, m, m.Attempt, err, false, nil), 0
	}

	cctx, start := p.startStore(ctx, m, StoreClaim)
	t, err := p.guard.Claim(cctx, dedupe.Input{Header: m.Header, Data: m.Data, MessageID: m.ID})
	p.endStore(cctx, m, StoreClaim, start, err)
	switch {
	case err != nil && dedupe.IsInvalidInput(err):
		return p.dead(ctx, m, nil, ReasonInvalid, err, 0), ClaimInvalid
	case err != nil && ctx.Err() != nil:
		return Outcome{Action: Retry, Interrupted: true, Err: err}, 0
	case err != nil:
		p.log.Debug("consumer: dedupe claim failed, redelivering", "subject", m.Subject, "id", m.ID, "delay", p.unavailable, "err", err)
		return Outcome{Action: Retry, Delay: p.unavailable, Err: err, Unavailable: StoreUnavailable}, ClaimStoreError
	}
	switch t.Status {
	case dedupe.Busy:
		out := Outcome{Action: Retry, Delay: min(t.RetryAfter+BusyMargin, p.busyRecheck), Claim: dedupe.Busy}
		if done := p.flights.wait(t.Key); done != nil {
			out.Wait, out.Delay = done, t.RetryAfter+BusyMargin
		}
		return out, ClaimBusy
	case dedupe.Duplicate:
		if p.log.Enabled(ctx, slog.LevelDebug) {
			p.log.Debug("consumer: duplicate suppressed", "subject", m.Subject, "id", m.ID, "key", t.Key)
		}
		res := t.Result
		return Outcome{Action: Ack, Claim: dedupe.Duplicate, Replay: &res}, ClaimDuplicate
	case dedupe.Conflict:
		out := p.dead(ctx, m, nil, ReasonConflict, ErrConflict, 0)
		out.Claim = dedupe.Conflict
		return out, ClaimConflict
	case dedupe.Acquired:
	default:
		return Outcome{Action: Retry, Delay: p.unavailable, Err: fmt.Errorf("consumer: unexpected dedupe status %v", t.Status)}, 0
	}
	claim := ClaimAcquired
	if t.Takeover {
		claim = ClaimTakeover
	}

	attempt := t.Attempt
	if attempt < 1 {
		attempt = m.Attempt // a store that does not count attempts
	}
	if attempt == 1 {
		p.budget.Deposit()
	}
	m.Fence = t.Fence
	f := p.flights.start(t.Key)
	defer p.flights.end(t.Key, f)
	var out Outcome
	switch {
	case attempt > p.policy.Attempts():
		// A redelivery past the limit, e.g. after a failed dead-letter
		// publish: dead-letter without running the handler again. Every
		// Acquired claim counts, also these that did not run it, so the
		// handler ran at most the policy's attempts.
		out = p.exhausted(ctx, m, &t, attempt, min(attempt-1, p.policy.Attempts()))
	case p.maxDeliveries > 0 && m.Attempt > p.maxDeliveries:
		runs := min(attempt-1, p.policy.Attempts())
		err := fmt.Errorf("%w: delivered %d times (the cap is %d) while the handler ran at most %d times", ErrExhausted, m.Attempt, p.maxDeliveries, runs)
		out = p.dead(ctx, m, &t, ReasonExhausted, err, runs)
	default:
		err, leaseLost := p.run(ctx, m, &t)
		out = p.classify(ctx, m, attempt, err, leaseLost, &t)
	}
	out.Claim = dedupe.Acquired
	out.Attempt = attempt
	return out, claim
}

func (p *Pipeline) exhausted(ctx context.Context, m *Message, t *dedupe.Ticket, attempt, runs int) Outcome {
	err := fmt.Errorf("%w: attempt %d exceeds the retry policy's %d attempts", ErrExhausted, attempt, p.policy.Attempts())
	return p.dead(ctx, m, t, ReasonExhausted, err, runs)
}

// dead dead-letters m. With Config.DeadLetter the pipeline publishes it and
// then deletes the claim t (nil without one); when the publish fails, t is
// released (its attempt count kept) and m retried as Unavailable. Without
// Config.DeadLetter the claim is deleted and the transport publishes.
func (p *Pipeline) dead(ctx context.Context, m *Message, t *dedupe.Ticket, reason Reason, cause error, runs int) Outcome {
	out := Outcome{Action: DeadLetter, Reason: reason, Err: cause}
	if p.deadLetter == nil {
		p.settle(ctx, m, t, true)
		p.log.Warn("consumer: dead-lettering", "reason", reason.String(), "subject", m.Subject, "id", m.ID, "sequence", m.Sequence, "attempt", m.Attempt, "err", cause)
		return out
	}
	if err := p.deadLetter(context.WithoutCancel(ctx), m, DeadLetterInfo{Reason: reason, Err: cause, Attempts: max(runs, 0)}); err != nil {
		p.settle(ctx, m, t, false)
		p.log.Debug("consumer: dead-letter publish failed, redelivering", "reason", reason.String(), "subject", m.Subject, "id", m.ID, "delay", p.unavailable, "err", err)
		return Outcome{Action: Retry, Delay: p.unavailable, Reason: reason, Err: errors.Join(cause, err), Unavailable: DeadLetterUnavailable}
	}
	p.settle(ctx, m, t, true)
	p.log.Warn("consumer: dead-lettered", "reason", reason.String(), "subject", m.Subject, "id", m.ID, "sequence", m.Sequence, "attempt", m.Attempt, "err", cause)
	out.DeadLettered = true
	return out
}

// classify turns the handler's error into an Outcome, recording or releasing
// the dedupe claim t (nil without a guard). attempt is this run's attempt
// number; leaseLost reports that a heartbeat found the claim taken over
// while the handler ran.
func (p *Pipeline) classify(ctx context.Context, m *Message, attempt int, err error, leaseLost bool, t *dedupe.Ticket) Outcome {
	if err == nil {
		data, _ := m.Result()
		res := dedupe.Result{Data: data}
		p.complete(ctx, m, t, res)
		return Outcome{Action: Ack, Result: &res}
	}
	// Declared past the success path: errors.As moves them to the heap.
	var rej *RejectError
	var snz *SnoozeError
	var una *UnavailableError
	switch {
	case errors.As(err, &rej):
		res := dedupe.Result{Failed: true, Data: rej.Data}
		p.complete(ctx, m, t, res)
		return Outcome{Action: Ack, Result: &res, Err: err}
	case errors.As(err, &una):
		p.snooze(ctx, m, t) // the run did not happen: give the attempt back
		p.log.Debug("consumer: the handler's dependency did not answer, redelivering", "subject", m.Subject, "id", m.ID, "delay", p.unavailable, "err", err)
		return Outcome{Action: Retry, Delay: p.unavailable, Err: err, Unavailable: HandlerUnavailable, Probe: una.Probe}
	case errors.As(err, &snz):
		p.snooze(ctx, m, t)
		if m.Attempt%snoozeWarnEvery == 0 {
			p.log.Warn("consumer: message keeps snoozing", "subject", m.Subject, "id", m.ID, "deliveries", m.Attempt, "cap", p.maxDeliveries)
		}
		return Outcome{Action: Retry, Delay: snz.Delay, Err: err, Snoozed: true}
	case leaseLost:
		// Another attempt took the key over while this one ran, and the
		// handler stopped: nothing to release, nothing to dead-letter. Come
		// back after a lease; the other attempt's result will answer as a
		// duplicate.
		return Outcome{Action: Retry, Delay: p.guard.LeaseDuration(), Err: errors.Join(err, dedupe.ErrLeaseLost)}
	case errors.Is(err, ErrConflict):
		// Checked before Permanent: a transactional inbox reports its key
		// conflict as retry.Permanent(...ErrConflict).
		return p.dead(ctx, m, t, ReasonConflict, err, attempt)
	case errors.Is(err, ErrInvalid) || dedupe.IsInvalidInput(err):
		return p.dead(ctx, m, t, ReasonInvalid, err, attempt)
	case retry.IsPermanent(err):
		return p.dead(ctx, m, t, ReasonPermanent, err, attempt)
	case ctx.Err() != nil:
		p.release(ctx, m, t)
		return Outcome{Action: Retry, Interrupted: true, Err: err}
	}
	if p.policy.Exhausted(attempt) {
		return p.dead(ctx, m, t, ReasonExhausted, err, attempt)
	}
	p.release(ctx, m, t)
	delay, ok := retry.AfterDelay(err)
	if !ok {
		delay = p.policy.Delay(attempt)
	}
	out := Outcome{Action: Retry, Delay: delay, Err: err}
	if !p.budget.TryWithdraw() {
		out.Delay = max(delay, p.budgetDelay)
		out.Shed = true
	}
	p.log.Debug("consumer: transient failure, redelivering", "subject", m.Subject, "id", m.ID, "attempt", attempt, "delay", out.Delay, "shed", out.Shed, "err", err)
	return out
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
	sctx := p.deadlines.context(ctx)
	err := p.completeOnce(sctx, m, t, res)
	// Retried with completeRetry's backoff while the store fails, without
	// retry.Do, whose closure would cost the common case an allocation.
	for attempt := 1; err != nil && !errors.Is(err, dedupe.ErrLeaseLost) && !errors.Is(err, dedupe.ErrNotDurable) && !completeRetry.Exhausted(attempt); attempt++ {
		if !sleepCtx(sctx, completeRetry.Delay(attempt)) {
			break
		}
		err = p.completeOnce(sctx, m, t, res)
	}
	switch {
	case errors.Is(err, dedupe.ErrLeaseLost):
		p.log.Warn("consumer: handler finished after its dedupe lease was taken over; acking", "subject", m.Subject, "id", m.ID, "key", t.Key)
	case errors.Is(err, dedupe.ErrNotDurable):
		p.log.Warn("consumer: result recorded, but the store could not confirm it durable; acking (a failover may forget it)", "subject", m.Subject, "id", m.ID, "key", t.Key, "err", err)
	case err != nil:
		p.log.Error("consumer: recording the result failed; acking, a duplicate may run again after the lease", "subject", m.Subject, "id", m.ID, "key", t.Key, "err", err)
	}
}

// completeOnce is one Complete call, observed.
func (p *Pipeline) completeOnce(ctx context.Context, m *Message, t *dedupe.Ticket, res dedupe.Result) error {
	ctx, start := p.startStore(ctx, m, StoreComplete)
	err := p.guard.Complete(ctx, *t, res)
	p.endStore(ctx, m, StoreComplete, start, err)
	return err
}

// sleepCtx waits d, or less when ctx ends first (false).
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// storeCall makes one dedupe store call after the handler returned (or
// beside it, for a heartbeat), observed as op: under a context that the
// caller's cancellation does not reach (a shutdown still settles claims)
// and that StoreTimeout bounds.
func (p *Pipeline) storeCall(ctx context.Context, m *Message, op StoreOp, call func(context.Context) error) error {
	sctx, start := p.startStore(p.deadlines.context(ctx), m, op)
	err := call(sctx)
	p.endStore(sctx, m, op, start, err)
	return err
}

// release ends t's lease so that the redelivery runs the handler again as
// the next attempt. A failure is logged: the record then lapses with its
// lease.
func (p *Pipeline) release(ctx context.Context, m *Message, t *dedupe.Ticket) {
	if t == nil {
		return
	}
	err := p.storeCall(ctx, m, StoreRelease, func(ctx context.Context) error { return p.guard.Release(ctx, *t) })
	if err != nil {
		p.log.Warn("consumer: releasing the dedupe claim failed; it lapses with its lease", "subject", m.Subject, "id", m.ID, "key", t.Key, "err", err)
	}
}

// snoozeWarnEvery is how often (in deliveries) a snoozing message is logged.
const snoozeWarnEvery = 100

// snooze gives t's lease back without counting the attempt (Release when
// the store cannot).
func (p *Pipeline) snooze(ctx context.Context, m *Message, t *dedupe.Ticket) {
	if t == nil {
		return
	}
	sn, ok := p.guard.Store.(dedupe.Snoozer)
	if !ok {
		p.release(ctx, m, t)
		return
	}
	err := p.storeCall(ctx, m, StoreSnooze, func(ctx context.Context) error { return sn.Snooze(ctx, t.Key, t.Token) })
	if err != nil {
		p.log.Warn("consumer: snoozing the dedupe claim failed; it lapses with its lease", "subject", m.Subject, "id", m.ID, "key", t.Key, "err", err)
	}
}

// settle ends the claim t of a message being dead-lettered: stored (the
// dead-letter queue has it) deletes the record, so a replay starts again
// at attempt 1; otherwise the claim is released, keeping its count.
func (p *Pipeline) settle(ctx context.Context, m *Message, t *dedupe.Ticket, stored bool) {
	if t == nil {
		return
	}
	if !stored {
		p.release(ctx, m, t)
		return
	}
	err := p.storeCall(ctx, m, StoreDelete, func(ctx context.Context) error { return p.guard.Delete(ctx, *t) })
	if err != nil {
		p.log.Warn("consumer: deleting the dedupe claim of a dead letter failed; a replay counts on from its attempts after the lease", "subject", m.Subject, "id", m.ID, "key", t.Key, "err", err)
	}
}

func panicText(v any) string {
	if err, ok := v.(error); ok {
		return err.Error()
	}
	return fmt.Sprint(v)
}

// UnavailableDelay returns the redelivery delay used for messages whose
// dependency did not answer (Config.UnavailableDelay).
func (p *Pipeline) UnavailableDelay() time.Duration { return p.unavailable }
