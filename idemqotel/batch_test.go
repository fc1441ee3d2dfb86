package idemqotel_test

import (
	"context"
	"fmt"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/idemqotel"
)

// With tracing off the consumer's histogram measurements are buffered;
// every collection must still see each measurement made before it, also
// while workers record concurrently, and none may be counted twice.
func TestBufferedMeasurementsCollectedExactly(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	tel, err := idemqotel.New(idemqotel.Config{MeterProvider: mp, TracerProvider: tracenoop.NewTracerProvider()})
	if err != nil {
		t.Fatal(err)
	}
	g := &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.MessageIDKey(), NoFingerprint: true}
	p, err := consumer.NewPipeline(consumer.Config{Guard: g, Logger: quiet(), HeartbeatInterval: -1,
		Observer: tel.Consumer(idemqotel.ConsumerOptions{Destination: "orders", ProcessDuration: true, HandlerDuration: true, StoreDurationEvery: 1})},
		func(ctx context.Context, m *consumer.Message) error { return nil })
	if err != nil {
		t.Fatal(err)
	}
	collect := func() *metricdata.ResourceMetrics {
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(context.Background(), &rm); err != nil {
			t.Error(err)
		}
		return &rm
	}
	deliver := func(prefix string, n int) {
		for i := range n {
			m := &consumer.Message{ID: fmt.Sprintf("%s-%d", prefix, i), Subject: "orders.x", Attempt: 1, Data: []byte(`{}`)}
			if out := p.Process(context.Background(), m); out.Action != consumer.Ack {
				t.Errorf("outcome %+v", out)
				return
			}
		}
	}

	// One delivery is in the next collection, though no buffer is full.
	deliver("first", 1)
	rm := collect()
	if got := count(rm, idemqotel.MetricProcessDuration); got != 1 {
		t.Fatalf("after one delivery: %d process durations, want 1", got)
	}

	const workers, each = 8, 700 // several buffers' worth per shard
	var wg sync.WaitGroup
	stop := make(chan struct{})
	collected := make(chan struct{})
	go func() { // collections racing with the workers
		defer close(collected)
		for {
			select {
			case <-stop:
				return
			default:
				collect()
			}
		}
	}()
	for w := range workers {
		wg.Go(func() { deliver(fmt.Sprint("w", w), each) })
	}
	wg.Wait()
	close(stop)
	<-collected

	rm = collect()
	want := uint64(1 + workers*each)
	for _, c := range []struct {
		name string
		kv   []attribute.KeyValue
	}{
		{idemqotel.MetricProcessDuration, []attribute.KeyValue{attribute.String("idemq.outcome", "ack")}},
		{idemqotel.MetricHandlerDuration, nil},
		{idemqotel.MetricStoreDuration, []attribute.KeyValue{attribute.String("idemq.dedupe.operation", "claim")}},
		{idemqotel.MetricStoreDuration, []attribute.KeyValue{attribute.String("idemq.dedupe.operation", "complete")}},
	} {
		if got := count(rm, c.name, c.kv...); got != want {
			t.Errorf("%s%v: %d measurements, want %d", c.name, c.kv, got, want)
		}
	}
	if got := sum(rm, idemqotel.MetricConsumerMessages, attribute.String("idemq.outcome", "ack")); got != int64(want) {
		t.Errorf("acks %d, want %d", got, want)
	}
}
