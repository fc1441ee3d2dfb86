package idemqotel

import (
	"context"
	"net/http"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/dedupe/httpdedupe"
)

// HTTP returns the httpdedupe.Observer to set as httpdedupe.Config.Observer.
//
// Per unsafe request it records idemq.http.requests by the claim's answer,
// method and status, idemq.dedupe.claims, idemq.handler.duration and
// idemq.dedupe.store.duration (idemq.component "http"). Spans: an
// "idemq.idempotency" span per request — a child of the server span in the
// request's context (otelhttp's, say), or, without one, a server span named
// after the route ("PUT /payments") that continues the client's
// traceparent — with children "idemq.dedupe.<operation>" and
// "idemq.handler"; the handler's request context carries the latter, so an
// outbox row it writes (with InjectTrace) continues the trace.
func (t *Telemetry) HTTP() *HTTPObserver {
	h := &HTTPObserver{t: t}
	h.store = newStoreOpts(componentHTTP, nil)
	h.claims = t.claimCounts(componentHTTP, nil)
	h.handlerOpts = newOpts(componentHTTP)
	return h
}

// HTTPObserver is the httpdedupe.Observer that Telemetry.HTTP returns.
type HTTPObserver struct {
	t           *Telemetry
	store       storeOpts
	claims      [consumer.ClaimStoreError + 1]*count
	handlerOpts opts
	requests    sync.Map // requestKey → opts
}

var _ httpdedupe.Observer = (*HTTPObserver)(nil)

type requestKey struct {
	claim  httpdedupe.ClaimResult
	method string
	status int
}

// StartRequest starts the request's idempotency span.
func (h *HTTPObserver) StartRequest(ctx context.Context, r *http.Request) context.Context {
	if h.t.noTraces {
		return ctx
	}
	name, kind := "idemq.idempotency", trace.SpanKindInternal
	if !trace.SpanContextFromContext(ctx).IsValid() {
		ctx = h.t.prop.Extract(ctx, headerCarrier(r.Header))
		kind = trace.SpanKindServer
		name = r.Pattern
		if name == "" {
			name = r.Method
		}
	}
	ctx, _ = h.t.tracer.Start(ctx, name, trace.WithSpanKind(kind), trace.WithAttributes(
		semconv.HTTPRequestMethodKey.String(r.Method),
	))
	return ctx
}

var httpStoreSpanNames = [httpdedupe.StoreExtend + 1]string{"", "idemq.dedupe.claim", "idemq.dedupe.complete", "idemq.dedupe.release", "idemq.dedupe.extend"}

// StartStore starts a store call's span.
func (h *HTTPObserver) StartStore(ctx context.Context, op httpdedupe.StoreOp) context.Context {
	if int(op) >= len(httpStoreSpanNames) || !trace.SpanFromContext(ctx).IsRecording() {
		return ctx
	}
	ctx, _ = h.t.tracer.Start(ctx, httpStoreSpanNames[op], trace.WithSpanKind(trace.SpanKindClient))
	return ctx
}

// EndStore records the call's duration and ends its span.
func (h *HTTPObserver) EndStore(ctx context.Context, op httpdedupe.StoreOp, d time.Duration, err error) {
	h.t.storeDur.Record(ctx, d.Seconds(), h.store.of(int(op), err).rec...)
	endSpan(trace.SpanFromContext(ctx), err)
}

// StartHandler starts the handler's span.
func (h *HTTPObserver) StartHandler(ctx context.Context, _ *http.Request) context.Context {
	if !trace.SpanFromContext(ctx).IsRecording() {
		return ctx
	}
	ctx, _ = h.t.tracer.Start(ctx, "idemq.handler")
	return ctx
}

// EndHandler records the handler's duration and ends its span.
func (h *HTTPObserver) EndHandler(ctx context.Context, _ *http.Request, d time.Duration, status int) {
	h.t.handlerDur.Record(ctx, d.Seconds(), h.handlerOpts.rec...)
	span := trace.SpanFromContext(ctx)
	if !span.IsRecording() {
		return
	}
	if status >= 500 {
		span.SetStatus(codes.Error, http.StatusText(status))
	}
	span.End()
}

// EndRequest records the request and ends its span.
func (h *HTTPObserver) EndRequest(ctx context.Context, r *http.Request, q httpdedupe.Request) {
	k := requestKey{q.Claim, r.Method, q.Status}
	o, ok := h.requests.Load(k)
	if !ok {
		kv := []attribute.KeyValue{semconv.HTTPRequestMethodKey.String(r.Method), semconv.HTTPResponseStatusCodeKey.Int(q.Status)}
		if q.Claim != 0 {
			kv = append(kv, AttrDedupeOutcome.String(q.Claim.String()))
		}
		o, _ = h.requests.LoadOrStore(k, newOpts(kv...))
	}
	h.t.httpRequests.Add(ctx, 1, o.(opts).add...)
	if q.Claim > 0 && int(q.Claim) < len(h.claims) {
		h.claims[q.Claim].n.Add(1)
	}
	if h.t.noTraces {
		return
	}
	span := trace.SpanFromContext(ctx)
	if span.IsRecording() {
		kv := []attribute.KeyValue{semconv.HTTPResponseStatusCodeKey.Int(q.Status), attribute.Bool("idemq.replayed", q.Replayed)}
		if q.Claim != 0 {
			kv = append(kv, AttrDedupeOutcome.String(q.Claim.String()))
		}
		span.SetAttributes(kv...)
		if q.Status >= 500 {
			span.SetStatus(codes.Error, http.StatusText(q.Status))
		}
	}
	span.End()
}
