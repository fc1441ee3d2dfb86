package idemqwm_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/idemq/idemq/consumer"
	idemqwm "github.com/idemq/idemq/consumer/watermill"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/dedupe/redisstore"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/retry"
)

// benchWindow is how many messages are in flight at once: the publisher
// waits for a slot, the router's outermost middleware frees it.
const benchWindow = 64

// benchVariant is one middleware stack on the same router and gochannel
// pub/sub.
type benchVariant struct {
	name string
	// middleware builds the stack for one round.
	middleware func(tb testing.TB) message.HandlerMiddleware
}

// benchVariants: Watermill's Deduplicator (the baseline) and idemq's
// middleware with the memory and the Redis store. Every message has a fresh
// Idempotency-Key (no duplicates), the steady state of a consumer.
func benchVariants(tb testing.TB) []benchVariant {
	idemq := func(store func() dedupe.Store) func(testing.TB) message.HandlerMiddleware {
		return func(tb testing.TB) message.HandlerMiddleware {
			a, err := idemqwm.New(idemqwm.Config{
				Pipeline: consumer.Config{
					Guard:  &dedupe.Guard{Store: store(), Key: dedupe.HeaderKey("Idempotency-Key")},
					Retry:  retry.Policy{},
					Logger: quiet(),
				},
				PoisonPublisher: &recorder{},
				PoisonTopic:     "poison",
			})
			if err != nil {
				tb.Fatal(err)
			}
			return a.Middleware
		}
	}
	rd := harness.Redis(tb)
	return []benchVariant{
		{"deduplicator", func(tb testing.TB) message.HandlerMiddleware {
			repo, err := middleware.NewMapExpiringKeyRepository(24 * time.Hour)
			if err != nil {
				tb.Fatal(err)
			}
			d := &middleware.Deduplicator{
				KeyFactory: func(m *message.Message) (string, error) {
					if k := m.Metadata.Get("Idempotency-Key"); k != "" {
						return k, nil
					}
					return "", errors.New("no Idempotency-Key")
				},
				Repository: repo,
				Timeout:    5 * time.Second,
			}
			return d.Middleware
		}},
		{"idemq-memstore", idemq(func() dedupe.Store { return memstore.New(memstore.Config{}) })},
		{"idemq-redis", idemq(func() dedupe.Store { return redisstore.New(rd.Client, redisstore.Config{Prefix: rd.Prefix}) })},
	}
}

// BenchmarkRouter measures each variant alone: ns and allocations per
// message. Compare variants with BenchmarkRatios, which is robust to the
// machine's background load.
func BenchmarkRouter(b *testing.B) {
	for _, v := range benchVariants(b) {
		b.Run(v.name, func(b *testing.B) {
			b.ReportAllocs()
			b.StopTimer()
			d := benchRound(b, v.middleware(b), b.N, b.StartTimer, b.StopTimer)
			b.ReportMetric(float64(b.N)/d.Seconds(), "msgs/s")
		})
	}
}

// BenchmarkRatios is the measurement of record. Each iteration is one
// cycle: every variant runs benchRoundSize messages, in an order rotated
// from one cycle to the next, so that background load falls on all
// variants alike. A variant's x_dedup is its throughput divided by the
// Deduplicator's in the same cycle; the metrics are the medians over the
// cycles, and a table with their spread is printed. Run at least
// -benchtime=5x.
func BenchmarkRatios(b *testing.B) {
	b.StopTimer()
	vs := benchVariants(b)
	rates := map[string][]float64{}
	ratios := map[string][]float64{}
	var elapsed time.Duration
	for i := range b.N {
		cycle := map[string]float64{}
		for j := range vs {
			v := vs[(i+j)%len(vs)]
			d := benchRound(b, v.middleware(b), benchRoundSize, func() {}, func() {})
			elapsed += d
			cycle[v.name] = benchRoundSize / d.Seconds()
		}
		for _, v := range vs {
			rates[v.name] = append(rates[v.name], cycle[v.name])
			ratios[v.name] = append(ratios[v.name], cycle[v.name]/cycle[vs[0].name])
		}
	}
	var tbl strings.Builder
	fmt.Fprintf(&tbl, "\n%d cycles of %d messages per variant, gochannel, %d in flight\n", b.N, benchRoundSize, benchWindow)
	fmt.Fprintf(&tbl, "%-16s %22s %24s\n", "variant", "msg/s median (min..max)", "x_dedup median (min..max)")
	for _, v := range vs {
		r, x := median(rates[v.name]), median(ratios[v.name])
		b.ReportMetric(r[0], v.name+":msg/s")
		if v.name != vs[0].name {
			b.ReportMetric(x[0], v.name+":x_dedup")
		}
		fmt.Fprintf(&tbl, "%-16s %7.0f (%.0f..%.0f) %10.2f (%.2f..%.2f)\n", v.name, r[0], r[1], r[2], x[0], x[1], x[2])
	}
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(b.N*len(vs)*benchRoundSize), "ns/op")
	fmt.Print(tbl.String())
}

// benchRoundSize is the number of messages per variant per cycle.
const benchRoundSize = 20000

// median returns the median, min and max of xs.
func median(xs []float64) [3]float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return [3]float64{m, s[0], s[len(s)-1]}
}

// benchRound runs n messages through a fresh router with mw on a fresh
// GoChannel, benchWindow in flight, calling start just before the first
// publish and stop just after the last was handled, and returns the time in
// between.
func benchRound(tb testing.TB, mw message.HandlerMiddleware, n int, start, stop func()) time.Duration {
	tb.Helper()
	gc := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: benchWindow}, watermill.NopLogger{})
	defer gc.Close()
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		tb.Fatal(err)
	}
	slots := make(chan struct{}, benchWindow)
	done := make(chan struct{}, benchWindow)
	r.AddMiddleware(func(h message.HandlerFunc) message.HandlerFunc {
		return func(m *message.Message) ([]*message.Message, error) {
			out, err := h(m)
			if err == nil {
				<-slots
				done <- struct{}{}
			}
			return out, err
		}
	}, mw)
	r.AddConsumerHandler("bench", "bench", gc, func(*message.Message) error { return nil })
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- r.Run(ctx) }()
	<-r.Running()
	defer func() { cancel(); <-ran }()

	msgs := make([]*message.Message, n)
	for i := range msgs {
		m := message.NewMessage(watermill.NewUUID(), []byte(`{"amount":100}`))
		m.Metadata.Set("Idempotency-Key", "k-"+strconv.Itoa(i)+"-"+m.UUID[:8])
		msgs[i] = m
	}
	finished := make(chan struct{})
	go func() {
		for range n {
			<-done
		}
		close(finished)
	}()
	start()
	t0 := time.Now()
	for _, m := range msgs {
		slots <- struct{}{}
		if err := gc.Publish("bench", m); err != nil {
			tb.Fatal(err)
		}
	}
	<-finished
	d := time.Since(t0)
	stop()
	return d
}
