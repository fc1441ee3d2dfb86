package idemqotel

import (
	"context"
	"errors"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/dedupe"
)

// ConsumerOptions describes the consumer an observer watches; the values
// become attributes of its metrics and spans.
type ConsumerOptions struct {
	// System is messaging.system. Default "nats".
	System string
	// Group is messaging.consumer.group.name: the durable consumer's name
	// (natsjs.Config.Durable). Empty leaves the attribute out.
	Group string
	// Destination, when set, is messaging.destination.name on every metric
	// and span instead of each message's subject: set it (to the stream
	// name, say) when subjects carry ids, to bound the metrics'
	// cardinality. Default: the message's subject.
	Destination string
	// ProcessDuration also records messaging.process.duration, by
	// idemq.outcome, for each delivery. Off by default: a histogram
	// measurement is the SDK's synchronous Record, the bulk of the
	// observer's cost (about 0.2 µs each, BenchmarkObserverCalls), and by
	// default a delivery makes none, but for the store calls that
	// StoreDurationEvery samples. The counts by outcome
	// (idemq.consumer.messages) are recorded either way.
	ProcessDuration bool
	// HandlerDuration also records idemq.handler.duration (component
	// consumer) for each handler run. Off by default, for the same
	// reason: one more histogram measurement per delivery.
	HandlerDuration bool
	// StoreDurationEvery samples the successful store calls recorded in
	// idemq.dedupe.store.duration: one in StoreDurationEvery, chosen at
	// random, and every failed call (one with error.type), so that the
	// latency quantiles and the mean of successful calls stay unbiased
	// while a delivery's two histogram measurements (its claim's and its
	// completion's) cost a sixteenth of what they would: together they
	// were most of the observer's cost. The sampled series' _count is
	// then the number of calls sampled, not made: count store calls with
	// idemq.dedupe.claims, which counts every claim. A store call of a
	// delivery whose span is sampled is always recorded (it may become
	// an exemplar). 0 means DefaultStoreDurationEvery (16); 1 records
	// every call; a negative value records none, and the pipeline then
	// reads no clock around store calls.
	StoreDurationEvery int
}

// DefaultStoreDurationEvery is ConsumerOptions.StoreDurationEvery's
// default: one successful store call in 16 is recorded.
const DefaultStoreDurationEvery = 16

// Consumer returns the consumer.Observer for one consumer (set it as
// consumer.Config.Observer, natsjs.Config.Pipeline.Observer or the
// Watermill adapter's). It also implements consumer.PauseObserver, so
// natsjs reports its pauses to it.
//
// Per delivery it records idemq.consumer.messages by outcome,
// idemq.dedupe.claims by the claim's answer, idemq.dead_letters by reason,
// idemq.retry.delay by cause, idemq.dedupe.store.duration for the store
// calls ConsumerOptions.StoreDurationEvery samples (one successful call in
// 16, and every failed one, by default), messaging.process.duration with
// ConsumerOptions.ProcessDuration and idemq.handler.duration with
// ConsumerOptions.HandlerDuration; per pause idemq.consumer.pauses and
// idemq.consumer.paused; per dead letter stored outside the pipeline
// (DeadLettered) idemq.dead_letters. The counters are atomics read at
// collection; the histogram measurements are the SDK's synchronous Record
// calls, most of the observer's cost, which is why the defaults make few.
//
// Spans: "process <destination>" (kind consumer) per delivery, whose parent
// is the producer's trace context in the message headers (traceparent),
// with children "idemq.dedupe.<operation>" per store call and
// "idemq.handler" for the handler, which is the parent of the handler's own
// work (an outbox row written with InjectTrace carries it). A delivery
// whose span is sampled out gets no child span and no attributes built:
// it costs the trace context's extraction and the sampler's decision.
func (t *Telemetry) Consumer(o ConsumerOptions) *ConsumerObserver {
	if o.System == "" {
		o.System = "nats"
	}
	if o.StoreDurationEvery == 0 {
		o.StoreDurationEvery = DefaultStoreDurationEvery
	}
	c := &ConsumerObserver{t: t, o: o}
	system := semconv.MessagingSystemKey.String(o.System)
	if o.System == "nats" {
		system = systemNATS
	}
	var group []attribute.KeyValue
	if o.Group != "" {
		group = []attribute.KeyValue{semconv.MessagingConsumerGroupNameKey.String(o.Group)}
	}
	c.base = append([]attribute.KeyValue{system}, group...)
	// A store call is no messaging operation: its latency carries the
	// group but not messaging.system, one attribute fewer for the SDK to
	// check on each of the two measurements of every delivery.
	c.store = newStoreOpts(componentConsume, group)
	c.claims = t.claimCounts(componentConsume, c.base)
	c.handlerOpts = newOpts(append([]attribute.KeyValue{componentConsume}, c.base...)...)
	for dep := consumer.StoreUnavailable; dep <= consumer.HandlerUnavailable; dep++ {
		c.pauseOpts[dep] = newOpts(append([]attribute.KeyValue{AttrDependency.String(dep.String())}, c.base...)...)
	}
	if o.Destination != "" {
		c.fixed = c.newDest(o.Destination)
	}
	return c
}

// ConsumerObserver is the consumer.Observer and consumer.PauseObserver that
// Telemetry.Consumer returns.
type ConsumerObserver struct {
	t           *Telemetry
	o           ConsumerOptions
	base        []attribute.KeyValue
	store       storeOpts
	claims      [consumer.ClaimStoreError + 1]*count
	handlerOpts opts
	pauseOpts   [consumer.HandlerUnavailable + 1]opts
	fixed       *dest                // ConsumerOptions.Destination
	last        atomic.Pointer[dest] // the destination destOf returned last
	dests       sync.Map             // subject → *dest
	newDests    sync.Mutex           // one newDest per subject: its counts are registered
}

var (
	_ consumer.PauseObserver      = (*ConsumerObserver)(nil)
	_ consumer.DeadLetterObserver = (*ConsumerObserver)(nil)
	_ consumer.TimingObserver     = (*ConsumerObserver)(nil)
)

// Outcomes of idemq.outcome, in index order.
const (
	outAck = iota
	outRetry
	outDeadLetter
	outInterrupted
	outUnavailable
	nOutcomes
)

var outcomeNames = [nOutcomes]string{"ack", "retry", "dead_letter", "interrupted", "unavailable"}

// Retry causes of idemq.retry.cause, in index order.
const (
	causeTransient = iota
	causeBusy
	causeUnavailable
	causeLeaseLost
	causeBudget
	causeSnooze
	nCauses
)

var causeNames = [nCauses]string{"transient", "busy", "unavailable", "lease_lost", "budget", "snooze"}

// dest is the precomputed attributes of one destination.
type dest struct {
	name     string
	span     string // "process <name>"
	attr     attribute.KeyValue
	start    []trace.SpanStartOption // of the process span
	outcomes [nOutcomes]opts
	messages [nOutcomes]*count
	reasons  [consumer.ReasonInvalid + 1]*count
	causes   [nCauses]opts
}

func (c *ConsumerObserver) newDest(name string) *dest {
	d := &dest{name: name, span: "process " + name, attr: semconv.MessagingDestinationNameKey.String(name)}
	// The attributes a sampler may look at, known before the message is:
	// one option slice for every span, so that a span sampled out costs no
	// attribute building.
	d.start = []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
		c.base[0],
		d.attr,
		semconv.MessagingOperationTypeProcess,
		semconv.MessagingOperationNameKey.String("process"),
	)}
	with := func(kv ...attribute.KeyValue) opts {
		return newOpts(append(append([]attribute.KeyValue{d.attr}, c.base...), kv...)...)
	}
	kvs := func(kv ...attribute.KeyValue) []attribute.KeyValue {
		return append(append([]attribute.KeyValue{d.attr}, c.base...), kv...)
	}
	// Every outcome and reason is a point from 0 on, so that dashboards
	// see the series (and rate() works) before the first of each kind.
	for i, n := range outcomeNames {
		d.outcomes[i] = with(AttrOutcome.String(n))
		d.messages[i] = c.t.newCount(&c.t.messageNs, kvs(AttrOutcome.String(n))...)
	}
	for r := consumer.ReasonPermanent; r <= consumer.ReasonInvalid; r++ {
		d.reasons[r] = c.t.newCount(&c.t.deadLetterNs, kvs(AttrDeadLetterReason.String(r.String()))...)
	}
	for i, n := range causeNames {
		d.causes[i] = with(AttrRetryCause.String(n))
	}
	return d
}

// destOf returns the destination of m.
func (c *ConsumerObserver) destOf(m *consumer.Message) *dest {
	if c.fixed != nil {
		return c.fixed
	}
	// Most consumers see one subject, or a few in runs: the last one
	// spares the map lookup.
	if d := c.last.Load(); d != nil && d.name == m.Subject {
		return d
	}
	if d, ok := c.dests.Load(m.Subject); ok {
		c.last.Store(d.(*dest))
		return d.(*dest)
	}
	c.newDests.Lock()
	defer c.newDests.Unlock()
	if d, ok := c.dests.Load(m.Subject); ok {
		return d.(*dest) // made while this call waited
	}
	d := c.newDest(m.Subject)
	c.dests.Store(m.Subject, d)
	c.last.Store(d)
	return d
}

// Timings implements consumer.TimingObserver: the store calls' durations,
// and the handler's and the delivery's with ConsumerOptions.HandlerDuration
// and ProcessDuration; spans take their own times.
func (c *ConsumerObserver) Timings() consumer.Timings {
	var t consumer.Timings
	if c.o.StoreDurationEvery > 0 {
		t |= consumer.TimeStore
	}
	if c.o.HandlerDuration {
		t |= consumer.TimeHandler
	}
	if c.o.ProcessDuration {
		t |= consumer.TimeDelivery
	}
	return t
}

// StartMessage starts the process span, a child of the producer's trace
// context in m's headers. The sampler sees messaging.system,
// messaging.destination.name and the operation; the message's id and
// attempt are added once the span is sampled.
func (c *ConsumerObserver) StartMessage(ctx context.Context, m *consumer.Message) context.Context {
	if c.t.noTraces {
		return ctx
	}
	d := c.destOf(m)
	if len(m.Header) > 0 {
		ctx = c.t.prop.Extract(ctx, headerCarrier(m.Header))
	}
	ctx, span := c.t.tracer.Start(ctx, d.span, d.start...)
	if span.IsRecording() {
		span.SetAttributes(semconv.MessagingMessageIDKey.String(m.ID), AttrAttempt.Int(m.Attempt))
	}
	return ctx
}

var storeSpanNames = [consumer.StoreSnooze + 1]string{"", "idemq.dedupe.claim", "idemq.dedupe.complete",
	"idemq.dedupe.release", "idemq.dedupe.delete", "idemq.dedupe.extend", "idemq.dedupe.snooze"}

// StartStore starts a store call's span.
func (c *ConsumerObserver) StartStore(ctx context.Context, _ *consumer.Message, op consumer.StoreOp) context.Context {
	if c.t.noTraces || int(op) >= len(storeSpanNames) || !trace.SpanFromContext(ctx).IsRecording() {
		return ctx // no child spans under a span sampled out
	}
	ctx, _ = c.t.tracer.Start(ctx, storeSpanNames[op], trace.WithSpanKind(trace.SpanKindClient))
	return ctx
}

// EndStore records the call's duration, as ConsumerOptions.StoreDurationEvery
// samples, and ends its span.
func (c *ConsumerObserver) EndStore(ctx context.Context, m *consumer.Message, op consumer.StoreOp, d time.Duration, err error) {
	if c.recordStore(ctx, err) {
		c.measure(ctx, m, histStore, d.Seconds(), c.store.of(int(op), err))
	}
	if c.t.noTraces {
		return
	}
	// The span in ctx is the store call's, or, when StartStore started
	// none, a span that is not recording, for which End does nothing.
	endSpan(trace.SpanFromContext(ctx), err)
}

// recordStore reports whether a store call ending with err is recorded
// in idemq.dedupe.store.duration (see ConsumerOptions.StoreDurationEvery):
// every failed call, one successful call in StoreDurationEvery, chosen at
// random, and the calls of a delivery whose span is sampled.
func (c *ConsumerObserver) recordStore(ctx context.Context, err error) bool {
	switch every := c.o.StoreDurationEvery; {
	case every == 1:
		return true
	case every < 1:
		return false
	case err != nil || rand.Uint32N(uint32(every)) == 0:
		return true
	}
	return !c.t.noTraces && trace.SpanContextFromContext(ctx).IsSampled()
}

// StartHandler starts the handler's span.
func (c *ConsumerObserver) StartHandler(ctx context.Context, _ *consumer.Message) context.Context {
	if c.t.noTraces || !trace.SpanFromContext(ctx).IsRecording() {
		return ctx
	}
	ctx, _ = c.t.tracer.Start(ctx, "idemq.handler")
	return ctx
}

// EndHandler records the handler's duration (with
// ConsumerOptions.HandlerDuration) and ends its span.
func (c *ConsumerObserver) EndHandler(ctx context.Context, m *consumer.Message, d time.Duration, err error) {
	if c.o.HandlerDuration {
		c.measure(ctx, m, histHandler, d.Seconds(), &c.handlerOpts)
	}
	if c.t.noTraces {
		return
	}
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	var rej *consumer.RejectError
	if errors.As(err, &rej) {
		err = nil // a business result, not a failure of the handler
	}
	endSpan(span, err)
}

// EndMessage records the delivery's outcome (and its duration, with
// ConsumerOptions.ProcessDuration) and ends the process span.
func (c *ConsumerObserver) EndMessage(ctx context.Context, m *consumer.Message, del consumer.Delivery) {
	d := c.destOf(m)
	out := del.Outcome
	o := outcomeOf(out)
	if c.o.ProcessDuration {
		c.measure(ctx, m, histProcess, del.Duration.Seconds(), &d.outcomes[o])
	}
	d.messages[o].n.Add(1)
	if del.Claim > 0 && int(del.Claim) < len(c.claims) {
		c.claims[del.Claim].n.Add(1)
	}
	cause := -1
	switch {
	case o == outDeadLetter && int(out.Reason) < len(d.reasons) && out.Reason > 0:
		d.reasons[out.Reason].n.Add(1)
	case o == outRetry || o == outUnavailable:
		cause = causeOf(out)
		c.measure(ctx, m, histRetry, out.Delay.Seconds(), &d.causes[cause])
	}

	if c.t.noTraces {
		return
	}
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		span.End()
		return
	}
	kv := make([]attribute.KeyValue, 0, 5)
	kv = append(kv, AttrOutcome.String(outcomeNames[o]))
	if del.Claim != 0 {
		kv = append(kv, AttrDedupeOutcome.String(del.Claim.String()))
	}
	if out.Reason != 0 {
		kv = append(kv, AttrDeadLetterReason.String(out.Reason.String()))
	}
	if cause >= 0 {
		kv = append(kv, AttrRetryCause.String(causeNames[cause]), AttrRetryDelay.Float64(out.Delay.Seconds()))
	}
	if out.Unavailable != 0 {
		kv = append(kv, AttrDependency.String(out.Unavailable.String()))
	}
	span.SetAttributes(kv...)
	if o != outAck && o != outInterrupted && out.Err != nil {
		span.SetStatus(codes.Error, out.Err.Error())
	}
	span.End()
}

// DeadLettered counts a dead letter that a transport stored outside the
// pipeline's Process, in idemq.dead_letters by reason under m's destination
// (m needs only Subject): natsjs's for a message the server stopped
// redelivering (a MAX_DELIVERIES advisory, reason exhausted). It records
// no delivery — no idemq.consumer.messages, no messaging.process.duration
// — since the deliveries before it were counted as they ran, and starts no
// span. err, the error recorded in the dead letter, is not used. A reason
// outside consumer.ReasonPermanent…ReasonInvalid is not counted.
func (c *ConsumerObserver) DeadLettered(_ context.Context, m *consumer.Message, reason consumer.Reason, _ error) {
	d := c.destOf(m)
	if reason > 0 && int(reason) < len(d.reasons) {
		d.reasons[reason].n.Add(1)
	}
}

// Paused records a pause.
func (c *ConsumerObserver) Paused(ctx context.Context, dep consumer.Dependency, _ error) {
	if int(dep) < len(c.pauseOpts) && dep > 0 {
		c.t.pauses.Add(ctx, 1, c.pauseOpts[dep].add...)
		c.t.paused.Add(ctx, 1, c.pauseOpts[dep].add...)
	}
}

// Resumed records the end of a pause.
func (c *ConsumerObserver) Resumed(ctx context.Context, dep consumer.Dependency, _ time.Duration) {
	if int(dep) < len(c.pauseOpts) && dep > 0 {
		c.t.paused.Add(ctx, -1, c.pauseOpts[dep].add...)
	}
}

// measure records v in the histogram h with the attributes attr:
// batched (see batcher), or at once when ctx carries a sampled span, which
// the SDK may keep as an exemplar.
func (c *ConsumerObserver) measure(ctx context.Context, m *consumer.Message, h histogram, v float64, attr *opts) {
	if !c.t.noTraces && trace.SpanContextFromContext(ctx).IsSampled() {
		c.t.batch.hists[h].Record(ctx, v, attr.rec...)
		return
	}
	c.t.batch.add(unsafe.Pointer(m), h, v, attr)
}

// outcomeOf classifies an Outcome for idemq.outcome.
func outcomeOf(out consumer.Outcome) int {
	switch {
	case out.Action == consumer.Ack:
		return outAck
	case out.Action == consumer.DeadLetter:
		return outDeadLetter
	case out.Interrupted:
		return outInterrupted
	case out.Unavailable != 0:
		return outUnavailable
	}
	return outRetry
}

// causeOf classifies a Retry for idemq.retry.cause.
func causeOf(out consumer.Outcome) int {
	switch {
	case out.Unavailable != 0:
		return causeUnavailable
	case out.Snoozed:
		return causeSnooze
	case out.Claim == dedupe.Busy:
		return causeBusy
	case out.Shed:
		return causeBudget
	case errors.Is(out.Err, dedupe.ErrLeaseLost):
		return causeLeaseLost
	}
	return causeTransient
}

// endSpan ends span, marking it failed with err.
func endSpan(span trace.Span, err error) {
	if !span.IsRecording() {
		return
	}
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		span.SetAttributes(semconv.ErrorTypeKey.String(errorType(err)))
	}
	span.End()
}

// storeOpts is the precomputed attributes of store calls: operation ×
// error.type (none, lease_lost, timeout, canceled, _OTHER).
type storeOpts [consumer.StoreSnooze + 1][5]opts

var storeErrTypes = [5]string{"", "lease_lost", "timeout", "canceled", "_OTHER"}

func newStoreOpts(component attribute.KeyValue, base []attribute.KeyValue) storeOpts {
	var s storeOpts
	for op := consumer.StoreClaim; op <= consumer.StoreSnooze; op++ {
		for i, et := range storeErrTypes {
			kv := append([]attribute.KeyValue{component, AttrStoreOperation.String(op.String())}, base...)
			if et != "" {
				kv = append(kv, semconv.ErrorTypeKey.String(et))
			}
			s[op][i] = newOpts(kv...)
		}
	}
	return s
}

// of returns the attributes of operation op (a consumer.StoreOp value)
// ending with err.
func (s *storeOpts) of(op int, err error) *opts {
	if op <= 0 || op >= len(s) {
		op = 0
	}
	i := 0
	if err != nil {
		switch errorType(err) {
		case "lease_lost":
			i = 1
		case "timeout":
			i = 2
		case "canceled":
			i = 3
		default:
			i = 4
		}
	}
	return &s[op][i]
}

// claimCounts returns the counts of each claim answer.
func (t *Telemetry) claimCounts(component attribute.KeyValue, base []attribute.KeyValue) [consumer.ClaimStoreError + 1]*count {
	var out [consumer.ClaimStoreError + 1]*count
	for c := consumer.ClaimAcquired; c <= consumer.ClaimStoreError; c++ {
		out[c] = t.newCount(&t.claimNs, append([]attribute.KeyValue{component, AttrDedupeOutcome.String(c.String())}, base...)...)
	}
	return out
}
