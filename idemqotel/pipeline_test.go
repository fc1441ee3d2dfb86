package idemqotel_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/idemqotel"
)

// A snooze is a retry with its own cause and its own store call.
func TestSnoozeIsARetryCause(t *testing.T) {
	tel := newTelemetry(t)
	g := &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.HeaderKey("Idempotency-Key")}
	p, err := consumer.NewPipeline(consumer.Config{Guard: g, Logger: quiet(), Observer: tel.Consumer(idemqotel.ConsumerOptions{Destination: "orders"})},
		func(ctx context.Context, m *consumer.Message) error { return consumer.Snooze(time.Minute) })
	if err != nil {
		t.Fatal(err)
	}
	out := p.Process(context.Background(), &consumer.Message{Subject: "orders.o-1", Header: map[string][]string{"Idempotency-Key": {"k"}}, Data: []byte(`{}`), Attempt: 1})
	if !out.Snoozed {
		t.Fatalf("outcome %+v, want snoozed", out)
	}
	rm := tel.metrics(t)
	if got := count(rm, idemqotel.MetricRetryDelay, attribute.String("idemq.retry.cause", "snooze"), attribute.String("messaging.destination.name", "orders")); got != 1 {
		t.Errorf("snooze retries: %d, want 1", got)
	}
	if got := count(rm, idemqotel.MetricStoreDuration, attribute.String("idemq.dedupe.operation", "snooze")); got != 1 {
		t.Errorf("snooze store calls: %d, want 1", got)
	}
	if got := sum(rm, idemqotel.MetricConsumerMessages, attribute.String("idemq.outcome", "retry"), attribute.String("messaging.destination.name", "orders")); got != 1 {
		t.Errorf("retries: %d, want 1 (Destination replaces the subject)", got)
	}
	if s := tel.ended("process orders"); len(s) != 1 || !hasAttr(s[0], attribute.String("idemq.retry.cause", "snooze")) {
		t.Errorf("process spans %v", s)
	}
	if s := tel.ended("idemq.dedupe.snooze"); len(s) != 1 {
		t.Errorf("%d snooze spans, want 1", len(s))
	}
}

// messaging.process.duration and idemq.handler.duration are recorded for a
// consumer only with ProcessDuration and HandlerDuration, each on its own;
// the counts by outcome always.
func TestDurationsOptIn(t *testing.T) {
	for _, o := range []idemqotel.ConsumerOptions{{}, {ProcessDuration: true}, {HandlerDuration: true}, {ProcessDuration: true, HandlerDuration: true}} {
		tel := newTelemetry(t)
		wantTimings := consumer.TimeStore // StoreDurationEvery's default samples
		if o.ProcessDuration {
			wantTimings |= consumer.TimeDelivery
		}
		if o.HandlerDuration {
			wantTimings |= consumer.TimeHandler
		}
		if got := tel.Consumer(o).Timings(); got != wantTimings {
			t.Errorf("%+v: timings %b, want %b", o, got, wantTimings)
		}
		p, err := consumer.NewPipeline(consumer.Config{Logger: quiet(), Observer: tel.Consumer(o)},
			func(ctx context.Context, m *consumer.Message) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		for range 3 {
			if out := p.Process(context.Background(), &consumer.Message{Subject: "orders", Data: []byte(`{}`), Attempt: 1}); out.Action != consumer.Ack {
				t.Fatalf("outcome %+v", out)
			}
		}
		rm := tel.metrics(t)
		want := func(on bool) uint64 {
			if on {
				return 3
			}
			return 0
		}
		if got := count(rm, idemqotel.MetricHandlerDuration, attribute.String("idemq.component", "consumer")); got != want(o.HandlerDuration) {
			t.Errorf("%+v: %d handler durations, want %d", o, got, want(o.HandlerDuration))
		}
		if got := count(rm, idemqotel.MetricProcessDuration, attribute.String("idemq.outcome", "ack")); got != want(o.ProcessDuration) {
			t.Errorf("%+v: %d process durations, want %d", o, got, want(o.ProcessDuration))
		}
		if got := sum(rm, idemqotel.MetricConsumerMessages, attribute.String("idemq.outcome", "ack")); got != 3 {
			t.Errorf("%+v: %d acked deliveries counted, want 3", o, got)
		}
	}
}

// idemq.dedupe.store.duration samples successful store calls (one in
// StoreDurationEvery, 16 by default), records every failed one and every
// one of a delivery whose span is sampled, records all with 1 and none,
// reading no clock, when negative.
func TestStoreDurationSampled(t *testing.T) {
	t.Run("untraced", func(t *testing.T) { testStoreDurationSampled(t, false) })
	t.Run("traced", func(t *testing.T) { testStoreDurationSampled(t, true) })
}

func testStoreDurationSampled(t *testing.T, traced bool) {
	const n = 3200 // deliveries: a claim and a completion each
	failing := errors.New("store down")
	for _, c := range []struct {
		every    int
		fail     bool
		min, max uint64 // claims recorded
	}{
		{every: 0, min: 50, max: 600},   // 200 expected; the bounds are > 10 standard deviations away
		{every: 4, min: 500, max: 1200}, // 800 expected
		{every: 1, min: n, max: n},
		{every: -1, min: 0, max: 0},
		{every: 0, fail: true, min: n, max: n},
	} {
		sampler := sdktrace.NeverSample()
		if traced {
			sampler = sdktrace.AlwaysSample()
			if c.every >= 0 {
				c.min, c.max = n, n
			}
		}
		tel := newTelemetrySampler(t, sampler)
		o := idemqotel.ConsumerOptions{StoreDurationEvery: c.every}
		obs := tel.Consumer(o)
		if got := obs.Timings()&consumer.TimeStore != 0; got != (c.every >= 0) {
			t.Errorf("every %d: store timed %v", c.every, got)
		}
		var store dedupe.Store = memstore.New(memstore.Config{})
		if c.fail {
			store = failStore{failing}
		}
		g := &dedupe.Guard{Store: store, Key: dedupe.MessageIDKey(), NoFingerprint: true}
		p, err := consumer.NewPipeline(consumer.Config{Guard: g, Logger: quiet(), HeartbeatInterval: -1, Observer: obs},
			func(ctx context.Context, m *consumer.Message) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		for i := range n {
			p.Process(context.Background(), &consumer.Message{ID: fmt.Sprint("m", i), Subject: "orders", Data: []byte(`{}`), Attempt: 1})
		}
		rm := tel.metrics(t)
		kv := []attribute.KeyValue{attribute.String("idemq.dedupe.operation", "claim")}
		if c.fail {
			kv = append(kv, attribute.String("error.type", "_OTHER"))
		}
		if got := count(rm, idemqotel.MetricStoreDuration, kv...); got < c.min || got > c.max {
			t.Errorf("every %d, failing %v: %d claims recorded, want %d..%d", c.every, c.fail, got, c.min, c.max)
		}
		// Every claim is counted, sampled or not.
		claims := sum(rm, idemqotel.MetricDedupeClaims, attribute.String("idemq.dedupe.outcome", "acquired"))
		if c.fail {
			claims = sum(rm, idemqotel.MetricDedupeClaims, attribute.String("idemq.dedupe.outcome", "store_error"))
		}
		if claims != n {
			t.Errorf("every %d, failing %v: %d claims counted, want %d", c.every, c.fail, claims, n)
		}
	}
}

// failStore is a dedupe.Store whose every call fails with err.
type failStore struct{ err error }

func (f failStore) Claim(context.Context, string, string, time.Duration, time.Duration) (dedupe.Claim, error) {
	return dedupe.Claim{}, f.err
}
func (f failStore) Complete(context.Context, string, string, dedupe.Result, time.Duration) error {
	return f.err
}
func (f failStore) Release(context.Context, string, string) error { return f.err }
func (f failStore) Extend(context.Context, string, string, time.Duration) error {
	return f.err
}
func (f failStore) Delete(context.Context, string, string) error { return f.err }

// Each dependency a transport pauses for is its own series of the paused
// gauge, back to 0 on resumption.
func TestPausedByDependency(t *testing.T) {
	tel := newTelemetry(t)
	obs := tel.Consumer(idemqotel.ConsumerOptions{Group: "worker"})
	ctx := context.Background()
	for dep := consumer.StoreUnavailable; dep <= consumer.HandlerUnavailable; dep++ {
		obs.Paused(ctx, dep, nil)
		rm := tel.metrics(t)
		if got := sum(rm, idemqotel.MetricConsumerPaused, attribute.String("idemq.dependency", dep.String())); got != 1 {
			t.Errorf("%v: paused %d, want 1", dep, got)
		}
		obs.Resumed(ctx, dep, time.Second)
		rm = tel.metrics(t)
		if got := sum(rm, idemqotel.MetricConsumerPaused, attribute.String("idemq.dependency", dep.String())); got != 0 {
			t.Errorf("%v: paused %d after resuming, want 0", dep, got)
		}
		if got := sum(rm, idemqotel.MetricConsumerPauses, attribute.String("idemq.dependency", dep.String()), attribute.String("messaging.consumer.group.name", "worker")); got != 1 {
			t.Errorf("%v: %d pauses, want 1", dep, got)
		}
	}
}

// A dead letter a transport stores outside Process (natsjs: MAX_DELIVERIES
// advisories) counts in idemq.dead_letters, and as no delivery.
func TestDeadLetteredOutsideProcess(t *testing.T) {
	tel := newTelemetry(t)
	obs := tel.Consumer(idemqotel.ConsumerOptions{Group: "worker", ProcessDuration: true})
	m := &consumer.Message{ID: "ORDERS:7", Subject: "orders.o-7", Attempt: 5, Sequence: 7}
	obs.DeadLettered(context.Background(), m, consumer.ReasonExhausted, errors.New("max deliveries"))
	obs.DeadLettered(context.Background(), m, 0, errors.New("no reason")) // not counted
	rm := tel.metrics(t)
	exhausted := []attribute.KeyValue{attribute.String("idemq.dead_letter.reason", "exhausted"),
		attribute.String("messaging.destination.name", "orders.o-7"), attribute.String("messaging.consumer.group.name", "worker")}
	if got := sum(rm, idemqotel.MetricDeadLetters, exhausted...); got != 1 {
		t.Errorf("exhausted dead letters: %d, want 1", got)
	}
	if got := sum(rm, idemqotel.MetricDeadLetters); got != 1 {
		t.Errorf("dead letters: %d, want 1", got)
	}
	if got := sum(rm, idemqotel.MetricConsumerMessages); got != 0 {
		t.Errorf("deliveries: %d, want 0", got)
	}
	if got := count(rm, idemqotel.MetricProcessDuration); got != 0 {
		t.Errorf("process durations: %d, want 0", got)
	}
}
