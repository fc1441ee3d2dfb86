package natsjs_test

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/dedupe/redisstore"
	"github.com/idemq/idemq/integration/harness"
)

// BenchmarkConsume measures messages consumed and acknowledged per second:
// raw nats.go (Consume + Ack) as the baseline, then the adapter without
// dedupe, with the memory store and with the Redis store. Each run fills a
// fresh stream with b.N messages outside the timer. The integration
// benchmarks compare these in one run and print ratios.
func BenchmarkConsume(b *testing.B) {
	env := harness.NATS(b)
	for _, mode := range []string{"raw", "pipeline", "memstore", "redis"} {
		b.Run(mode, func(b *testing.B) {
			f := benchStream(b, env, mode)
			var done atomic.Int64
			n := int64(b.N)
			finished := make(chan struct{})
			count := func() {
				if done.Add(1) == n {
					close(finished)
				}
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			var guard *dedupe.Guard
			switch mode {
			case "memstore":
				guard = &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.HeaderKey("Idempotency-Key")}
			case "redis":
				rd := harness.Redis(b)
				guard = &dedupe.Guard{Store: redisstore.New(rd.Client, redisstore.Config{Prefix: rd.Prefix}), Key: dedupe.HeaderKey("Idempotency-Key")}
			}
			b.ResetTimer()
			if mode == "raw" {
				cons, err := env.JS.CreateOrUpdateConsumer(ctx, f.stream, jetstream.ConsumerConfig{Durable: f.durable, AckPolicy: jetstream.AckExplicitPolicy})
				if err != nil {
					b.Fatal(err)
				}
				cc, err := cons.Consume(func(m jetstream.Msg) { _ = m.Ack(); count() })
				if err != nil {
					b.Fatal(err)
				}
				<-finished
				cc.Stop()
				<-cc.Closed()
				return
			}
			cfg := f.config()
			cfg.DeadLetter.StreamSubjects = []string{f.dlqSubject}
			cfg.Concurrency = 64
			cfg.FetchBatch = 64
			cfg.Pipeline.Guard = guard
			c, err := natsjs.New(env.JS, cfg, func(ctx context.Context, m *consumer.Message) error { count(); return nil })
			if err != nil {
				b.Fatal(err)
			}
			errc := make(chan error, 1)
			go func() { errc <- c.Run(ctx) }()
			select {
			case <-finished:
			case err := <-errc:
				b.Fatalf("Run returned early: %v", err)
			}
			b.StopTimer()
			cancel()
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
		})
	}
}

var benchRuns atomic.Int64

// benchStream creates a fresh stream holding b.N messages with distinct
// idempotency keys (fresh for every run, as b.Run runs the function more
// than once).
func benchStream(b *testing.B, env *harness.NATSEnv, mode string) *fixture {
	b.Helper()
	run := fmt.Sprintf("%s%d", mode, benchRuns.Add(1))
	f := &fixture{env: env, stream: env.Name("B" + run), subject: env.Subject("b" + run + ".x"),
		dlqStream: env.Name("DLQB" + run), dlqSubject: env.Subject("dlqb" + run + ".x"), durable: "bench"}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: f.stream, Subjects: []string{f.subject}}); err != nil {
		b.Fatal(err)
	}
	for i := range b.N {
		m := nats.NewMsg(f.subject)
		m.Header.Set("Idempotency-Key", fmt.Sprintf("%s-%d", run, i))
		m.Data = []byte(`{"amount":100}`)
		if _, err := env.JS.PublishMsgAsync(m); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-env.JS.PublishAsyncComplete():
	case <-ctx.Done():
		b.Fatal("publish timed out")
	}
	return f
}
