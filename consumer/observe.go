package consumer

import (
	"context"
	"time"

	"github.com/idemq/idemq/dedupe"
)

// Observer receives what a Pipeline does with each delivery: the dedupe
// claim's answer, every dedupe store call and how long it took, the
// handler's run, and the Outcome. Metrics and traces are built on it
// (package idemqotel implements it with OpenTelemetry), and tests can assert
// on outcomes through it instead of on timing. Set it in Config.Observer;
// transports (consumer/natsjs, consumer/watermill) pass it through.
//
// Calls come in this order for one delivery, on the goroutine that runs
// Process (except EndStore/StartStore for StoreExtend, which run on the
// heartbeat's timer goroutine while the handler runs):
//
//	StartMessage
//	  StartStore(StoreClaim) … EndStore       with a Guard
//	  StartHandler … EndHandler               when the handler runs
//	    StartStore(StoreExtend) … EndStore    on each heartbeat
//	  StartStore(StoreComplete | StoreRelease | StoreDelete | StoreSnooze) … EndStore
//	EndMessage
//
// Each Start method returns the context for what it opens: StartMessage's
// is used for the rest of the delivery (the claim, the handler, the
// dead-letter publish), StartHandler's is given to the handler (so that a
// span started there is the parent of the handler's own work, an outbox
// write included), StartStore's to the guard call. The matching End method
// receives that same context. An Observer must be safe for concurrent use
// and fast: it runs on every delivery. Embed NopObserver to implement only
// some methods.
//
// A nil Config.Observer costs nothing: no call, no clock read, no
// allocation.
type Observer interface {
	// StartMessage is called first in Process, with the delivery.
	StartMessage(ctx context.Context, m *Message) context.Context
	// StartStore is called before each call of the Guard's store: the
	// claim, each Complete try, Release, Delete, Snooze and each
	// heartbeat's Extend.
	StartStore(ctx context.Context, m *Message, op StoreOp) context.Context
	// EndStore is called when that call returned, with its duration (0
	// when the Observer's Timings leave out TimeStore) and error (nil on
	// success; dedupe.ErrLeaseLost is an answer of the store, not an
	// outage).
	EndStore(ctx context.Context, m *Message, op StoreOp, d time.Duration, err error)
	// StartHandler is called before the handler runs.
	StartHandler(ctx context.Context, m *Message) context.Context
	// EndHandler is called when the handler returned (or panicked: err is
	// then a *PanicError), with its duration (0 when the Observer's Timings
	// leave out TimeHandler).
	EndHandler(ctx context.Context, m *Message, d time.Duration, err error)
	// EndMessage is called last, with what Process decided.
	EndMessage(ctx context.Context, m *Message, d Delivery)
}

// PauseObserver is implemented by an Observer that also wants to know when
// a transport stops consuming because a dependency does not answer
// (Outcome.Unavailable), and when it resumes. Transports check
// Config.Observer for it (natsjs does).
type PauseObserver interface {
	// Paused is called once when the transport stops pulling messages
	// because dep does not answer; err is the last error it returned.
	Paused(ctx context.Context, dep Dependency, err error)
	// Resumed is called once when the transport consumes again after a
	// pause, or stops while paused, with how long the pause lasted.
	Resumed(ctx context.Context, dep Dependency, pausedFor time.Duration)
}

// DeadLetterObserver is implemented by an Observer that also wants to know
// of dead letters a transport stores without running the pipeline — natsjs:
// a message the server stopped redelivering, named by a MAX_DELIVERIES
// advisory — so that they are counted with the pipeline's. Transports check
// Config.Observer for it (natsjs does). Such a dead letter is no delivery:
// no other Observer method is called for it.
type DeadLetterObserver interface {
	// DeadLettered is called once the dead-letter queue stored m, with
	// the reason and the error its letter carries.
	DeadLettered(ctx context.Context, m *Message, reason Reason, err error)
}

// TimingObserver is implemented by an Observer that uses only some of the
// durations the pipeline measures for it: the pipeline then reads the
// clock only for those, and passes 0 for the others. NewPipeline asks
// Timings once. An Observer without the method gets every duration.
type TimingObserver interface {
	// Timings reports the durations the observer uses.
	Timings() Timings
}

// Timings is a set of the durations a Pipeline measures for its Observer.
type Timings uint8

const (
	// TimeStore is EndStore's duration of each store call.
	TimeStore Timings = 1 << iota
	// TimeHandler is EndHandler's duration of the handler's run.
	TimeHandler
	// TimeDelivery is Delivery.Duration, the whole of Process.
	TimeDelivery

	// TimeAll is every duration: what an Observer that does not
	// implement TimingObserver gets.
	TimeAll = TimeStore | TimeHandler | TimeDelivery
)

// Delivery is the pipeline's account of one delivery, given to
// Observer.EndMessage.
type Delivery struct {
	// Outcome is what Process returned.
	Outcome Outcome
	// Claim is what the dedupe claim answered: the Guard's, or the one the
	// handler reported with Message.SetClaim (a transactional inbox). 0
	// when there was no claim (no Guard, or shutdown interrupted it).
	Claim ClaimResult
	// Duration is how long Process took (0 when the Observer's Timings
	// leave out TimeDelivery).
	Duration time.Duration
}

// StoreOp names a dedupe store call the pipeline makes through its Guard
// (dedupe.StoreOp, shared with httpdedupe's observer).
type StoreOp = dedupe.StoreOp

// The store calls; see dedupe.StoreOp.
const (
	StoreClaim    = dedupe.StoreClaim
	StoreComplete = dedupe.StoreComplete
	StoreRelease  = dedupe.StoreRelease
	StoreDelete   = dedupe.StoreDelete
	StoreExtend   = dedupe.StoreExtend
	StoreSnooze   = dedupe.StoreSnooze
)

// ClaimResult is what the dedupe claim of a delivery answered
// (dedupe.ClaimResult, shared with httpdedupe's observer).
type ClaimResult = dedupe.ClaimResult

// The claim answers; see dedupe.ClaimResult.
const (
	ClaimAcquired   = dedupe.ClaimAcquired
	ClaimTakeover   = dedupe.ClaimTakeover
	ClaimDuplicate  = dedupe.ClaimDuplicate
	ClaimBusy       = dedupe.ClaimBusy
	ClaimConflict   = dedupe.ClaimConflict
	ClaimInvalid    = dedupe.ClaimInvalid
	ClaimStoreError = dedupe.ClaimStoreError
)

// NopObserver implements Observer, PauseObserver and DeadLetterObserver
// and does nothing.
// Embed it in an observer that needs only some of the methods.
type NopObserver struct{}

// StartMessage returns ctx.
func (NopObserver) StartMessage(ctx context.Context, _ *Message) context.Context { return ctx }

// StartStore returns ctx.
func (NopObserver) StartStore(ctx context.Context, _ *Message, _ StoreOp) context.Context {
	return ctx
}

// EndStore does nothing.
func (NopObserver) EndStore(context.Context, *Message, StoreOp, time.Duration, error) {}

// StartHandler returns ctx.
func (NopObserver) StartHandler(ctx context.Context, _ *Message) context.Context { return ctx }

// EndHandler does nothing.
func (NopObserver) EndHandler(context.Context, *Message, time.Duration, error) {}

// EndMessage does nothing.
func (NopObserver) EndMessage(context.Context, *Message, Delivery) {}

// Paused does nothing.
func (NopObserver) Paused(context.Context, Dependency, error) {}

// Resumed does nothing.
func (NopObserver) Resumed(context.Context, Dependency, time.Duration) {}

// DeadLettered does nothing.
func (NopObserver) DeadLettered(context.Context, *Message, Reason, error) {}

// OutcomeFunc is an Observer that calls itself with each delivery's
// account and ignores the rest, for tests and simple counters:
//
//	cfg.Observer = consumer.OutcomeFunc(func(m *consumer.Message, d consumer.Delivery) { ... })
type OutcomeFunc func(m *Message, d Delivery)

// StartMessage returns ctx.
func (OutcomeFunc) StartMessage(ctx context.Context, _ *Message) context.Context { return ctx }

// StartStore returns ctx.
func (OutcomeFunc) StartStore(ctx context.Context, _ *Message, _ StoreOp) context.Context {
	return ctx
}

// EndStore does nothing.
func (OutcomeFunc) EndStore(context.Context, *Message, StoreOp, time.Duration, error) {}

// StartHandler returns ctx.
func (OutcomeFunc) StartHandler(ctx context.Context, _ *Message) context.Context { return ctx }

// EndHandler does nothing.
func (OutcomeFunc) EndHandler(context.Context, *Message, time.Duration, error) {}

// EndMessage calls f.
func (f OutcomeFunc) EndMessage(_ context.Context, m *Message, d Delivery) { f(m, d) }

// Timings is TimeDelivery: f sees Delivery.Duration and no other duration.
func (OutcomeFunc) Timings() Timings { return TimeDelivery }

// clockFor returns the monotonic time since the pipeline was made, the
// observations' clock, when the Observer uses the durations of t, and 0
// without reading the clock otherwise. It reads one clock where time.Now
// reads two (the wall clock too); a delivery takes up to eight readings,
// two for each store call, the handler's run and the delivery itself, as
// far as the Observer's Timings name them.
func (p *Pipeline) clockFor(t Timings) time.Duration {
	if p.timings&t == 0 {
		return 0
	}
	return time.Since(p.epoch)
}

// startStore opens the observation of a guard call: the context for the
// call and its start (clock; 0 without an Observer).
func (p *Pipeline) startStore(ctx context.Context, m *Message, op StoreOp) (context.Context, time.Duration) {
	if p.obs == nil {
		return ctx, 0
	}
	return p.obs.StartStore(ctx, m, op), p.clockFor(TimeStore)
}

// endStore closes the observation opened by startStore.
func (p *Pipeline) endStore(ctx context.Context, m *Message, op StoreOp, start time.Duration, err error) {
	if p.obs != nil {
		p.obs.EndStore(ctx, m, op, p.clockFor(TimeStore)-start, err)
	}
}

// run calls the handler through call, observed when there is an Observer.
func (p *Pipeline) run(ctx context.Context, m *Message, t *dedupe.Ticket) (err error, leaseLost bool) {
	if p.obs == nil {
		return p.call(ctx, m, t)
	}
	hctx := p.obs.StartHandler(ctx, m)
	start := p.clockFor(TimeHandler)
	err, leaseLost = p.call(hctx, m, t)
	p.obs.EndHandler(hctx, m, p.clockFor(TimeHandler)-start, err)
	return err, leaseLost
}

// observe is Process with an Observer.
func (p *Pipeline) observe(ctx context.Context, m *Message) Outcome {
	start := p.clockFor(TimeDelivery)
	ctx = p.obs.StartMessage(ctx, m)
	out, claim := p.process(ctx, m)
	if claim == 0 {
		claim = m.claim
	}
	p.obs.EndMessage(ctx, m, Delivery{Outcome: out, Claim: claim, Duration: p.clockFor(TimeDelivery) - start})
	return out
}

// SetClaim records the answer of the handler's own dedupe claim (a
// transactional inbox, which claims in the handler's transaction) for the
// pipeline's Observer (Delivery.Claim). The Guard's claim, when the
// pipeline has one, wins. It costs nothing to call without an Observer.
func (m *Message) SetClaim(c ClaimResult) { m.claim = c }
