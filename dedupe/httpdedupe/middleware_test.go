package httpdedupe_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/httpdedupe"
	"github.com/idemq/idemq/dedupe/memstore"
)

var frozen = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func quietLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func newGuard() *dedupe.Guard {
	return &dedupe.Guard{
		Store:       memstore.New(memstore.Config{Now: func() time.Time { return frozen }}),
		Fingerprint: &dedupe.Fingerprinter{Exclude: []string{"timestamp"}},
		Namespace:   "api",
		Lease:       30 * time.Second,
	}
}

// paymentHandler counts its runs and answers 201 with a Location, or what
// the body's "status" asks for.
type paymentHandler struct {
	runs atomic.Int64
}

func (h *paymentHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	n := h.runs.Add(1)
	var req struct {
		Status int `json:"status"`
	}
	body, _ := io.ReadAll(r.Body)
	_ = json.Unmarshal(body, &req)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Run", "run")
	w.Header().Set("X-Custom", "kept")
	if req.Status != 0 {
		w.WriteHeader(req.Status)
		_, _ = io.WriteString(w, `{"error":"no money"}`)
		return
	}
	w.Header().Set("Location", "/payments/p-1")
	w.WriteHeader(http.StatusCreated)
	_, _ = w.Write([]byte(`{"run":` + string(rune('0'+n)) + `,"echo":`))
	_, _ = w.Write(body)
	_, _ = w.Write([]byte(`}`))
}

func do(t *testing.T, h http.Handler, method, path, key, body string) *httptest.ResponseRecorder {
	t.Helper()
	r := httptest.NewRequest(method, path, strings.NewReader(body))
	if key != "" {
		r.Header.Set("Idempotency-Key", key)
	}
	w := httptest.NewRecorder()
	h.ServeHTTP(w, r)
	return w
}

func wantProblem(t *testing.T, w *httptest.ResponseRecorder, status int) {
	t.Helper()
	if w.Code != status {
		t.Fatalf("status = %d, want %d (body %s)", w.Code, status, w.Body)
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/problem+json" {
		t.Fatalf("Content-Type = %q, want application/problem+json", ct)
	}
	var p struct {
		Title  string `json:"title"`
		Status int    `json:"status"`
	}
	if err := json.Unmarshal(w.Body.Bytes(), &p); err != nil || p.Status != status || p.Title == "" {
		t.Fatalf("problem body %s: %v", w.Body, err)
	}
}

func TestReplay(t *testing.T) {
	h := &paymentHandler{}
	mw := httpdedupe.New(newGuard(), httpdedupe.Config{Headers: []string{"x-custom"}, Logger: quietLogger()})(h)

	first := do(t, mw, "PUT", "/payment", "k1", `{"amount":100,"timestamp":1}`)
	if first.Code != 201 || first.Header().Get("Location") != "/payments/p-1" || first.Header().Get("X-Run") != "run" {
		t.Fatalf("first: %d %v %s", first.Code, first.Header(), first.Body)
	}
	if first.Header().Get(httpdedupe.ReplayedHeader) != "" {
		t.Fatal("first response marked as replayed")
	}
	// The sender retried with a new timestamp and other formatting.
	retry := do(t, mw, "PUT", "/payment", "k1", `{ "timestamp": 2, "amount": 1e2 }`)
	if retry.Code != first.Code || !bytes.Equal(retry.Body.Bytes(), first.Body.Bytes()) {
		t.Fatalf("retry: %d %s, first: %d %s", retry.Code, retry.Body, first.Code, first.Body)
	}
	for _, k := range []string{"Content-Type", "Location", "X-Custom"} {
		if retry.Header().Get(k) != first.Header().Get(k) {
			t.Errorf("replayed %s = %q, first %q", k, retry.Header().Get(k), first.Header().Get(k))
		}
	}
	if retry.Header().Get("X-Run") != "" {
		t.Error("a header not configured for storage was replayed")
	}
	if retry.Header().Get(httpdedupe.ReplayedHeader) != "true" {
		t.Errorf("%s = %q", httpdedupe.ReplayedHeader, retry.Header().Get(httpdedupe.ReplayedHeader))
	}
	if n := h.runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times", n)
	}
}

func TestConflicts(t *testing.T) {
	h := &paymentHandler{}
	mw := httpdedupe.New(newGuard(), httpdedupe.Config{Logger: quietLogger()})(h)
	do(t, mw, "PUT", "/payment", "k1", `{"amount":100}`)
	wantProblem(t, do(t, mw, "PUT", "/payment", "k1", `{"amount":999}`), http.StatusConflict)
	wantProblem(t, do(t, mw, "PUT", "/refund", "k1", `{"amount":100}`), http.StatusConflict)
	wantProblem(t, do(t, mw, "POST", "/payment", "k1", `{"amount":100}`), http.StatusConflict)
	if n := h.runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times", n)
	}
}

func TestPathConflictWithoutFingerprinter(t *testing.T) {
	g := newGuard()
	g.Fingerprint = nil
	h := &paymentHandler{}
	mw := httpdedupe.New(g, httpdedupe.Config{Logger: quietLogger()})(h)
	do(t, mw, "PUT", "/payment", "k1", `{"amount":100}`)
	if w := do(t, mw, "PUT", "/payment", "k1", `{"amount":999}`); w.Code != 201 || w.Header().Get(httpdedupe.ReplayedHeader) != "true" {
		t.Fatalf("without a fingerprinter the body is not compared: %d", w.Code)
	}
	wantProblem(t, do(t, mw, "PUT", "/refund", "k1", `{"amount":100}`), http.StatusConflict)
}

func TestInFlight(t *testing.T) {
	for _, tt := range []struct {
		lease time.Duration
		want  string
	}{{30 * time.Second, "30"}, {2500 * time.Millisecond, "3"}} {
		g := newGuard()
		g.Lease = tt.lease
		entered, release := make(chan struct{}), make(chan struct{})
		mw := httpdedupe.New(g, httpdedupe.Config{Logger: quietLogger()})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			close(entered)
			<-release
			w.WriteHeader(http.StatusAccepted)
		}))
		done := make(chan *httptest.ResponseRecorder)
		go func() { done <- do(t, mw, "PUT", "/payment", "k1", `{"amount":1}`) }()
		<-entered
		w := do(t, mw, "PUT", "/payment", "k1", `{"amount":1}`)
		wantProblem(t, w, http.StatusConflict)
		if ra := w.Header().Get("Retry-After"); ra != tt.want {
			t.Errorf("lease %v: Retry-After = %q, want %q", tt.lease, ra, tt.want)
		}
		close(release)
		if first := <-done; first.Code != http.StatusAccepted {
			t.Fatalf("first: %d", first.Code)
		}
		if w := do(t, mw, "PUT", "/payment", "k1", `{"amount":1}`); w.Code != http.StatusAccepted || w.Header().Get(httpdedupe.ReplayedHeader) != "true" {
			t.Fatalf("after completion: %d %v", w.Code, w.Header())
		}
	}
}

func TestSafeMethodsPassThrough(t *testing.T) {
	h := &paymentHandler{}
	mw := httpdedupe.New(newGuard(), httpdedupe.Config{})(h)
	for _, m := range []string{"GET", "HEAD", "OPTIONS", "TRACE"} {
		for range 2 {
			if w := do(t, mw, m, "/payment", "k1", ""); w.Header().Get(httpdedupe.ReplayedHeader) != "" || w.Code != 201 {
				t.Fatalf("%s: %d %v", m, w.Code, w.Header())
			}
		}
	}
	if n := h.runs.Load(); n != 8 {
		t.Fatalf("handler ran %d times, want 8", n)
	}
}

func TestMissingAndInvalidKey(t *testing.T) {
	h := &paymentHandler{}
	mw := httpdedupe.New(newGuard(), httpdedupe.Config{})(h)
	wantProblem(t, do(t, mw, "PUT", "/payment", "", `{"amount":1}`), http.StatusBadRequest)
	r := httptest.NewRequest("PUT", "/payment", strings.NewReader(`{}`))
	r.Header["Idempotency-Key"] = []string{"bad\x01key"}
	w := httptest.NewRecorder()
	mw.ServeHTTP(w, r)
	wantProblem(t, w, http.StatusBadRequest)
	// A body that is not JSON while the fingerprint selects fields.
	wantProblem(t, do(t, mw, "PUT", "/payment", "k1", `amount=1`), http.StatusBadRequest)
	if n := h.runs.Load(); n != 0 {
		t.Fatalf("handler ran %d times", n)
	}
}

func TestKeyOptional(t *testing.T) {
	h := &paymentHandler{}
	mw := httpdedupe.New(newGuard(), httpdedupe.Config{KeyOptional: true})(h)
	do(t, mw, "PUT", "/payment", "", `{"amount":1}`)
	do(t, mw, "PUT", "/payment", "", `{"amount":1}`)
	if n := h.runs.Load(); n != 2 {
		t.Fatalf("keyless requests without fallback: handler ran %d times, want 2", n)
	}

	g := newGuard()
	g.FallbackToFingerprint = true
	h = &paymentHandler{}
	mw = httpdedupe.New(g, httpdedupe.Config{KeyOptional: true, Logger: quietLogger()})(h)
	do(t, mw, "PUT", "/payment", "", `{"amount":1,"timestamp":1}`)
	if w := do(t, mw, "PUT", "/payment", "", `{"amount":1,"timestamp":2}`); w.Header().Get(httpdedupe.ReplayedHeader) != "true" {
		t.Fatalf("keyless retry not replayed: %d %v", w.Code, w.Header())
	}
	do(t, mw, "PUT", "/payment", "", `{"amount":2}`)
	do(t, mw, "PUT", "/refund", "", `{"amount":1}`)
	if n := h.runs.Load(); n != 3 {
		t.Fatalf("handler ran %d times, want 3", n)
	}
}

func TestBodyTooLarge(t *testing.T) {
	h := &paymentHandler{}
	mw := httpdedupe.New(newGuard(), httpdedupe.Config{MaxBodyBytes: 16})(h)
	wantProblem(t, do(t, mw, "PUT", "/payment", "k1", `{"amount":1,"pad":"xxxxxxxx"}`), http.StatusRequestEntityTooLarge)
	// The key was not claimed: a fitting body runs.
	if w := do(t, mw, "PUT", "/payment", "k1", `{"amount":1}`); w.Code != 201 {
		t.Fatalf("after 413: %d", w.Code)
	}
	if w := do(t, mw, "PUT", "/payment", "k2", `{"amount":12345}`); w.Code != 201 {
		t.Fatalf("body of exactly MaxBodyBytes: %d", w.Code)
	}
}

func TestFailuresReleaseOrStore(t *testing.T) {
	tests := []struct {
		status  int
		replays bool
	}{
		{http.StatusPaymentRequired, true},
		{http.StatusUnprocessableEntity, true},
		{http.StatusNotFound, true},
		{http.StatusInternalServerError, false},
		{http.StatusServiceUnavailable, false},
		{http.StatusTooManyRequests, false},
		{http.StatusRequestTimeout, false},
	}
	for _, tt := range tests {
		h := &paymentHandler{}
		mw := httpdedupe.New(newGuard(), httpdedupe.Config{Logger: quietLogger()})(h)
		body := `{"status":` + itoa(tt.status) + `}`
		first := do(t, mw, "PUT", "/payment", "k1", body)
		second := do(t, mw, "PUT", "/payment", "k1", body)
		if first.Code != tt.status || second.Code != tt.status {
			t.Fatalf("%d: got %d then %d", tt.status, first.Code, second.Code)
		}
		replayed := second.Header().Get(httpdedupe.ReplayedHeader) == "true"
		wantRuns := int64(2)
		if tt.replays {
			wantRuns = 1
		}
		if replayed != tt.replays || h.runs.Load() != wantRuns {
			t.Errorf("%d: replayed %v, runs %d", tt.status, replayed, h.runs.Load())
		}
		if tt.replays && second.Body.String() != first.Body.String() {
			t.Errorf("%d: replayed body %q, first %q", tt.status, second.Body, first.Body)
		}
	}
}

func itoa(n int) string {
	b, _ := json.Marshal(n)
	return string(b)
}

func TestPanicReleasesAndRepanics(t *testing.T) {
	var runs atomic.Int64
	mw := httpdedupe.New(newGuard(), httpdedupe.Config{Logger: quietLogger()})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if runs.Add(1) == 1 {
			panic("boom")
		}
		w.WriteHeader(http.StatusCreated)
	}))
	func() {
		defer func() {
			if v := recover(); v != "boom" {
				t.Fatalf("recovered %v, want the handler's panic", v)
			}
		}()
		do(t, mw, "PUT", "/payment", "k1", `{"amount":1}`)
		t.Fatal("the panic was swallowed")
	}()
	if w := do(t, mw, "PUT", "/payment", "k1", `{"amount":1}`); w.Code != http.StatusCreated || runs.Load() != 2 {
		t.Fatalf("after panic: %d, runs %d", w.Code, runs.Load())
	}
}

func TestDefaultStatusAndEmptyBody(t *testing.T) {
	var runs atomic.Int64
	mw := httpdedupe.New(newGuard(), httpdedupe.Config{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
	}))
	a := do(t, mw, "DELETE", "/payment/1", "k1", "")
	b := do(t, mw, "DELETE", "/payment/1", "k1", "")
	if a.Code != 200 || b.Code != 200 || b.Header().Get(httpdedupe.ReplayedHeader) != "true" || runs.Load() != 1 {
		t.Fatalf("%d %d %v runs %d", a.Code, b.Code, b.Header(), runs.Load())
	}
}

func TestLargeResponseTruncatedReplay(t *testing.T) {
	big := bytes.Repeat([]byte("x"), 5000)
	var runs atomic.Int64
	mw := httpdedupe.New(newGuard(), httpdedupe.Config{MaxResponseBytes: 1000, Logger: quietLogger()})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		runs.Add(1)
		w.Header().Set("Content-Type", "text/plain")
		for i := 0; i < len(big); i += 700 {
			_, _ = w.Write(big[i:min(i+700, len(big))])
		}
	}))
	first := do(t, mw, "PUT", "/report", "k1", `{}`)
	if first.Code != 200 || !bytes.Equal(first.Body.Bytes(), big) || first.Header().Get("Content-Type") != "text/plain" {
		t.Fatalf("first: %d, %d bytes", first.Code, first.Body.Len())
	}
	second := do(t, mw, "PUT", "/report", "k1", `{}`)
	if second.Code != 200 || second.Body.Len() != 0 || second.Header().Get(httpdedupe.TruncatedHeader) != "true" || runs.Load() != 1 {
		t.Fatalf("replay: %d, %d bytes, %v, runs %d", second.Code, second.Body.Len(), second.Header(), runs.Load())
	}
}

// failingStore fails every call.
type failingStore struct{}

var errDown = errors.New("store down")

func (failingStore) Claim(context.Context, string, string, time.Duration, time.Duration) (dedupe.Claim, error) {
	return dedupe.Claim{}, errDown
}
func (failingStore) Complete(context.Context, string, string, dedupe.Result, time.Duration) error {
	return errDown
}
func (failingStore) Release(context.Context, string, string) error               { return errDown }
func (failingStore) Delete(context.Context, string, string) error                { return errDown }
func (failingStore) Extend(context.Context, string, string, time.Duration) error { return errDown }

func TestStoreErrors(t *testing.T) {
	h := &paymentHandler{}
	mw := httpdedupe.New(&dedupe.Guard{Store: failingStore{}}, httpdedupe.Config{StoreRetryAfter: 1500 * time.Millisecond, Logger: quietLogger()})(h)
	w := do(t, mw, "PUT", "/payment", "k1", `{}`)
	wantProblem(t, w, http.StatusServiceUnavailable)
	if ra := w.Header().Get("Retry-After"); ra != "2" {
		t.Fatalf("Retry-After = %q", ra)
	}
	if h.runs.Load() != 0 {
		t.Fatal("handler ran without a claim")
	}
}

func TestCorruptStoredResponse(t *testing.T) {
	g := newGuard()
	mw := httpdedupe.New(g, httpdedupe.Config{Logger: quietLogger()})(&paymentHandler{})
	// Record a response under the key as something other than the
	// middleware would.
	w := do(t, mw, "PUT", "/payment", "k1", `{}`)
	if w.Code != 201 {
		t.Fatal(w.Code)
	}
	other := newGuard()
	other.Store = g.Store
	other.Fingerprint = nil
	tk, err := other.ClaimKey(context.Background(), "k2", "")
	if err != nil || tk.Status != dedupe.Acquired {
		t.Fatal(tk, err)
	}
	if err := other.Complete(context.Background(), tk, dedupe.Result{Data: []byte("garbage")}); err != nil {
		t.Fatal(err)
	}
	// Without a fingerprint on record, any fingerprint replays.
	wantProblem(t, do(t, mw, "PUT", "/payment", "k2", `{}`), http.StatusInternalServerError)
}

// countingStore counts Extend calls and signals the first.
type countingStore struct {
	dedupe.Store
	extended chan struct{}
	once     sync.Once
}

func (s *countingStore) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	s.once.Do(func() { close(s.extended) })
	return s.Store.Extend(ctx, key, token, lease)
}

func TestHeartbeatExtendsLease(t *testing.T) {
	cs := &countingStore{Store: memstore.New(memstore.Config{}), extended: make(chan struct{})}
	g := &dedupe.Guard{Store: cs, Lease: 30 * time.Millisecond}
	mw := httpdedupe.New(g, httpdedupe.Config{})(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-cs.extended:
			w.WriteHeader(http.StatusCreated)
		case <-time.After(10 * time.Second):
			w.WriteHeader(http.StatusGatewayTimeout)
		}
	}))
	if w := do(t, mw, "PUT", "/slow", "k1", `{}`); w.Code != http.StatusCreated {
		t.Fatalf("the lease was not extended while the handler ran: %d", w.Code)
	}
}

func TestConcurrentSameKey(t *testing.T) {
	h := &paymentHandler{}
	srv := httptest.NewServer(httpdedupe.New(newGuard(), httpdedupe.Config{Logger: quietLogger()})(h))
	defer srv.Close()
	const n = 16
	var wg sync.WaitGroup
	codes := make(chan int, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest("PUT", srv.URL+"/payment", strings.NewReader(`{"amount":100}`))
			req.Header.Set("Idempotency-Key", "same")
			resp, err := srv.Client().Do(req)
			if err != nil {
				t.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusConflict && resp.Header.Get("Retry-After") == "" {
				t.Error("409 without Retry-After")
			}
			codes <- resp.StatusCode
		}()
	}
	wg.Wait()
	close(codes)
	for c := range codes {
		if c != http.StatusCreated && c != http.StatusConflict {
			t.Errorf("status %d", c)
		}
	}
	if runs := h.runs.Load(); runs != 1 {
		t.Fatalf("handler ran %d times, want exactly 1", runs)
	}
	srv.Client().CloseIdleConnections()
}
