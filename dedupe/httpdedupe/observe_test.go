package httpdedupe_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe/httpdedupe"
)

// httpRecorder writes down the Observer's calls.
type httpRecorder struct {
	mu     sync.Mutex
	events []string
	reqs   []httpdedupe.Request
}

type obsKey string

func (r *httpRecorder) add(format string, args ...any) {
	r.mu.Lock()
	r.events = append(r.events, fmt.Sprintf(format, args...))
	r.mu.Unlock()
}

func (r *httpRecorder) StartRequest(ctx context.Context, req *http.Request) context.Context {
	r.add("start")
	return context.WithValue(ctx, obsKey("request"), true)
}

func (r *httpRecorder) StartStore(ctx context.Context, op httpdedupe.StoreOp) context.Context {
	if ctx.Value(obsKey("request")) == nil {
		r.add("store outside the request")
	}
	r.add("store:%v", op)
	return context.WithValue(ctx, obsKey("store"), true)
}

func (r *httpRecorder) EndStore(ctx context.Context, op httpdedupe.StoreOp, d time.Duration, err error) {
	if ctx.Value(obsKey("store")) == nil {
		r.add("EndStore without its context")
	}
	if err != nil {
		r.add("end:%v:err", op)
		return
	}
	r.add("end:%v", op)
}

func (r *httpRecorder) StartHandler(ctx context.Context, req *http.Request) context.Context {
	r.add("handler")
	return context.WithValue(ctx, obsKey("handler"), true)
}

func (r *httpRecorder) EndHandler(ctx context.Context, req *http.Request, d time.Duration, status int) {
	if ctx.Value(obsKey("handler")) == nil {
		r.add("EndHandler without its context")
	}
	r.add("handled:%d", status)
}

func (r *httpRecorder) EndRequest(ctx context.Context, req *http.Request, q httpdedupe.Request) {
	if ctx.Value(obsKey("request")) == nil {
		r.add("EndRequest without its context")
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf("end:%v:%d:replayed=%v:released=%v", q.Claim, q.Status, q.Replayed, q.Released))
	r.reqs = append(r.reqs, q)
}

func (r *httpRecorder) take() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := strings.Join(r.events, " ")
	r.events = nil
	return s
}

func TestObserver(t *testing.T) {
	rec := &httpRecorder{}
	var sawHandlerCtx bool
	h := &paymentHandler{}
	mw := httpdedupe.New(newGuard(), httpdedupe.Config{Logger: quietLogger(), Observer: rec})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sawHandlerCtx = r.Context().Value(obsKey("handler")) != nil
		h.ServeHTTP(w, r)
	}))
	steps := []struct {
		name, key, body, want string
	}{
		{"first", "k1", `{"amount":1}`, "start store:claim end:claim handler handled:201 store:complete end:complete end:acquired:201:replayed=false:released=false"},
		{"retry", "k1", `{"amount":1}`, "start store:claim end:claim end:duplicate:201:replayed=true:released=false"},
		{"conflict", "k1", `{"amount":2}`, "start store:claim end:claim end:conflict:409:replayed=false:released=false"},
		{"no key", "", `{"amount":1}`, "start end:invalid:400:replayed=false:released=false"},
		{"5xx releases", "k2", `{"status":503}`, "start store:claim end:claim handler handled:503 store:release end:release end:acquired:503:replayed=false:released=true"},
	}
	for _, s := range steps {
		do(t, mw, "PUT", "/payment", s.key, s.body)
		if got := rec.take(); got != s.want {
			t.Errorf("%s: observed\n  %s\nwant\n  %s", s.name, got, s.want)
		}
	}
	if !sawHandlerCtx {
		t.Error("the handler's request does not carry StartHandler's context")
	}
	if d := rec.reqs[0].Duration; d <= 0 {
		t.Errorf("duration %v", d)
	}
	// GET passes through unobserved.
	do(t, mw, "GET", "/payment", "", "")
	if got := rec.take(); got != "" {
		t.Errorf("GET observed: %q", got)
	}
}

func TestObserverStoreErrorAndPanic(t *testing.T) {
	rec := &httpRecorder{}
	g := newGuard()
	g.Store = failingStore{}
	mw := httpdedupe.New(g, httpdedupe.Config{Logger: quietLogger(), Observer: rec})(http.NotFoundHandler())
	do(t, mw, "PUT", "/payment", "k1", `{}`)
	if got, want := rec.take(), "start store:claim end:claim:err end:store_error:503:replayed=false:released=false"; got != want {
		t.Errorf("store down: %q, want %q", got, want)
	}

	mw = httpdedupe.New(newGuard(), httpdedupe.Config{Logger: quietLogger(), Observer: rec})(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		panic("boom")
	}))
	func() {
		defer func() {
			if v := recover(); v != "boom" {
				t.Fatalf("recovered %v, want the handler's panic", v)
			}
		}()
		do(t, mw, "PUT", "/payment", "k1", `{}`)
	}()
	if got, want := rec.take(), "start store:claim end:claim handler handled:500 store:release end:release end:acquired:500:replayed=false:released=true"; got != want {
		t.Errorf("panic: %q, want %q", got, want)
	}
}

func TestObserverStrings(t *testing.T) {
	for op, want := range map[httpdedupe.StoreOp]string{httpdedupe.StoreClaim: "claim", httpdedupe.StoreComplete: "complete",
		httpdedupe.StoreRelease: "release", httpdedupe.StoreExtend: "extend", 7: "StoreOp(7)"} {
		if op.String() != want {
			t.Errorf("%d: %q, want %q", op, op.String(), want)
		}
	}
	for c, want := range map[httpdedupe.ClaimResult]string{0: "", httpdedupe.ClaimAcquired: "acquired", httpdedupe.ClaimTakeover: "takeover",
		httpdedupe.ClaimDuplicate: "duplicate", httpdedupe.ClaimBusy: "busy", httpdedupe.ClaimConflict: "conflict",
		httpdedupe.ClaimInvalid: "invalid", httpdedupe.ClaimStoreError: "store_error", 9: "ClaimResult(9)"} {
		if c.String() != want {
			t.Errorf("%d: %q, want %q", c, c.String(), want)
		}
	}
}
