package idemqotel_test

import (
	"context"
	"database/sql"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/httpdedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/idemqotel"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
	"github.com/idemq/idemq/retry"
)

// system is a small payments system on real NATS and Postgres: an HTTP API
// behind the idempotency middleware writing payments.requested to the
// outbox, a relay, and a worker that handles it in the transactional inbox
// and emits payments.completed through the outbox — every part observed by
// one Telemetry.
type system struct {
	tel                       *telemetry
	env                       *harness.NATSEnv
	db                        *sql.DB
	ob                        *outbox.Outbox
	api                       http.Handler
	relay                     *outbox.Relay
	worker                    *natsjs.Consumer
	stream, dlq               string
	requested, completed, dur string
}

func newSystem(t *testing.T, tel *telemetry) *system { return newSystemDLQ(t, tel, true) }

// newSystemDLQ is newSystem; without dlq the worker does not create its
// dead-letter stream, so that a dead letter pauses it until the test creates
// the stream.
func newSystemDLQ(t *testing.T, tel *telemetry, dlq bool) *system {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	env := harness.NATS(t)
	pg := harness.Postgres(t)
	s := &system{tel: tel, env: env, db: pg.DB, stream: env.Name("PAY"), dlq: env.Name("DLQ"),
		requested: env.Subject("pay.requested"), completed: env.Subject("pay.completed"), dur: "worker"}
	if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: s.stream, Subjects: []string{env.Subject("pay.>")}, Duplicates: 5 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	store, err := sqlstore.New(ctx, pg.DB, sqlstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if s.ob, err = outbox.New(ctx, pg.DB, outbox.Config{InjectTrace: tel.InjectTrace}); err != nil {
		t.Fatal(err)
	}
	if s.relay, err = outbox.NewRelay(pg.DB, outbox.JetStream(env.JS), outbox.RelayConfig{Observer: tel.Relay(), Logger: quiet(), PollInterval: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}

	apiGuard := &dedupe.Guard{Store: store, Namespace: "api", Fingerprint: &dedupe.Fingerprinter{}}
	mux := http.NewServeMux()
	mux.Handle("PUT /payments", httpdedupe.New(apiGuard, httpdedupe.Config{Logger: quiet(), Observer: tel.HTTP()})(http.HandlerFunc(
		func(w http.ResponseWriter, r *http.Request) {
			key := r.Header.Get("Idempotency-Key")
			body := make([]byte, r.ContentLength)
			_, _ = r.Body.Read(body)
			tx, err := pg.DB.BeginTx(r.Context(), nil)
			if err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			defer func() { _ = tx.Rollback() }()
			if err := s.ob.AddTx(r.Context(), tx, outbox.Message{ID: "requested." + key, Subject: s.requested,
				Header: map[string][]string{"Idempotency-Key": {key}}, Data: body}); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			if err := tx.Commit(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			w.WriteHeader(http.StatusAccepted)
		})))
	s.api = mux

	in, err := outbox.NewInbox(pg.DB, outbox.InboxConfig{Guard: &dedupe.Guard{Store: store, Namespace: "worker", Key: dedupe.HeaderKey("Idempotency-Key"), Fingerprint: &dedupe.Fingerprinter{}}})
	if err != nil {
		t.Fatal(err)
	}
	handler := in.Handler(func(ctx context.Context, tx *sql.Tx, m *consumer.Message) error {
		if strings.Contains(string(m.Data), "declined") {
			return retry.Permanent(errTransient)
		}
		key := m.Header["Idempotency-Key"][0]
		return s.ob.AddTx(ctx, tx, outbox.Message{ID: "completed." + key, Subject: s.completed, Data: m.Data})
	})
	s.worker, err = natsjs.New(env.JS, natsjs.Config{
		Stream: s.stream, Durable: s.dur, FilterSubjects: []string{s.requested}, Concurrency: 2,
		AckWait: 5 * time.Second, PullWait: time.Second, ShutdownNakDelay: 50 * time.Millisecond, AdvisoryStream: env.Name("ADV"),
		DeadLetter:       natsjs.DeadLetterConfig{Subject: env.Subject("dlq.pay"), Stream: s.dlq, StreamSubjects: []string{env.Subject("dlq.>")}, NoCreateStream: !dlq},
		MaxProbeInterval: 100 * time.Millisecond,
		Pipeline:         consumer.Config{Logger: quiet(), Observer: tel.Consumer(idemqotel.ConsumerOptions{Group: s.dur, ProcessDuration: true})},
	}, handler)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// put sends PUT /payments with key and body, carrying the trace context of
// ctx, and returns the status.
func (s *system) put(t *testing.T, ctx context.Context, key, body string) int {
	t.Helper()
	r := httptest.NewRequestWithContext(ctx, "PUT", "/payments", strings.NewReader(body))
	r.Header.Set("Idempotency-Key", key)
	propagation.TraceContext{}.Inject(ctx, propagation.HeaderCarrier(r.Header))
	// The server side does not share the client's context.
	r = r.WithContext(context.Background())
	w := httptest.NewRecorder()
	s.api.ServeHTTP(w, r)
	return w.Code
}

// TestTraceLinksAPIRelayWorker follows one payment: the client's span, the
// API's request span and its handler, the relay's send span for
// payments.requested, the worker's process span and its handler, and the
// relay's send span for payments.completed form one trace, each the parent
// of the next.
func TestTraceLinksAPIRelayWorker(t *testing.T) {
	tel := newTelemetry(t)
	s := newSystem(t, tel)
	run(t, s.relay.Run)
	run(t, s.worker.Run)

	ctx, client := tel.tp.Tracer("client").Start(context.Background(), "client PUT", trace.WithSpanKind(trace.SpanKindClient))
	if code := s.put(t, ctx, "pay-1", `{"amount":100}`); code != http.StatusAccepted {
		t.Fatalf("PUT: %d", code)
	}
	client.End()
	eventually(t, "payments.completed published", func() bool { return len(tel.ended("send "+s.completed)) == 1 })

	one := func(name string, kind trace.SpanKind) sdktrace.ReadOnlySpan {
		t.Helper()
		var found []sdktrace.ReadOnlySpan
		for _, sp := range tel.ended(name) {
			if sp.SpanKind() == kind {
				found = append(found, sp)
			}
		}
		if len(found) != 1 {
			t.Fatalf("%d %s spans of kind %v, want 1", len(found), name, kind)
		}
		return found[0]
	}
	request := one("PUT /payments", trace.SpanKindServer)
	apiHandler := childOf(t, tel, "idemq.handler", request)
	sendRequested := one("send "+s.requested, trace.SpanKindProducer)
	process := one("process "+s.requested, trace.SpanKindConsumer)
	workerHandler := childOf(t, tel, "idemq.handler", process)
	sendCompleted := one("send "+s.completed, trace.SpanKindProducer)

	chain := []struct {
		name         string
		span, parent sdktrace.ReadOnlySpan
		parentSpanID trace.SpanID
	}{
		{"API request ← client", request, nil, client.SpanContext().SpanID()},
		{"API handler ← request", apiHandler, request, trace.SpanID{}},
		{"send requested ← API handler", sendRequested, apiHandler, trace.SpanID{}},
		{"process ← send requested", process, sendRequested, trace.SpanID{}},
		{"worker handler ← process", workerHandler, process, trace.SpanID{}},
		{"send completed ← worker handler", sendCompleted, workerHandler, trace.SpanID{}},
	}
	for _, c := range chain {
		if c.span.SpanContext().TraceID() != client.SpanContext().TraceID() {
			t.Errorf("%s: trace %v, want the client's %v", c.name, c.span.SpanContext().TraceID(), client.SpanContext().TraceID())
		}
		want := c.parentSpanID
		if c.parent != nil {
			want = c.parent.SpanContext().SpanID()
		}
		if c.span.Parent().SpanID() != want {
			t.Errorf("%s: parent %v, want %v", c.name, c.span.Parent().SpanID(), want)
		}
	}
	if !hasAttr(process, attribute.String("idemq.outcome", "ack")) || !hasAttr(request, attribute.String("idemq.dedupe.outcome", "acquired")) {
		t.Errorf("process %v / request %v attributes lack the outcome", process.Attributes(), request.Attributes())
	}
	for _, name := range []string{"idemq.dedupe.claim", "idemq.dedupe.complete"} {
		if sp := childOf(t, tel, name, request); sp.SpanKind() != trace.SpanKindClient {
			t.Errorf("%s: kind %v", name, sp.SpanKind())
		}
	}
}

// childOf returns the one span named name whose parent is parent.
func childOf(t *testing.T, tel *telemetry, name string, parent sdktrace.ReadOnlySpan) sdktrace.ReadOnlySpan {
	t.Helper()
	var found []sdktrace.ReadOnlySpan
	for _, sp := range tel.ended(name) {
		if sp.Parent().SpanID() == parent.SpanContext().SpanID() {
			found = append(found, sp)
		}
	}
	if len(found) != 1 {
		t.Fatalf("%d %s spans under %s, want 1", len(found), name, parent.Name())
	}
	return found[0]
}

func hasAttr(s sdktrace.ReadOnlySpan, kv attribute.KeyValue) bool {
	for _, a := range s.Attributes() {
		if a == kv {
			return true
		}
	}
	return false
}
