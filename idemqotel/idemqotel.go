package idemqotel

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/idemq/idemq/dedupe"
)

// ScopeName is the instrumentation scope of the meter and the tracer.
const ScopeName = "github.com/idemq/idemq/idemqotel"

// Metric names (OpenTelemetry form; Prometheus turns dots into underscores
// and adds _seconds to durations and _total to counters).
const (
	// MetricProcessDuration is the semantic-convention histogram of a
	// delivery's processing through the pipeline (claim, handler, settle),
	// in seconds, by idemq.outcome; recorded with
	// ConsumerOptions.ProcessDuration.
	MetricProcessDuration = "messaging.process.duration"
	// MetricConsumerMessages counts deliveries by idemq.outcome (ack,
	// retry, dead_letter, interrupted, unavailable) and
	// idemq.dedupe.outcome.
	MetricConsumerMessages = "idemq.consumer.messages"
	// MetricDedupeClaims counts dedupe claims by idemq.dedupe.outcome
	// (acquired, takeover, duplicate, busy, conflict, invalid, store_error)
	// and idemq.component (consumer, http).
	MetricDedupeClaims = "idemq.dedupe.claims"
	// MetricDeadLetters counts messages dead-lettered (stored in the
	// dead-letter queue) by idemq.dead_letter.reason.
	MetricDeadLetters = "idemq.dead_letters"
	// MetricRetryDelay is the histogram of redelivery delays, in seconds,
	// by idemq.retry.cause (transient, busy, unavailable, lease_lost,
	// budget, snooze); its count is the number of retries.
	MetricRetryDelay = "idemq.retry.delay"
	// MetricHandlerDuration is the histogram of handler runs, in seconds,
	// by idemq.component.
	MetricHandlerDuration = "idemq.handler.duration"
	// MetricStoreDuration is the histogram of dedupe store calls made
	// through the guard, in seconds, by idemq.dedupe.operation (claim,
	// complete, release, delete, extend, snooze), idemq.component,
	// error.type and a consumer's messaging.consumer.group.name (not
	// messaging.system: a store call is no messaging operation). A
	// consumer's successful calls are sampled (see
	// ConsumerOptions.StoreDurationEvery); the HTTP middleware's are all
	// recorded.
	MetricStoreDuration = "idemq.dedupe.store.duration"
	// MetricConsumerPaused is 1 while the consumer is paused because
	// idemq.dependency (store, dead_letter, handler_dependency) does not
	// answer, 0 otherwise.
	MetricConsumerPaused = "idemq.consumer.paused"
	// MetricConsumerPauses counts pauses by idemq.dependency.
	MetricConsumerPauses = "idemq.consumer.pauses"
	// MetricSentMessages is the semantic-convention counter of messages the
	// relay handed to the broker, by messaging.destination.name and
	// error.type (absent when acknowledged).
	MetricSentMessages = "messaging.client.sent.messages"
	// MetricOutboxLag is the histogram of the time from a row's AddTx to
	// its PubAck, in seconds.
	MetricOutboxLag = "idemq.outbox.lag"
	// MetricOutboxClaimed counts rows claimed by relay rounds.
	MetricOutboxClaimed = "idemq.outbox.claimed"
	// MetricOutboxRows counts rows by idemq.outbox.result: published,
	// duplicate (published, the broker had it), failed, retried.
	MetricOutboxRows = "idemq.outbox.rows"
	// MetricOutboxRounds counts relay rounds that claimed rows or failed,
	// with error.type on a failed round.
	MetricOutboxRounds = "idemq.outbox.rounds"
	// MetricOutboxRoundDuration is the histogram of relay rounds, in
	// seconds.
	MetricOutboxRoundDuration = "idemq.outbox.round.duration"
	// MetricOutboxBacklog is the number of outbox rows by
	// idemq.outbox.state (pending, failed), read at collection
	// (Telemetry.ObserveOutbox).
	MetricOutboxBacklog = "idemq.outbox.backlog"
	// MetricOutboxOldestPending is the age of the oldest pending outbox
	// row, in seconds, read at collection; 0 when none is pending.
	MetricOutboxOldestPending = "idemq.outbox.oldest_pending.age"
	// MetricHTTPRequests counts unsafe requests through the idempotency
	// middleware by idemq.dedupe.outcome, http.request.method and
	// http.response.status_code.
	MetricHTTPRequests = "idemq.http.requests"
)

// Attribute keys of idemq's own (the messaging ones are the semantic
// conventions').
const (
	// AttrOutcome is a delivery's outcome: ack, retry, dead_letter,
	// interrupted, unavailable.
	AttrOutcome = attribute.Key("idemq.outcome")
	// AttrDedupeOutcome is a claim's answer (consumer.ClaimResult).
	AttrDedupeOutcome = attribute.Key("idemq.dedupe.outcome")
	// AttrDeadLetterReason is the dead-letter reason (Idemq-Reason).
	AttrDeadLetterReason = attribute.Key("idemq.dead_letter.reason")
	// AttrRetryCause is why a delivery is retried.
	AttrRetryCause = attribute.Key("idemq.retry.cause")
	// AttrDependency names what did not answer: store, dead_letter,
	// handler_dependency (consumer.Unavailable).
	AttrDependency = attribute.Key("idemq.dependency")
	// AttrStoreOperation is a dedupe store call: claim, complete, release,
	// delete, extend, snooze.
	AttrStoreOperation = attribute.Key("idemq.dedupe.operation")
	// AttrComponent is consumer or http.
	AttrComponent = attribute.Key("idemq.component")
	// AttrOutboxResult is a row's result: published, duplicate, failed,
	// retried.
	AttrOutboxResult = attribute.Key("idemq.outbox.result")
	// AttrOutboxState is an outbox row state: pending, failed.
	AttrOutboxState = attribute.Key("idemq.outbox.state")
	// AttrOutboxTable is the outbox table.
	AttrOutboxTable = attribute.Key("idemq.outbox.table")
	// AttrAttempt is the delivery count of a message (span attribute).
	AttrAttempt = attribute.Key("idemq.attempt")
	// AttrRetryDelay is a retry's delay in seconds (span attribute).
	AttrRetryDelay = attribute.Key("idemq.retry.delay")
)

// Bucket boundaries, in seconds.
var (
	// DurationBuckets are those of the duration histograms: 100µs to 30s.
	DurationBuckets = []float64{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}
	// DelayBuckets are those of idemq.retry.delay: 10ms to 5min.
	DelayBuckets = []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300}
	// LagBuckets are those of idemq.outbox.lag: 500µs to 1min.
	LagBuckets = []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
)

// Config configures Telemetry. Its zero value uses the global providers
// and W3C trace context.
type Config struct {
	// MeterProvider creates the instruments. Default otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
	// TracerProvider creates the spans. Default otel.GetTracerProvider().
	// A trace/noop.TracerProvider turns tracing off: no span is started,
	// no trace context read and no exemplar looked for, which saves their
	// cost where only metrics are wanted (an outbox row still carries the
	// causing message's traceparent, see outbox.Cause).
	TracerProvider trace.TracerProvider
	// Propagator reads the trace context from message and request headers
	// and writes it into outbox rows and published messages. Default
	// propagation.TraceContext{} (traceparent, tracestate).
	Propagator propagation.TextMapPropagator
}

// Telemetry holds the instruments and the tracer; its methods return the
// observers to plug into idemq (Consumer, Relay, HTTP) and the trace
// injector for the outbox (InjectTrace). One Telemetry serves any number of
// them; it is safe for concurrent use.
type Telemetry struct {
	meter    metric.Meter
	tracer   trace.Tracer
	noTraces bool // TracerProvider is a noop.TracerProvider
	prop     propagation.TextMapPropagator

	processDur    metric.Float64Histogram
	messages      metric.Int64ObservableCounter
	claims        metric.Int64ObservableCounter
	deadLetters   metric.Int64ObservableCounter
	counters      sync.Mutex // guards the lists below
	messageNs     []*count
	claimNs       []*count
	deadLetterNs  []*count
	retryDelay    metric.Float64Histogram
	handlerDur    metric.Float64Histogram
	storeDur      metric.Float64Histogram
	paused        metric.Int64UpDownCounter
	pauses        metric.Int64Counter
	sent          metric.Int64Counter
	lag           metric.Float64Histogram
	outboxClaimed metric.Int64Counter
	outboxRows    metric.Int64Counter
	rounds        metric.Int64Counter
	roundDur      metric.Float64Histogram
	httpRequests  metric.Int64Counter
	batch         batcher // the consumers' histogram measurements
}

// New creates the instruments. It fails only when the meter refuses one.
func New(cfg Config) (*Telemetry, error) {
	mp, tp, prop := cfg.MeterProvider, cfg.TracerProvider, cfg.Propagator
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if prop == nil {
		prop = propagation.TraceContext{}
	}
	_, noTraces := tp.(tracenoop.TracerProvider)
	t := &Telemetry{meter: mp.Meter(ScopeName), tracer: tp.Tracer(ScopeName), noTraces: noTraces, prop: prop}
	m := t.meter
	var errs []error
	hist := func(name, desc string, buckets []float64) metric.Float64Histogram {
		h, err := m.Float64Histogram(name, metric.WithUnit("s"), metric.WithDescription(desc), metric.WithExplicitBucketBoundaries(buckets...))
		errs = append(errs, err)
		return h
	}
	counter := func(name, unit, desc string) metric.Int64Counter {
		c, err := m.Int64Counter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	t.processDur = hist(MetricProcessDuration, "Duration of a delivery through the idemq pipeline: claim, handler, settle.", DurationBuckets)
	// The per-delivery counters are counted in atomics and read at
	// collection: an atomic add costs a fraction of a synchronous
	// measurement, on the path every message takes.
	observable := func(name, unit, desc string) metric.Int64ObservableCounter {
		c, err := m.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		errs = append(errs, err)
		return c
	}
	t.messages = observable(MetricConsumerMessages, "{message}", "Deliveries by outcome.")
	t.claims = observable(MetricDedupeClaims, "{claim}", "Dedupe claims by answer.")
	t.deadLetters = observable(MetricDeadLetters, "{message}", "Messages stored in the dead-letter queue, by reason.")
	if err := errors.Join(errs...); err == nil {
		_, err = m.RegisterCallback(t.observeCounts, t.messages, t.claims, t.deadLetters)
		errs = append(errs, err)
	}
	t.retryDelay = hist(MetricRetryDelay, "Redelivery delays by cause; the count is the number of retries.", DelayBuckets)
	t.handlerDur = hist(MetricHandlerDuration, "Duration of handler runs.", DurationBuckets)
	t.storeDur = hist(MetricStoreDuration, "Duration of dedupe store calls made through the guard (a consumer's successful calls sampled, see idemqotel.ConsumerOptions.StoreDurationEvery).", DurationBuckets)
	var err error
	t.paused, err = m.Int64UpDownCounter(MetricConsumerPaused, metric.WithUnit("{consumer}"),
		metric.WithDescription("1 while the consumer is paused because a dependency does not answer."))
	errs = append(errs, err)
	t.pauses = counter(MetricConsumerPauses, "{pause}", "Consumer pauses by the dependency that did not answer.")
	t.sent = counter(MetricSentMessages, "{message}", "Messages the outbox relay handed to the broker.")
	t.lag = hist(MetricOutboxLag, "Time from an outbox row's AddTx to its PubAck.", LagBuckets)
	t.outboxClaimed = counter(MetricOutboxClaimed, "{row}", "Outbox rows claimed by relay rounds.")
	t.outboxRows = counter(MetricOutboxRows, "{row}", "Outbox rows by the result of their publish.")
	t.rounds = counter(MetricOutboxRounds, "{round}", "Relay rounds that claimed rows or failed.")
	t.roundDur = hist(MetricOutboxRoundDuration, "Duration of relay rounds, claim to commit.", DurationBuckets)
	t.httpRequests = counter(MetricHTTPRequests, "{request}", "Unsafe requests through the idempotency middleware.")
	t.batch.hists = [nHistograms]metric.Float64Histogram{histProcess: t.processDur, histStore: t.storeDur,
		histHandler: t.handlerDur, histRetry: t.retryDelay}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("idemqotel: %w", err)
	}
	return t, nil
}

// InjectTrace writes the trace context of ctx into h with the
// Propagator. Set it as outbox.Config.InjectTrace, so that each row carries
// the writer's span (the HTTP handler's, the consumer handler's) and the
// relay's publish continues it.
func (t *Telemetry) InjectTrace(ctx context.Context, h http.Header) {
	t.prop.Inject(ctx, headerCarrier(h))
}

// Extract returns ctx with the remote span context found in header (a
// message's or a request's headers), for code that starts its own spans.
func (t *Telemetry) Extract(ctx context.Context, header map[string][]string) context.Context {
	return t.prop.Extract(ctx, headerCarrier(header))
}

// headerCarrier is a propagation.TextMapCarrier over message headers. NATS
// headers keep their case and the outbox stores "traceparent" in lower
// case, while HTTP canonicalises it ("Traceparent"): Get accepts either,
// and Set writes the lower-case name W3C uses, replacing other spellings.
type headerCarrier map[string][]string

func (h headerCarrier) Get(key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	// Any other spelling (the canonical "Traceparent" included): a scan
	// of the few headers a message has costs less than building the
	// canonical key, for the key that is usually absent (tracestate).
	for k, v := range h {
		if len(v) > 0 && strings.EqualFold(k, key) {
			return v[0]
		}
	}
	return ""
}

func (h headerCarrier) Set(key, value string) {
	for k := range h {
		if k != key && strings.EqualFold(k, key) {
			delete(h, k)
		}
	}
	h[key] = []string{value}
}

func (h headerCarrier) Keys() []string {
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	return keys
}

// count is one attribute set of an observable counter, counted in an
// atomic.
type count struct {
	n   atomic.Int64
	opt metric.ObserveOption
}

// newCount returns a count with the attributes kvs, reported (from 0 on)
// at every collection as a point of the counter whose list it joins.
func (t *Telemetry) newCount(list *[]*count, kvs ...attribute.KeyValue) *count {
	c := &count{opt: metric.WithAttributeSet(attribute.NewSet(kvs...))}
	t.counters.Lock()
	*list = append(*list, c)
	t.counters.Unlock()
	return c
}

// observeCounts reports the counts at collection.
func (t *Telemetry) observeCounts(_ context.Context, o metric.Observer) error {
	// The SDK reads the aggregations after the callbacks: the consumers'
	// buffered histogram measurements are in this collection.
	t.batch.flush()
	t.counters.Lock()
	defer t.counters.Unlock()
	for _, l := range []struct {
		inst metric.Int64ObservableCounter
		cs   []*count
	}{{t.messages, t.messageNs}, {t.claims, t.claimNs}, {t.deadLetters, t.deadLetterNs}} {
		for _, c := range l.cs {
			o.ObserveInt64(l.inst, c.n.Load(), c.opt)
		}
	}
	return nil
}

// opts is one precomputed attribute set, as the options the instruments
// take, so that recording allocates nothing.
type opts struct {
	add []metric.AddOption
	rec []metric.RecordOption
}

func newOpts(kvs ...attribute.KeyValue) opts {
	o := metric.WithAttributeSet(attribute.NewSet(kvs...))
	return opts{add: []metric.AddOption{o}, rec: []metric.RecordOption{o}}
}

// errorType is the error.type of a failed store call.
func errorType(err error) string {
	switch {
	case errors.Is(err, dedupe.ErrLeaseLost):
		return "lease_lost"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.Is(err, context.Canceled):
		return "canceled"
	}
	return "_OTHER"
}

var (
	systemNATS       = semconv.MessagingSystemKey.String("nats")
	componentHTTP    = AttrComponent.String("http")
	componentConsume = AttrComponent.String("consumer")
)
