package idemqotel_test

import (
	"context"
	"net/http"
	"testing"

	"go.opentelemetry.io/otel/attribute"

	"github.com/idemq/idemq/idemqotel"
)

// TestHTTPAndRelayMetricsExact: four requests (a payment, its retry, the
// key reused with another amount, a request without a key) and the two rows
// they cause (payments.requested by the API, payments.completed by the
// worker) are counted exactly.
func TestHTTPAndRelayMetricsExact(t *testing.T) {
	tel := newTelemetry(t)
	s := newSystem(t, tel)
	reg, err := tel.ObserveOutbox(s.db, s.ob)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Unregister() })
	ctx := context.Background()
	for _, c := range []struct {
		key, body string
		want      int
	}{
		{"p1", `{"amount":1}`, http.StatusAccepted},
		{"p1", `{"amount":1}`, http.StatusAccepted},
		{"p1", `{"amount":2}`, http.StatusConflict},
		{"", `{"amount":1}`, http.StatusBadRequest},
	} {
		if got := s.put(t, ctx, c.key, c.body); got != c.want {
			t.Fatalf("PUT %s %s: %d, want %d", c.key, c.body, got, c.want)
		}
	}
	rm := tel.metrics(t)
	if got := sum(rm, idemqotel.MetricOutboxBacklog, attribute.String("idemq.outbox.state", "pending")); got != 1 {
		t.Errorf("backlog before the relay runs: %d pending, want 1", got)
	}
	run(t, s.relay.Run)
	run(t, s.worker.Run)
	eventually(t, "both rows sent", func() bool {
		return len(tel.ended("send "+s.completed)) == 1 && sum(tel.metrics(t), idemqotel.MetricOutboxRows) == 2
	})

	rm = tel.metrics(t)
	http := attribute.String("idemq.component", "http")
	for _, c := range []struct {
		name string
		want int64
		kv   []attribute.KeyValue
	}{
		{idemqotel.MetricHTTPRequests, 1, []attribute.KeyValue{attribute.String("idemq.dedupe.outcome", "acquired"), attribute.Int("http.response.status_code", 202), attribute.String("http.request.method", "PUT")}},
		{idemqotel.MetricHTTPRequests, 1, []attribute.KeyValue{attribute.String("idemq.dedupe.outcome", "duplicate"), attribute.Int("http.response.status_code", 202)}},
		{idemqotel.MetricHTTPRequests, 1, []attribute.KeyValue{attribute.String("idemq.dedupe.outcome", "conflict"), attribute.Int("http.response.status_code", 409)}},
		{idemqotel.MetricHTTPRequests, 1, []attribute.KeyValue{attribute.String("idemq.dedupe.outcome", "invalid"), attribute.Int("http.response.status_code", 400)}},
		{idemqotel.MetricDedupeClaims, 1, []attribute.KeyValue{http, attribute.String("idemq.dedupe.outcome", "duplicate")}},
		{idemqotel.MetricDedupeClaims, 1, []attribute.KeyValue{http, attribute.String("idemq.dedupe.outcome", "conflict")}},
		{idemqotel.MetricDedupeClaims, 0, []attribute.KeyValue{http, attribute.String("idemq.dedupe.outcome", "busy")}},
		{idemqotel.MetricOutboxRows, 2, []attribute.KeyValue{attribute.String("idemq.outbox.result", "published")}},
		{idemqotel.MetricOutboxRows, 0, []attribute.KeyValue{attribute.String("idemq.outbox.result", "failed")}},
		{idemqotel.MetricOutboxClaimed, 2, nil},
		{idemqotel.MetricSentMessages, 1, []attribute.KeyValue{attribute.String("messaging.destination.name", s.requested), attribute.String("messaging.operation.name", "publish")}},
		{idemqotel.MetricSentMessages, 1, []attribute.KeyValue{attribute.String("messaging.destination.name", s.completed)}},
		{idemqotel.MetricConsumerMessages, 1, []attribute.KeyValue{attribute.String("idemq.outcome", "ack"), attribute.String("messaging.destination.name", s.requested)}},
		{idemqotel.MetricOutboxBacklog, 0, []attribute.KeyValue{attribute.String("idemq.outbox.state", "pending")}},
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
		{idemqotel.MetricStoreDuration, 3, []attribute.KeyValue{http, attribute.String("idemq.dedupe.operation", "claim")}},
		{idemqotel.MetricStoreDuration, 1, []attribute.KeyValue{http, attribute.String("idemq.dedupe.operation", "complete")}},
		{idemqotel.MetricHandlerDuration, 1, []attribute.KeyValue{http}},
		{idemqotel.MetricOutboxLag, 2, nil},
	} {
		if got := count(rm, c.name, c.kv...); got != c.want {
			t.Errorf("%s%v count = %d, want %d", c.name, c.kv, got, c.want)
		}
	}
}
