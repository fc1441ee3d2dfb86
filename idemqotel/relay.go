package idemqotel

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemq/idemq/outbox"
)

// Relay returns the outbox.RelayObserver to set as
// outbox.RelayConfig.Observer.
//
// Per row it starts a "send <subject>" span (kind producer) whose parent is
// the trace context stored with the row (the writer's span, see
// InjectTrace), publishes the row with that span's traceparent so that the
// consumer's process span continues the trace, and records
// messaging.client.sent.messages and, once acknowledged, idemq.outbox.lag.
// Per round it records idemq.outbox.claimed, idemq.outbox.rows by result,
// idemq.outbox.rounds and idemq.outbox.round.duration.
func (t *Telemetry) Relay() *RelayObserver {
	r := &RelayObserver{t: t}
	for i, n := range rowResults {
		r.rows[i] = newOpts(systemNATS, AttrOutboxResult.String(n))
	}
	r.ok = newOpts(systemNATS)
	r.failed = newOpts(systemNATS, semconv.ErrorTypeKey.String("_OTHER"))
	return r
}

// RelayObserver is the outbox.RelayObserver that Telemetry.Relay returns.
type RelayObserver struct {
	t        *Telemetry
	rows     [4]opts
	ok       opts
	failed   opts
	subjects sync.Map // subject → *subjectOpts
}

var _ outbox.RelayObserver = (*RelayObserver)(nil)

var rowResults = [4]string{"published", "duplicate", "failed", "retried"}

// subjectOpts is the precomputed attributes of one subject.
type subjectOpts struct {
	span     string
	attr     attribute.KeyValue
	sent     opts
	rejected opts
	timeout  opts
	other    opts
	lag      opts
}

func (r *RelayObserver) subject(s string) *subjectOpts {
	if v, ok := r.subjects.Load(s); ok {
		return v.(*subjectOpts)
	}
	a := semconv.MessagingDestinationNameKey.String(s)
	op := semconv.MessagingOperationNameKey.String("publish")
	v, _ := r.subjects.LoadOrStore(s, &subjectOpts{
		span:     "send " + s,
		attr:     a,
		sent:     newOpts(systemNATS, a, op),
		rejected: newOpts(systemNATS, a, op, semconv.ErrorTypeKey.String("rejected")),
		timeout:  newOpts(systemNATS, a, op, semconv.ErrorTypeKey.String("timeout")),
		other:    newOpts(systemNATS, a, op, semconv.ErrorTypeKey.String("_OTHER")),
		lag:      newOpts(systemNATS, a),
	})
	return v.(*subjectOpts)
}

// StartPublish starts the row's send span under the row's stored trace
// context and writes the span's traceparent into the published headers.
func (r *RelayObserver) StartPublish(ctx context.Context, m *outbox.Outgoing) context.Context {
	if r.t.noTraces {
		return ctx
	}
	s := r.subject(m.Subject)
	if len(m.Header) > 0 {
		ctx = r.t.prop.Extract(ctx, headerCarrier(m.Header))
	}
	ctx, span := r.t.tracer.Start(ctx, s.span, trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(
		systemNATS, s.attr,
		semconv.MessagingOperationTypeSend,
		semconv.MessagingOperationNameKey.String("publish"),
		semconv.MessagingMessageIDKey.String(m.ID),
		semconv.MessagingMessageBodySizeKey.Int(len(m.Data)),
	))
	if span.SpanContext().IsValid() {
		if m.Header == nil {
			m.Header = map[string][]string{}
		}
		r.t.prop.Inject(ctx, headerCarrier(m.Header))
	}
	return ctx
}

// EndPublish records the broker's answer and ends the send span.
func (r *RelayObserver) EndPublish(ctx context.Context, m *outbox.Outgoing, res outbox.PublishResult, lag time.Duration) {
	s := r.subject(m.Subject)
	span := trace.SpanFromContext(ctx)
	switch {
	case res.Err == nil:
		r.t.sent.Add(ctx, 1, s.sent.add...)
		r.t.lag.Record(ctx, lag.Seconds(), s.lag.rec...)
		if span.IsRecording() && res.Duplicate {
			span.SetAttributes(attribute.Bool("idemq.outbox.duplicate", true))
		}
	case res.Rejected:
		r.t.sent.Add(ctx, 1, s.rejected.add...)
	case errors.Is(res.Err, outbox.ErrPublishTimeout) || errors.Is(res.Err, context.DeadlineExceeded):
		r.t.sent.Add(ctx, 1, s.timeout.add...)
	default:
		r.t.sent.Add(ctx, 1, s.other.add...)
	}
	if r.t.noTraces {
		return
	}
	if res.Err != nil && span.IsRecording() {
		span.SetStatus(codes.Error, res.Err.Error())
	}
	span.End()
}

// Round records a round's counts.
func (r *RelayObserver) Round(ctx context.Context, rr outbox.RelayRound) {
	if rr.Claimed > 0 {
		r.t.outboxClaimed.Add(ctx, int64(rr.Claimed), r.ok.add...)
	}
	for i, n := range [4]int{rr.Published - rr.Duplicates, rr.Duplicates, rr.Failed, rr.Retried} {
		if n > 0 {
			r.t.outboxRows.Add(ctx, int64(n), r.rows[i].add...)
		}
	}
	o := r.ok
	if rr.Err != nil {
		o = r.failed
	}
	r.t.rounds.Add(ctx, 1, o.add...)
	r.t.roundDur.Record(ctx, rr.Duration.Seconds(), o.rec...)
}

// ObserveOutbox registers idemq.outbox.backlog (rows pending and failed)
// and idemq.outbox.oldest_pending.age, read from the outbox table through q
// (a *sql.DB) at each collection, with a 5s timeout. Unregister the
// returned registration when the database closes.
func (t *Telemetry) ObserveOutbox(q outbox.Querier, ob *outbox.Outbox) (metric.Registration, error) {
	backlog, err := t.meter.Int64ObservableGauge(MetricOutboxBacklog, metric.WithUnit("{row}"),
		metric.WithDescription("Outbox rows by state: pending (not yet acknowledged) and failed."))
	if err != nil {
		return nil, fmt.Errorf("idemqotel: %w", err)
	}
	oldest, err := t.meter.Float64ObservableGauge(MetricOutboxOldestPending, metric.WithUnit("s"),
		metric.WithDescription("Age of the oldest pending outbox row; 0 when none is pending."))
	if err != nil {
		return nil, fmt.Errorf("idemqotel: %w", err)
	}
	table := AttrOutboxTable.String(ob.Table())
	pending := metric.WithAttributes(table, AttrOutboxState.String(string(outbox.StatePending)))
	failed := metric.WithAttributes(table, AttrOutboxState.String(string(outbox.StateFailed)))
	tableOnly := metric.WithAttributes(table)
	reg, err := t.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		counts, err := ob.Counts(ctx, q)
		if err != nil {
			return err
		}
		o.ObserveInt64(backlog, counts[outbox.StatePending], pending)
		o.ObserveInt64(backlog, counts[outbox.StateFailed], failed)
		age := 0.0
		if counts[outbox.StatePending] > 0 {
			rows, err := ob.List(ctx, q, &outbox.ListFilter{State: outbox.StatePending, Limit: 1})
			if err != nil {
				return err
			}
			if len(rows) == 1 {
				age = max(time.Since(rows[0].CreatedAt).Seconds(), 0)
			}
		}
		o.ObserveFloat64(oldest, age, tableOnly)
		return nil
	}, backlog, oldest)
	if err != nil {
		return nil, fmt.Errorf("idemqotel: %w", err)
	}
	return reg, nil
}
