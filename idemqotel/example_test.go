package idemqotel_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/http"

	"github.com/nats-io/nats.go/jetstream"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/httpdedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/idemqotel"
	"github.com/idemq/idemq/outbox"
)

// Metrics of a pipeline: two deliveries of one key are one acquired claim
// and one duplicate.
func ExampleTelemetry_Consumer() {
	reader := sdkmetric.NewManualReader()
	tel, err := idemqotel.New(idemqotel.Config{MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))})
	if err != nil {
		panic(err)
	}
	g := &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.HeaderKey("Idempotency-Key")}
	p, err := consumer.NewPipeline(consumer.Config{Guard: g, Observer: tel.Consumer(idemqotel.ConsumerOptions{Group: "worker"})},
		func(ctx context.Context, m *consumer.Message) error { return nil })
	if err != nil {
		panic(err)
	}
	for range 2 {
		p.Process(context.Background(), &consumer.Message{Subject: "payments.requested",
			Header: map[string][]string{"Idempotency-Key": {"k1"}}, Data: []byte(`{}`), Attempt: 1})
	}
	var rm metricdata.ResourceMetrics
	_ = reader.Collect(context.Background(), &rm)
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if m.Name != idemqotel.MetricDedupeClaims {
			continue
		}
		for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
			if v, _ := dp.Attributes.Value("idemq.dedupe.outcome"); dp.Value > 0 {
				fmt.Println(v.AsString(), dp.Value)
			}
		}
	}
	// Unordered output:
	// acquired 1
	// duplicate 1
}

// Wiring every part of a service to one Telemetry: the outbox stores the
// writer's trace context, the relay continues it, the consumer and the HTTP
// middleware record their outcomes.
func ExampleNew() {
	var (
		ctx   = context.Background()
		db    *sql.DB             // the service's database
		js    jetstream.JetStream // its JetStream context
		store dedupe.Store        // its dedupe store
		mux   http.Handler        // its HTTP handlers
	)
	tel, err := idemqotel.New(idemqotel.Config{}) // the global MeterProvider and TracerProvider
	if err != nil {
		panic(err)
	}
	if db == nil {
		return // (a sketch: no database here)
	}
	ob, _ := outbox.New(ctx, db, outbox.Config{InjectTrace: tel.InjectTrace})
	relay, _ := outbox.NewRelay(db, outbox.JetStream(js), outbox.RelayConfig{Observer: tel.Relay()})
	_, _ = tel.ObserveOutbox(db, ob)
	cons, _ := natsjs.New(js, natsjs.Config{Stream: "PAYMENTS", Durable: "worker", Store: store,
		Pipeline: consumer.Config{Observer: tel.Consumer(idemqotel.ConsumerOptions{Group: "worker"})}},
		func(ctx context.Context, m *consumer.Message) error { return nil })
	api := httpdedupe.New(&dedupe.Guard{Store: store}, httpdedupe.Config{Observer: tel.HTTP()})(mux)
	go func() { _ = relay.Run(ctx) }()
	go func() { _ = cons.Run(ctx) }()
	_ = http.ListenAndServe(":8080", api)
	// Output:
}
