package httpdedupe

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"strconv"
	"time"

	"github.com/idemq/idemq/dedupe"
)

// ReplayedHeader is set to "true" on every replayed response.
const ReplayedHeader = "Idempotent-Replayed"

// TruncatedHeader is set to "true" on a replay whose body was not stored
// because it exceeded Config.MaxResponseBytes.
const TruncatedHeader = "Idempotent-Replay-Truncated"

// Defaults applied by New to zero Config fields.
const (
	// DefaultKeyHeader is Config.KeyHeader when empty.
	DefaultKeyHeader = "Idempotency-Key"
	// DefaultMaxBodyBytes is Config.MaxBodyBytes when zero: 1 MiB.
	DefaultMaxBodyBytes = 1 << 20
	// DefaultMaxResponseBytes is Config.MaxResponseBytes when zero:
	// 1 MiB less 64 KiB for the stored headers, so that the record fits the
	// 1 MiB every store accepts.
	DefaultMaxResponseBytes = 1<<20 - 64<<10
	// DefaultStoreRetryAfter is Config.StoreRetryAfter when zero: 1s.
	DefaultStoreRetryAfter = time.Second
)

// storeTimeout bounds the Complete and Release calls made after the handler
// ran; they use a context detached from the request's, so that a client
// that hung up does not keep its result from being recorded.
const storeTimeout = 10 * time.Second

// defaultStoredHeaders are always stored with a response.
var defaultStoredHeaders = []string{
	"Content-Type", "Content-Language", "Content-Location", "Location",
	"ETag", "Last-Modified", "Cache-Control", "Link", "Retry-After",
}

// Config configures the middleware. A nil Config means defaults.
type Config struct {
	// KeyHeader is the request header that carries the idempotency key.
	// Default "Idempotency-Key".
	KeyHeader string
	// KeyOptional lets unsafe requests without a key through: they are
	// deduplicated by fingerprint when the guard has FallbackToFingerprint,
	// and passed to the handler untouched otherwise. By default (false) a
	// missing key is answered 400.
	KeyOptional bool
	// MaxBodyBytes bounds the request body that is read and fingerprinted;
	// a larger body is answered 413 before the key is claimed.
	// Default 1 MiB.
	MaxBodyBytes int64
	// MaxResponseBytes bounds the response body that is buffered and
	// stored. A larger response is streamed to the first client in full but
	// stored without its body; its replays carry the stored status and
	// headers, an empty body and Idempotent-Replay-Truncated: true.
	// Default 1 MiB - 64 KiB.
	MaxResponseBytes int
	// Headers names response headers to store and replay in addition to
	// Content-Type, Content-Language, Content-Location, Location, ETag,
	// Last-Modified, Cache-Control, Link and Retry-After. Other headers
	// reach the first client only.
	Headers []string
	// StoreRetryAfter is the Retry-After sent with a 503 when the store
	// fails. Default 1s.
	StoreRetryAfter time.Duration
	// Logger receives store failures and lost leases. Default
	// slog.Default().
	Logger *slog.Logger
	// Observer receives each unsafe request's claim, store calls, handler
	// run and answer (see Observer), for metrics and traces
	// (idemqotel.Telemetry.HTTP). Nil (the default) costs nothing.
	Observer Observer
}

type config struct {
	Config
	stored []string
	keySrc dedupe.KeySource
}

// New returns middleware that makes unsafe requests idempotent with g (see
// the package documentation for the behaviour). g.Key is not used: the key
// is read from Config.KeyHeader; g.Fingerprint fingerprints the body (nil:
// only method and path are compared); g.FallbackToFingerprint, Namespace,
// Lease, Retention and MaxKeyLen apply as for any Guard.
func New(g *dedupe.Guard, cfg Config) func(http.Handler) http.Handler {
	c := config{Config: cfg}
	if c.KeyHeader == "" {
		c.KeyHeader = DefaultKeyHeader
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxResponseBytes <= 0 {
		c.MaxResponseBytes = DefaultMaxResponseBytes
	}
	if c.StoreRetryAfter <= 0 {
		c.StoreRetryAfter = DefaultStoreRetryAfter
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	c.stored = make([]string, 0, len(defaultStoredHeaders)+len(c.Headers))
	for _, h := range append(defaultStoredHeaders, c.Headers...) {
		c.stored = append(c.stored, http.CanonicalHeaderKey(h))
	}
	c.keySrc = dedupe.HeaderKey(c.KeyHeader)
	return func(next http.Handler) http.Handler {
		return &middleware{g: g, c: &c, next: next}
	}
}

type middleware struct {
	g    *dedupe.Guard
	c    *config
	next http.Handler
}

func safeMethod(m string) bool {
	switch m {
	case http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	return false
}

func (m *middleware) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if safeMethod(r.Method) {
		m.next.ServeHTTP(w, r)
		return
	}
	if m.c.Observer == nil {
		m.serve(w, r, nil)
		return
	}
	m.serveObserved(w, r)
}

// serve handles an unsafe request; o, when not nil, records what happened
// for the Observer (and is w).
func (m *middleware) serve(w http.ResponseWriter, r *http.Request, o *observed) {
	key, err := m.c.keySrc.Key(dedupe.Input{Header: r.Header})
	keyless := false
	switch {
	case errors.Is(err, dedupe.ErrMissingKey) && m.c.KeyOptional:
		if !m.g.FallbackToFingerprint {
			m.next.ServeHTTP(w, r)
			return
		}
		keyless = true
	case errors.Is(err, dedupe.ErrMissingKey):
		o.claimed(ClaimInvalid)
		problem(w, http.StatusBadRequest, "Idempotency key required",
			fmt.Sprintf("%s %s requires the %s header.", r.Method, r.URL.Path, m.c.KeyHeader), 0)
		return
	case err != nil:
		o.claimed(ClaimInvalid)
		problem(w, http.StatusBadRequest, "Invalid idempotency key", err.Error(), 0)
		return
	}

	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, m.c.MaxBodyBytes))
	if err != nil {
		o.claimed(ClaimInvalid)
		if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
			problem(w, http.StatusRequestEntityTooLarge, "Request body too large",
				fmt.Sprintf("The body exceeds %d bytes.", m.c.MaxBodyBytes), 0)
			return
		}
		problem(w, http.StatusBadRequest, "Unreadable request body", err.Error(), 0)
		return
	}
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.ContentLength = int64(len(body))

	in := dedupe.Input{Header: r.Header, Data: body}
	fp, err := requestFingerprint(m.g.Fingerprint, r, in)
	if err == nil && keyless {
		key, err = requestFingerprint(orZero(m.g.Fingerprint), r, in)
		key = "fp:" + key
	}
	if err != nil {
		o.claimed(ClaimInvalid)
		problem(w, http.StatusBadRequest, "Invalid request body", err.Error(), 0)
		return
	}

	cctx, start := m.startStore(r.Context(), StoreClaim)
	t, err := m.g.ClaimKey(cctx, key, fp)
	m.endStore(cctx, StoreClaim, start, err)
	if err != nil {
		if dedupe.IsInvalidInput(err) {
			o.claimed(ClaimInvalid)
			problem(w, http.StatusBadRequest, "Invalid idempotency key", err.Error(), 0)
			return
		}
		m.c.Logger.ErrorContext(r.Context(), "httpdedupe: claim failed", "key", key, "err", err)
		o.claimed(ClaimStoreError)
		problem(w, http.StatusServiceUnavailable, "Idempotency store unavailable",
			"The request was not processed; retry it with the same key.", m.c.StoreRetryAfter)
		return
	}
	switch t.Status {
	case dedupe.Busy:
		o.claimed(ClaimBusy)
		problem(w, http.StatusConflict, "Request in progress",
			"A request with this idempotency key is still being processed; retry later.", t.RetryAfter)
	case dedupe.Conflict:
		o.claimed(ClaimConflict)
		problem(w, http.StatusConflict, "Idempotency key reused",
			"This idempotency key was already used for a different request.", 0)
	case dedupe.Duplicate:
		o.claimed(ClaimDuplicate)
		m.replay(w, r, t, o)
	case dedupe.Acquired:
		if t.Takeover {
			o.claimed(ClaimTakeover)
		} else {
			o.claimed(ClaimAcquired)
		}
		m.run(w, r, t, o)
	default:
		m.c.Logger.ErrorContext(r.Context(), "httpdedupe: unknown claim status", "status", t.Status)
		problem(w, http.StatusInternalServerError, "Internal error", "", 0)
	}
}

func orZero(f *dedupe.Fingerprinter) *dedupe.Fingerprinter {
	if f == nil {
		return &dedupe.Fingerprinter{}
	}
	return f
}

// requestFingerprint combines the method, the path and the body's
// fingerprint (when f is not nil). An empty body is fingerprinted without
// field selection.
func requestFingerprint(f *dedupe.Fingerprinter, r *http.Request, in dedupe.Input) (string, error) {
	var bodyFP string
	if f != nil {
		if len(in.Data) == 0 && (len(f.Include) > 0 || len(f.Exclude) > 0) {
			// No body (a DELETE, a PUT without content): nothing to select
			// fields from, and nothing wrong either.
			g := *f
			g.Include, g.Exclude = nil, nil
			f = &g
		}
		var err error
		if bodyFP, err = f.Fingerprint(in); err != nil {
			return "", err
		}
	}
	h := sha256.New()
	for _, s := range []string{"idemq-http-v1", r.Method, r.URL.Path, bodyFP} {
		var n [binary.MaxVarintLen64]byte
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(s)))])
		h.Write([]byte(s))
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func (m *middleware) replay(w http.ResponseWriter, r *http.Request, t dedupe.Ticket, o *observed) {
	s, err := decode(t.Result.Data)
	if err != nil {
		m.c.Logger.ErrorContext(r.Context(), "httpdedupe: cannot replay stored response", "key", t.Key, "err", err)
		problem(w, http.StatusInternalServerError, "Stored response unreadable",
			"The request was processed, but its stored response cannot be replayed.", 0)
		return
	}
	h := w.Header()
	for k, vs := range s.header {
		h[k] = vs
	}
	h.Set(ReplayedHeader, "true")
	if o != nil {
		o.replayed = true
	}
	if s.truncated {
		h.Set(TruncatedHeader, "true")
	}
	w.WriteHeader(s.status)
	_, _ = w.Write(s.body)
}

// releases reports whether a response status means "not done, try again":
// the key is released rather than the response stored.
func releases(status int) bool {
	switch status {
	case http.StatusRequestTimeout, http.StatusTooEarly, http.StatusTooManyRequests:
		return true
	}
	return status >= 500
}

func (m *middleware) run(w http.ResponseWriter, r *http.Request, t dedupe.Ticket, o *observed) {
	bg, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), storeTimeout)
	defer cancel()
	rec := &recorder{w: w, header: make(http.Header), limit: m.c.MaxResponseBytes}
	stop := m.heartbeat(r.Context(), t)
	hr, hstart := m.startHandler(r)
	defer func() {
		if v := recover(); v != nil {
			stop()
			m.endHandler(hr, hstart, http.StatusInternalServerError)
			if o != nil {
				o.released = true
			}
			if err := m.release(bg, t); err != nil {
				m.c.Logger.ErrorContext(r.Context(), "httpdedupe: release after panic failed", "key", t.Key, "err", err)
			}
			panic(v)
		}
	}()
	m.next.ServeHTTP(rec, hr)
	stop()

	status := rec.statusOrOK()
	m.endHandler(hr, hstart, status)
	if releases(status) {
		if o != nil {
			o.released = true
		}
		if err := m.release(bg, t); err != nil {
			m.c.Logger.ErrorContext(r.Context(), "httpdedupe: release failed", "key", t.Key, "status", status, "err", err)
		}
		rec.finish()
		return
	}
	s := &stored{status: status, header: make(http.Header), truncated: rec.overflow}
	for _, k := range m.c.stored {
		if vs, ok := rec.header[k]; ok {
			s.header[k] = vs
		}
	}
	if !rec.overflow {
		s.body = rec.buf.Bytes()
	} else {
		m.c.Logger.WarnContext(r.Context(), "httpdedupe: response too large to store; replays will have no body",
			"key", t.Key, "limit", m.c.MaxResponseBytes)
	}
	res := dedupe.Result{Failed: status >= 400, Data: s.encode()}
	cctx, start := m.startStore(bg, StoreComplete)
	err := m.g.Complete(cctx, t, res)
	m.endStore(cctx, StoreComplete, start, err)
	if err != nil {
		m.c.Logger.ErrorContext(r.Context(), "httpdedupe: recording the response failed", "key", t.Key, "status", status, "err", err)
	}
	rec.finish()
}

// heartbeat extends the lease every third of it until stop is called; stop
// waits for the goroutine to end.
func (m *middleware) heartbeat(ctx context.Context, t dedupe.Ticket) (stop func()) {
	done := make(chan struct{})
	exited := make(chan struct{})
	interval := max(m.g.LeaseDuration()/3, time.Millisecond)
	go func() {
		defer close(exited)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				ectx, start := m.startStore(context.WithoutCancel(ctx), StoreExtend)
				err := m.g.Extend(ectx, t)
				m.endStore(ectx, StoreExtend, start, err)
				if err != nil {
					m.c.Logger.WarnContext(ctx, "httpdedupe: extending the lease failed", "key", t.Key, "err", err)
					if errors.Is(err, dedupe.ErrLeaseLost) {
						return
					}
				}
			}
		}
	}()
	var stopped bool
	return func() {
		if !stopped {
			stopped = true
			close(done)
			<-exited
		}
	}
}

// recorder buffers the handler's response up to limit bytes; beyond that it
// streams to the client.
type recorder struct {
	w           http.ResponseWriter
	header      http.Header
	status      int
	wroteHeader bool
	buf         bytes.Buffer
	limit       int
	overflow    bool
}

func (rec *recorder) Header() http.Header { return rec.header }

func (rec *recorder) WriteHeader(code int) {
	if rec.wroteHeader || code < 200 {
		return // 1xx informational responses are not recorded
	}
	rec.status = code
	rec.wroteHeader = true
}

func (rec *recorder) statusOrOK() int {
	if !rec.wroteHeader {
		return http.StatusOK
	}
	return rec.status
}

func (rec *recorder) Write(p []byte) (int, error) {
	if !rec.wroteHeader {
		rec.WriteHeader(http.StatusOK)
	}
	if rec.overflow {
		return rec.w.Write(p)
	}
	if rec.buf.Len()+len(p) <= rec.limit {
		return rec.buf.Write(p)
	}
	rec.overflow = true
	rec.sendHeader()
	if _, err := rec.w.Write(rec.buf.Bytes()); err != nil {
		return 0, err
	}
	rec.buf = bytes.Buffer{}
	return rec.w.Write(p)
}

// Flush implements http.Flusher: a no-op while the response is buffered.
func (rec *recorder) Flush() {
	if rec.overflow {
		if f, ok := rec.w.(http.Flusher); ok {
			f.Flush()
		}
	}
}

func (rec *recorder) sendHeader() {
	h := rec.w.Header()
	for k, vs := range rec.header {
		h[k] = vs
	}
	rec.w.WriteHeader(rec.statusOrOK())
}

// finish sends the buffered response to the client.
func (rec *recorder) finish() {
	if rec.overflow {
		return
	}
	rec.sendHeader()
	_, _ = rec.w.Write(rec.buf.Bytes())
}

type problemBody struct {
	Type   string `json:"type"`
	Title  string `json:"title"`
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
}

// problem writes an RFC 9457 problem document; retryAfter > 0 adds a
// Retry-After header in whole seconds, rounded up.
func problem(w http.ResponseWriter, status int, title, detail string, retryAfter time.Duration) {
	h := w.Header()
	h.Set("Content-Type", "application/problem+json")
	h.Set("Cache-Control", "no-store")
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.FormatInt(int64(math.Ceil(retryAfter.Seconds())), 10))
	}
	b, _ := json.Marshal(problemBody{Type: "about:blank", Title: title, Status: status, Detail: detail})
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
