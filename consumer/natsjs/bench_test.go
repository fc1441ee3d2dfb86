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

// benchBodyFormat is the body of every benchmark message: about 200 bytes
// of JSON, the size integration/bench uses.
const benchBodyFormat = `{"payment_id":"%s","from":"acc-%d","to":"acc-%d","amount":%d,"currency":"GBP","timestamp":%d,"reference":"invoice %08d for services rendered in the bench"}`

// BenchmarkConsume measures messages consumed and acknowledged per second:
// raw nats.go (Consume, handler then Ack) as the baseline, then the adapter
// (Concurrency 64 and FetchBatch 512, its defaults) without dedupe, with the
// memory store and with the Redis store. Each run fills a fresh stream with
// b.N messages of about 200 bytes and builds the consumer outside the
// timer. The timer runs from the start of consumption (raw: Consume; the
// adapter: Run's Ready, once its start-up checks are done and it pulls)
// until every message was handled and the server has processed every ack
// (the durable has nothing pending or unacknowledged). The integration
// benchmarks (integration/bench) compare these in one run and print ratios
// and every process's CPU.
func BenchmarkConsume(b *testing.B) {
	env := harness.NATS(b)
	for _, mode := range []string{"raw", "pipeline", "memstore", "redis"} {
		b.Run(mode, func(b *testing.B) {
			b.StopTimer()
			f := benchStream(b, env, mode, b.N)
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
			if mode == "raw" {
				cons, err := env.JS.CreateOrUpdateConsumer(ctx, f.stream, jetstream.ConsumerConfig{Durable: f.durable, AckPolicy: jetstream.AckExplicitPolicy})
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				cc, err := cons.Consume(func(m jetstream.Msg) { count(); _ = m.Ack() })
				if err != nil {
					b.Fatal(err)
				}
				<-finished
				benchAcked(b, ctx, env, f)
				b.StopTimer()
				cc.Stop()
				<-cc.Closed()
				return
			}
			var guard *dedupe.Guard
			switch mode {
			case "memstore":
				guard = &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.HeaderKey("Idempotency-Key")}
			case "redis":
				rd := harness.Redis(b)
				guard = &dedupe.Guard{Store: redisstore.New(rd.Client, redisstore.Config{Prefix: rd.Prefix}), Key: dedupe.HeaderKey("Idempotency-Key")}
			}
			cfg := f.config()
			cfg.DeadLetter.StreamSubjects = []string{f.dlqSubject}
			cfg.AckWait = 30 * time.Second
			cfg.Concurrency = 64 // FetchBatch: the default
			cfg.Pipeline.Guard = guard
			c, err := natsjs.New(env.JS, cfg, func(ctx context.Context, m *consumer.Message) error { count(); return nil })
			if err != nil {
				b.Fatal(err)
			}
			errc := make(chan error, 1)
			go func() { errc <- c.Run(ctx) }()
			select {
			case <-c.Ready():
			case err := <-errc:
				b.Fatalf("Run returned before Ready: %v", err)
			}
			b.StartTimer()
			select {
			case <-finished:
			case err := <-errc:
				b.Fatalf("Run returned early: %v", err)
			}
			benchAcked(b, ctx, env, f)
			b.StopTimer()
			cancel()
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
		})
	}
}

// benchAcked waits until the server has processed every ack of f's
// durable: nothing pending, nothing awaiting an ack, the ack floor at the
// stream's last message.
func benchAcked(b *testing.B, ctx context.Context, env *harness.NATSEnv, f *benchFixture) {
	b.Helper()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cons, err := env.JS.Consumer(ctx, f.stream, f.durable)
	if err != nil {
		b.Fatal(err)
	}
	for {
		ci, err := cons.Info(ctx)
		if err != nil {
			b.Fatalf("consumer info: %v", err)
		}
		if ci.NumPending == 0 && ci.NumAckPending == 0 && ci.AckFloor.Stream == f.lastSeq {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}

var benchRuns atomic.Int64

// benchStream creates a fresh stream holding n messages with distinct
// idempotency keys (fresh for every run, as b.Run runs the function more
// than once) and about 200-byte bodies.
func benchStream(b *testing.B, env *harness.NATSEnv, mode string, n int) *benchFixture {
	b.Helper()
	run := fmt.Sprintf("%s%d", mode, benchRuns.Add(1))
	f := &benchFixture{fixture: &fixture{env: env, stream: env.Name("B" + run), subject: env.Subject("b" + run + ".x"),
		dlqStream: env.Name("DLQB" + run), dlqSubject: env.Subject("dlqb" + run + ".x"), durable: "bench"}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: f.stream, Subjects: []string{f.subject}}); err != nil {
		b.Fatal(err)
	}
	for i := range n {
		key := fmt.Sprintf("%s-%d", run, i)
		m := nats.NewMsg(f.subject)
		m.Header.Set("Idempotency-Key", key)
		m.Data = fmt.Appendf(nil, benchBodyFormat, key, i%100, (i+1)%100, 100+i%900, 1728468810+i, i)
		if _, err := env.JS.PublishMsgAsync(m); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-env.JS.PublishAsyncComplete():
	case <-ctx.Done():
		b.Fatal("publish timed out")
	}
	s, err := env.JS.Stream(ctx, f.stream)
	if err != nil {
		b.Fatal(err)
	}
	f.lastSeq = s.CachedInfo().State.LastSeq
	return f
}

// benchFixture is a fixture with the stream's last sequence, for
// benchAcked.
type benchFixture struct {
	*fixture
	lastSeq uint64
}
