package idemqotel_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/dedupe/redisstore"
	"github.com/idemq/idemq/idemqotel"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/retry"
)

// consumerFixture is a stream, a dead-letter stream and a natsjs consumer
// with the Redis store and the OTel observer.
type consumerFixture struct {
	env              *harness.NATSEnv
	stream, dlq      string
	subject, durable string
	cfg              natsjs.Config
}

func newConsumerFixture(t *testing.T, tel *telemetry, store *redisstore.Store) *consumerFixture {
	t.Helper()
	env := harness.NATS(t)
	f := &consumerFixture{env: env, stream: env.Name("IN"), dlq: env.Name("DLQ"), subject: env.Subject("in.orders"), durable: "worker"}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: f.stream, Subjects: []string{env.Subject("in.>")}}); err != nil {
		t.Fatal(err)
	}
	f.cfg = natsjs.Config{
		Stream:           f.stream,
		Durable:          f.durable,
		Store:            store,
		Concurrency:      1,
		AckWait:          5 * time.Second,
		PullWait:         time.Second,
		ShutdownNakDelay: 50 * time.Millisecond,
		AdvisoryStream:   env.Name("ADV"),
		MaxProbeInterval: 100 * time.Millisecond,
		DeadLetter: natsjs.DeadLetterConfig{
			Subject: env.Subject("dlq.orders"), Stream: f.dlq, StreamSubjects: []string{env.Subject("dlq.>")},
		},
		Pipeline: consumer.Config{
			Logger:   quiet(),
			Retry:    retry.Policy{MaxAttempts: 3, Backoff: retry.Constant(20 * time.Millisecond)},
			Observer: tel.Consumer(idemqotel.ConsumerOptions{Group: "worker", ProcessDuration: true, HandlerDuration: true}),
		},
	}
	return f
}

var errTransient = errors.New("database busy")

// scriptedHandler answers by body: "perm" is a permanent error, "fail" a
// transient one every time, anything else succeeds.
func scriptedHandler(ctx context.Context, m *consumer.Message) error {
	switch string(m.Data) {
	case `"perm"`:
		return retry.Permanent(errors.New("card declined"))
	case `"fail"`:
		return errTransient
	}
	return nil
}

// TestConsumerMetricsExact runs a scripted set of messages through a real
// consumer (NATS, Redis) and checks every count: three deliveries of one
// payment (two duplicates), the key reused with another body (a conflict),
// a permanent error, and a message whose attempts run out.
func TestConsumerMetricsExact(t *testing.T) {
	tel := newTelemetry(t)
	rd := harness.Redis(t)
	f := newConsumerFixture(t, tel, redisstore.New(rd.Client, redisstore.Config{Prefix: rd.Prefix}))
	c, err := natsjs.New(f.env.JS, f.cfg, scriptedHandler)
	if err != nil {
		t.Fatal(err)
	}
	// The producer's span: the first delivery's process span continues it.
	producer := trace.SpanContextConfig{TraceID: trace.TraceID{1, 2, 3}, SpanID: trace.SpanID{4, 5}, TraceFlags: trace.FlagsSampled}
	for i := range 3 {
		var hdr nats.Header
		if i == 0 {
			hdr = nats.Header{"traceparent": {"00-01020300000000000000000000000000-0405000000000000-01"}}
		}
		publish(t, f.env.JS, f.subject, "k1", `"ok"`, hdr)
	}
	publish(t, f.env.JS, f.subject, "k1", `"other"`, nil)
	publish(t, f.env.JS, f.subject, "k2", `"perm"`, nil)
	publish(t, f.env.JS, f.subject, "k3", `"fail"`, nil)
	stop := run(t, c.Run)
	eventually(t, "three dead letters and every message settled", func() bool {
		return streamCount(f.env.JS, f.dlq) == 3 && settled(f.env.JS, f.stream, f.durable)
	})
	stop()

	rm := tel.metrics(t)
	dest := attribute.String("messaging.destination.name", f.subject)
	for _, c := range []struct {
		name string
		want int64
		kv   []attribute.KeyValue
	}{
		{idemqotel.MetricConsumerMessages, 3, []attribute.KeyValue{attribute.String("idemq.outcome", "ack"), dest}},
		{idemqotel.MetricConsumerMessages, 2, []attribute.KeyValue{attribute.String("idemq.outcome", "retry")}},
		{idemqotel.MetricConsumerMessages, 3, []attribute.KeyValue{attribute.String("idemq.outcome", "dead_letter")}},
		{idemqotel.MetricConsumerMessages, 8, []attribute.KeyValue{attribute.String("messaging.system", "nats"), attribute.String("messaging.consumer.group.name", "worker")}},
		{idemqotel.MetricDedupeClaims, 5, []attribute.KeyValue{attribute.String("idemq.dedupe.outcome", "acquired"), attribute.String("idemq.component", "consumer")}},
		{idemqotel.MetricDedupeClaims, 2, []attribute.KeyValue{attribute.String("idemq.dedupe.outcome", "duplicate")}},
		{idemqotel.MetricDedupeClaims, 1, []attribute.KeyValue{attribute.String("idemq.dedupe.outcome", "conflict")}},
		{idemqotel.MetricDedupeClaims, 0, []attribute.KeyValue{attribute.String("idemq.dedupe.outcome", "busy")}},
		{idemqotel.MetricDeadLetters, 1, []attribute.KeyValue{attribute.String("idemq.dead_letter.reason", "conflict")}},
		{idemqotel.MetricDeadLetters, 1, []attribute.KeyValue{attribute.String("idemq.dead_letter.reason", "permanent")}},
		{idemqotel.MetricDeadLetters, 1, []attribute.KeyValue{attribute.String("idemq.dead_letter.reason", "exhausted")}},
		{idemqotel.MetricDeadLetters, 3, nil},
	} {
		if got := sum(rm, c.name, c.kv...); got != c.want {
			t.Errorf("%s%v = %d, want %d", c.name, c.kv, got, c.want)
		}
	}
	for _, c := range []struct {
		name string
		want uint64
		kv   []attribute.KeyValue
	}{
		{idemqotel.MetricProcessDuration, 8, nil},
		{idemqotel.MetricProcessDuration, 2, []attribute.KeyValue{attribute.String("idemq.outcome", "retry")}},
		{idemqotel.MetricRetryDelay, 2, []attribute.KeyValue{attribute.String("idemq.retry.cause", "transient")}},
		{idemqotel.MetricHandlerDuration, 5, nil},
		{idemqotel.MetricStoreDuration, 8, []attribute.KeyValue{attribute.String("idemq.dedupe.operation", "claim")}},
		{idemqotel.MetricStoreDuration, 1, []attribute.KeyValue{attribute.String("idemq.dedupe.operation", "complete")}},
		{idemqotel.MetricStoreDuration, 2, []attribute.KeyValue{attribute.String("idemq.dedupe.operation", "release")}},
		{idemqotel.MetricStoreDuration, 2, []attribute.KeyValue{attribute.String("idemq.dedupe.operation", "delete")}},
	} {
		if got := count(rm, c.name, c.kv...); got != c.want {
			t.Errorf("%s%v count = %d, want %d", c.name, c.kv, got, c.want)
		}
	}

	// Spans: one process span per delivery; the first continues the
	// producer's trace; children hang under their delivery's span.
	procs := tel.ended("process " + f.subject)
	if len(procs) != 8 {
		t.Fatalf("%d process spans, want 8", len(procs))
	}
	first := procs[0]
	if first.SpanContext().TraceID() != producer.TraceID || first.Parent().SpanID() != producer.SpanID || first.SpanKind() != trace.SpanKindConsumer {
		t.Errorf("first process span: trace %v parent %v kind %v, want a consumer span under the producer's", first.SpanContext().TraceID(), first.Parent().SpanID(), first.SpanKind())
	}
	byID := map[trace.SpanID]bool{}
	outcomes := map[string]int{}
	for _, p := range procs {
		byID[p.SpanContext().SpanID()] = true
		for _, kv := range p.Attributes() {
			if kv.Key == "idemq.outcome" {
				outcomes[kv.Value.AsString()]++
			}
		}
	}
	if outcomes["ack"] != 3 || outcomes["retry"] != 2 || outcomes["dead_letter"] != 3 {
		t.Errorf("process spans by outcome %v", outcomes)
	}
	for _, name := range []string{"idemq.dedupe.claim", "idemq.handler", "idemq.dedupe.complete"} {
		spans := tel.ended(name)
		if len(spans) == 0 {
			t.Errorf("no %s span", name)
		}
		for _, s := range spans {
			if !byID[s.Parent().SpanID()] {
				t.Errorf("%s span's parent %v is not a process span", name, s.Parent().SpanID())
			}
		}
	}
}
