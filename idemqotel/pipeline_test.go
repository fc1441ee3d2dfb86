package idemqotel_test

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"

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
