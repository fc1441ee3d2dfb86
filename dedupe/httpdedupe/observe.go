package httpdedupe

import (
	"context"
	"net/http"
	"time"

	"github.com/idemq/idemq/dedupe"
)

// Observer receives what the middleware does with each unsafe request: the
// claim's answer, every guard call and how long it took, the handler's run,
// and the answer. Metrics and traces are built on it (package idemqotel
// implements it with OpenTelemetry); tests can assert through it. Set it in
// Config.Observer. It mirrors consumer.Observer for HTTP (this package does
// not import consumer).
//
// For one request the calls come in this order, on the request's goroutine
// (StoreExtend's on the heartbeat's):
//
//	StartRequest
//	  StartStore(StoreClaim) … EndStore
//	  StartHandler … EndHandler            when the key was acquired
//	    StartStore(StoreExtend) … EndStore on each heartbeat
//	  StartStore(StoreComplete | StoreRelease) … EndStore
//	EndRequest
//
// StartRequest's context becomes the request's context for the rest (the
// handler's included), StartHandler's the handler's request context (so a
// span started there is the parent of the handler's work, such as an
// outbox write), StartStore's the guard call's; each End method receives
// the context its Start returned. An Observer must be safe for concurrent
// use. Embed NopObserver to implement only some methods. A nil
// Config.Observer costs nothing.
type Observer interface {
	// StartRequest is called first for an unsafe request.
	StartRequest(ctx context.Context, r *http.Request) context.Context
	// StartStore is called before each guard call.
	StartStore(ctx context.Context, op StoreOp) context.Context
	// EndStore is called when it returned, with its duration and error.
	EndStore(ctx context.Context, op StoreOp, d time.Duration, err error)
	// StartHandler is called before the handler runs, with the request it
	// is about to get.
	StartHandler(ctx context.Context, r *http.Request) context.Context
	// EndHandler is called when the handler returned (status 500 when it
	// panicked), with its duration and the status it answered.
	EndHandler(ctx context.Context, r *http.Request, d time.Duration, status int)
	// EndRequest is called last (also when the handler panicked, before the
	// panic goes on), with what the middleware did.
	EndRequest(ctx context.Context, r *http.Request, req Request)
}

// Request is the middleware's account of one unsafe request, given to
// Observer.EndRequest.
type Request struct {
	// Claim is what the claim answered; ClaimInvalid when the request was
	// refused before a claim (no key, an invalid key, a body too large or
	// not the JSON the fingerprint reads), 0 when it was passed through
	// unclaimed (Config.KeyOptional without a key).
	Claim ClaimResult
	// Status is the status code the client got.
	Status int
	// Replayed is true when the response was the stored one.
	Replayed bool
	// Released is true when the handler failed (5xx, 408, 425, 429, panic)
	// and the key was released for a retry.
	Released bool
	// Duration is how long the middleware took, the handler included.
	Duration time.Duration
}

// StoreOp names a guard call of the middleware (dedupe.StoreOp, shared
// with consumer's observer): StoreClaim (Guard.ClaimKey), StoreComplete,
// StoreRelease, and StoreExtend on a heartbeat.
type StoreOp = dedupe.StoreOp

// The middleware's guard calls; see dedupe.StoreOp.
const (
	StoreClaim    = dedupe.StoreClaim
	StoreComplete = dedupe.StoreComplete
	StoreRelease  = dedupe.StoreRelease
	StoreExtend   = dedupe.StoreExtend
)

// ClaimResult is what a request's claim answered (dedupe.ClaimResult,
// shared with consumer's observer): busy and conflict are answered 409,
// invalid 400 or 413, a store error 503.
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

// NopObserver implements Observer and does nothing; embed it.
type NopObserver struct{}

// StartRequest returns ctx.
func (NopObserver) StartRequest(ctx context.Context, _ *http.Request) context.Context { return ctx }

// StartStore returns ctx.
func (NopObserver) StartStore(ctx context.Context, _ StoreOp) context.Context { return ctx }

// EndStore does nothing.
func (NopObserver) EndStore(context.Context, StoreOp, time.Duration, error) {}

// StartHandler returns ctx.
func (NopObserver) StartHandler(ctx context.Context, _ *http.Request) context.Context { return ctx }

// EndHandler does nothing.
func (NopObserver) EndHandler(context.Context, *http.Request, time.Duration, int) {}

// EndRequest does nothing.
func (NopObserver) EndRequest(context.Context, *http.Request, Request) {}

// observed is the ResponseWriter of an observed request: it records the
// status and what the middleware did.
type observed struct {
	http.ResponseWriter
	status   int
	claim    ClaimResult
	replayed bool
	released bool
}

func (o *observed) WriteHeader(code int) {
	if o.status == 0 && code >= 200 {
		o.status = code
	}
	o.ResponseWriter.WriteHeader(code)
}

func (o *observed) Write(p []byte) (int, error) {
	if o.status == 0 {
		o.status = http.StatusOK
	}
	return o.ResponseWriter.Write(p)
}

// Flush implements http.Flusher when the underlying writer does.
func (o *observed) Flush() {
	if f, ok := o.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// Unwrap returns the underlying writer, for http.ResponseController.
func (o *observed) Unwrap() http.ResponseWriter { return o.ResponseWriter }

// claimed records c; o may be nil (no Observer).
func (o *observed) claimed(c ClaimResult) {
	if o != nil {
		o.claim = c
	}
}

// serveObserved is ServeHTTP with an Observer.
func (m *middleware) serveObserved(w http.ResponseWriter, r *http.Request) {
	obs := m.c.Observer
	start := time.Now()
	ctx := obs.StartRequest(r.Context(), r)
	r = r.WithContext(ctx)
	o := &observed{ResponseWriter: w}
	defer func() {
		v := recover()
		status := o.status
		if v != nil && status == 0 {
			status = http.StatusInternalServerError
		}
		if status == 0 {
			status = http.StatusOK
		}
		obs.EndRequest(ctx, r, Request{Claim: o.claim, Status: status, Replayed: o.replayed, Released: o.released, Duration: time.Since(start)})
		if v != nil {
			panic(v)
		}
	}()
	m.serve(o, r, o)
}

// startStore opens the observation of a guard call (the zero time without
// an Observer).
func (m *middleware) startStore(ctx context.Context, op StoreOp) (context.Context, time.Time) {
	if m.c.Observer == nil {
		return ctx, time.Time{}
	}
	return m.c.Observer.StartStore(ctx, op), time.Now()
}

// endStore closes what startStore opened.
func (m *middleware) endStore(ctx context.Context, op StoreOp, start time.Time, err error) {
	if m.c.Observer != nil {
		m.c.Observer.EndStore(ctx, op, time.Since(start), err)
	}
}

// startHandler returns the request to give the handler.
func (m *middleware) startHandler(r *http.Request) (*http.Request, time.Time) {
	if m.c.Observer == nil {
		return r, time.Time{}
	}
	return r.WithContext(m.c.Observer.StartHandler(r.Context(), r)), time.Now()
}

// endHandler closes what startHandler opened.
func (m *middleware) endHandler(r *http.Request, start time.Time, status int) {
	if m.c.Observer != nil {
		m.c.Observer.EndHandler(r.Context(), r, time.Since(start), status)
	}
}

// release is Guard.Release, observed.
func (m *middleware) release(ctx context.Context, t dedupe.Ticket) error {
	ctx, start := m.startStore(ctx, StoreRelease)
	err := m.g.Release(ctx, t)
	m.endStore(ctx, StoreRelease, start, err)
	return err
}
