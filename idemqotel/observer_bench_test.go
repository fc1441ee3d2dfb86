package idemqotel_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/idemqotel"
)

// newBenchObserver returns idemqotel's consumer observer in mode (metrics,
// traces-10pct, traces-all: see benchSampler) on the SDK, with a manual
// metric reader and a batch span processor whose exporter drops the spans.
func newBenchObserver(b *testing.B, mode string) *idemqotel.ConsumerObserver {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	cfg := idemqotel.Config{MeterProvider: mp, TracerProvider: tracenoop.NewTracerProvider()}
	if tracing(mode) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discard{}), sdktrace.WithSampler(benchSampler(mode)))
		b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		cfg.TracerProvider = tp
	}
	tel, err := idemqotel.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	return tel.Consumer(benchOptions(mode))
}

// observeOne makes the calls the pipeline makes on obs for one delivery
// that is claimed, handled and completed.
func observeOne(ctx context.Context, obs consumer.Observer, m *consumer.Message) {
	ctx = obs.StartMessage(ctx, m)
	sctx := obs.StartStore(ctx, m, consumer.StoreClaim)
	obs.EndStore(sctx, m, consumer.StoreClaim, 150*time.Microsecond, nil)
	hctx := obs.StartHandler(ctx, m)
	obs.EndHandler(hctx, m, 20*time.Microsecond, nil)
	sctx = obs.StartStore(ctx, m, consumer.StoreComplete)
	obs.EndStore(sctx, m, consumer.StoreComplete, 150*time.Microsecond, nil)
	obs.EndMessage(ctx, m, consumer.Delivery{Outcome: consumer.Outcome{Action: consumer.Ack},
		Claim: consumer.ClaimAcquired, Duration: 400 * time.Microsecond})
}

// BenchmarkObserverCalls measures idemqotel's consumer observer alone: the
// calls the pipeline makes for one acknowledged delivery (message, claim,
// handler, complete), without the pipeline, serially and from parallel
// goroutines (which share the SDK's data points). ns/op and allocs/op are
// the observer's cost per delivery.
func BenchmarkObserverCalls(b *testing.B) {
	for _, mode := range []string{"metrics", "metrics-durations", "traces-10pct", "traces-all"} {
		for _, par := range []bool{false, true} {
			name := mode
			if par {
				name += "/parallel"
			}
			b.Run(name, func(b *testing.B) {
				obs := newBenchObserver(b, mode)
				const n = 1024
				msgs := make([]*consumer.Message, n)
				for i := range msgs {
					msgs[i] = &consumer.Message{ID: fmt.Sprint("m", i), Subject: "payments.requested", Attempt: 1,
						Header: map[string][]string{"traceparent": {benchTraceparent(0, i)}}}
				}
				ctx := context.Background()
				b.ReportAllocs()
				b.ResetTimer()
				cpu0 := cpuTime()
				if !par {
					for i := range b.N {
						observeOne(ctx, obs, msgs[i%n])
					}
				} else {
					b.RunParallel(func(pb *testing.PB) {
						i := 0
						for pb.Next() {
							observeOne(ctx, obs, msgs[i%n])
							i++
						}
					})
				}
				// CPU time per delivery: unlike ns/op, not inflated when
				// other processes hold the cores.
				b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
			})
		}
	}
}
