package idemqwm_test

import (
	"context"
	"errors"
	"strconv"
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

// baselineNsPerMsg is the Deduplicator variant's result in this run, set
// by its last (reported) round; the other variants report their
// throughput relative to it.
var baselineNsPerMsg float64

// BenchmarkRouter compares, on the same gochannel pub/sub and router, one
// message per op with a fresh Idempotency-Key each (no duplicates):
//
//	deduplicator    Watermill's middleware.Deduplicator, in-memory repository (the baseline)
//	idemq-memstore  idemq's middleware with the memory store
//	idemq-redis     idemq's middleware with the Redis store (IDEMQ_REDIS_URL)
//
// The idemq variants report vs_dedup: their throughput divided by the
// baseline's, measured in the same run (run the whole benchmark, not one
// variant, to get it). Run: go test -run '^$' -bench Router -benchtime 20000x ./consumer/watermill/
func BenchmarkRouter(b *testing.B) {
	b.Run("deduplicator", func(b *testing.B) {
		repo, err := middleware.NewMapExpiringKeyRepository(24 * time.Hour)
		if err != nil {
			b.Fatal(err)
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
		ns := benchRouter(b, d.Middleware)
		baselineNsPerMsg = ns
	})
	idemq := func(b *testing.B, store dedupe.Store) {
		gc := gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{})
		defer gc.Close()
		a, err := idemqwm.New(idemqwm.Config{
			Pipeline: consumer.Config{
				Guard:  &dedupe.Guard{Store: store, Key: dedupe.HeaderKey("Idempotency-Key")},
				Retry:  retry.Policy{},
				Logger: quiet(),
			},
			PoisonPublisher: gc,
			PoisonTopic:     "poison",
		})
		if err != nil {
			b.Fatal(err)
		}
		ns := benchRouter(b, a.Middleware)
		if baselineNsPerMsg > 0 {
			b.ReportMetric(baselineNsPerMsg/ns, "vs_dedup")
		}
	}
	b.Run("idemq-memstore", func(b *testing.B) { idemq(b, memstore.New(memstore.Config{})) })
	b.Run("idemq-redis", func(b *testing.B) {
		rd := harness.Redis(b)
		idemq(b, redisstore.New(rd.Client, redisstore.Config{Prefix: rd.Prefix}))
	})
}

// benchRouter runs b.N messages through a router with mw on a fresh
// GoChannel, benchWindow in flight, and returns and reports ns per message
// and messages per second.
func benchRouter(b *testing.B, mw message.HandlerMiddleware) float64 {
	b.Helper()
	gc := gochannel.NewGoChannel(gochannel.Config{OutputChannelBuffer: benchWindow}, watermill.NopLogger{})
	defer gc.Close()
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		b.Fatal(err)
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

	msgs := make([]*message.Message, b.N)
	for i := range msgs {
		m := message.NewMessage(watermill.NewUUID(), []byte(`{"amount":100}`))
		m.Metadata.Set("Idempotency-Key", "k-"+strconv.Itoa(i)+"-"+m.UUID[:8])
		msgs[i] = m
	}
	finished := make(chan struct{})
	go func() {
		for range b.N {
			<-done
		}
		close(finished)
	}()
	b.ReportAllocs()
	b.ResetTimer()
	for _, m := range msgs {
		slots <- struct{}{}
		if err := gc.Publish("bench", m); err != nil {
			b.Fatal(err)
		}
	}
	<-finished
	b.StopTimer()
	ns := float64(b.Elapsed().Nanoseconds()) / float64(b.N)
	b.ReportMetric(1e9/ns, "msgs/s")
	return ns
}
