package natsjs_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/retry"
)

// runErr runs c until it returns or a short deadline passes.
func runErr(t *testing.T, c *natsjs.Consumer) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	return c.Run(ctx)
}

// wantSetupError checks that err is a setup error naming every word.
func wantSetupError(t *testing.T, err error, words ...string) {
	t.Helper()
	if !errors.Is(err, natsjs.ErrSetup) {
		t.Fatalf("Run = %v, want an error wrapping ErrSetup", err)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not name %q", err, w)
		}
	}
}

func TestStartupChecks(t *testing.T) {
	t.Parallel()
	nop := func(context.Context, *consumer.Message) error { return nil }
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		t.Run("source stream missing", func(t *testing.T) {
			f := newFixture(t, env)
			cfg := f.config()
			cfg.Stream = env.Name("NOPE")
			err := runErr(t, newConsumer(t, env, cfg, nop))
			wantSetupError(t, err, cfg.Stream, "does not exist")
			if !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Errorf("Run = %v, want it to wrap jetstream.ErrStreamNotFound too", err)
			}
		})
		t.Run("filter subject not captured", func(t *testing.T) {
			f := newFixture(t, env)
			cfg := f.config()
			cfg.FilterSubjects = []string{env.Subject("elsewhere.orders")}
			wantSetupError(t, runErr(t, newConsumer(t, env, cfg, nop)), cfg.FilterSubjects[0], f.stream, env.Subject("in.>"))
		})
		t.Run("filter subject captured through a wildcard", func(t *testing.T) {
			f := newFixture(t, env)
			cfg := f.config()
			cfg.FilterSubjects = []string{env.Subject("in.*")}
			c := newConsumer(t, env, cfg, nop)
			stop := start(t, c)
			defer stop()
			select {
			case <-c.Ready():
			case <-time.After(waitFor):
				t.Fatal("Ready not closed")
			}
		})
		t.Run("dead-letter stream does not capture the subject", func(t *testing.T) {
			f := newFixture(t, env)
			f.dlqStream = env.Name("DLQ_ELSEWHERE")
			other := env.Subject("elsewhere.>")
			if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: f.dlqStream, Subjects: []string{other}}); err != nil {
				t.Fatal(err)
			}
			cfg := f.config()
			wantSetupError(t, runErr(t, newConsumer(t, env, cfg, nop)), f.dlqStream, f.dlqSubject, other)
		})
		t.Run("dead-letter subject captured by the source stream", func(t *testing.T) {
			f := newFixture(t, env)
			cfg := f.config()
			cfg.DeadLetter.Subject = env.Subject("in.dead")
			wantSetupError(t, runErr(t, newConsumer(t, env, cfg, nop)), cfg.DeadLetter.Subject, f.stream, "consumed again")
		})
		t.Run("advisory subject captured by another stream", func(t *testing.T) {
			f := newFixture(t, env)
			cfg := f.config()
			cfg.MaxDeliver = 10
			thief := env.Name("THIEF")
			subj := natsjs.MaxDeliveriesSubject(f.stream, f.durable)
			if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: thief, Subjects: []string{subj}}); err != nil {
				t.Fatal(err)
			}
			wantSetupError(t, runErr(t, newConsumer(t, env, cfg, nop)), subj, thief)
		})
	})
}

// TestBusyDuplicatesAreCheap: 100 duplicates of a message whose handler
// takes 3s use no attempt, have one effect, and are acknowledged soon
// after the original completes (logged: their extra latency).
func TestBusyDuplicatesAreCheap(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newFixture(t, env)
		cfg := f.config()
		cfg.Concurrency = 16
		cfg.AckWait = 10 * time.Second
		g := headerGuard(memstore.New(memstore.Config{}))
		g.Lease = 10 * time.Second
		cfg.Pipeline.Guard = g
		var effects, started atomic.Int32
		var mu sync.Mutex
		var doneAt time.Time
		const handlerTime = 3 * time.Second
		h := func(ctx context.Context, m *consumer.Message) error {
			started.Add(1)
			select {
			case <-time.After(handlerTime):
			case <-ctx.Done():
				return ctx.Err()
			}
			effects.Add(1)
			mu.Lock()
			doneAt = time.Now()
			mu.Unlock()
			return nil
		}
		c := newConsumer(t, env, cfg, h)
		start(t, c)
		<-c.Ready()
		f.publish(t, "same", `{"n":1}`, nil)
		time.Sleep(200 * time.Millisecond) // the original is running
		for range 100 {
			f.publish(t, "same", `{"n":1}`, nil)
		}
		info := f.waitSettled(t)
		settled := time.Now()
		if effects.Load() != 1 || started.Load() != 1 {
			t.Fatalf("handler started %d times with %d effects, want 1 and 1", started.Load(), effects.Load())
		}
		if info.NumAckPending != 0 || info.NumPending != 0 {
			t.Fatalf("consumer not settled: %+v", info)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		if s, err := env.JS.Stream(ctx, f.dlqStream); err == nil {
			if si, _ := s.Info(ctx); si != nil && si.State.Msgs != 0 {
				t.Fatalf("%d dead letters, want none", si.State.Msgs)
			}
		}
		mu.Lock()
		t.Logf("100 duplicates acknowledged %v after the original completed (handler %v)", settled.Sub(doneAt).Round(time.Millisecond), handlerTime)
		mu.Unlock()
	})
}

func TestDeadLetterRouting(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newFixture(t, env)
		cfg := f.config()
		cfg.DeadLetter.Subject = env.Subject("dlq.{stream}.{reason}")
		cfg.Pipeline.Guard = headerGuard(memstore.New(memstore.Config{}))
		h := func(ctx context.Context, m *consumer.Message) error {
			return retry.Permanent(errors.New("no"))
		}
		c := newConsumer(t, env, cfg, h)
		start(t, c)
		<-c.Ready()
		f.publish(t, "k1", `{"a":1}`, nil)
		dl := f.deadLetters(t, 1)[0]
		want := env.Subject("dlq." + strings.ToLower(f.stream) + ".permanent")
		if dl.Subject != want {
			t.Fatalf("dead letter on %q, want %q", dl.Subject, want)
		}
	})
}

func TestDeadLetterRoutingCaptureCheck(t *testing.T) {
	t.Parallel()
	nop := func(context.Context, *consumer.Message) error { return nil }
	env := harness.EmbeddedNATS(t)
	f := newFixture(t, env)
	f.dlqStream = env.Name("DLQ_PART")
	only := env.Subject("dlq.permanent")
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: f.dlqStream, Subjects: []string{only}}); err != nil {
		t.Fatal(err)
	}
	cfg := f.config()
	cfg.DeadLetter.Subject = env.Subject("dlq.{reason}")
	cfg.DeadLetter.Stream = f.dlqStream
	wantSetupError(t, runErr(t, newConsumer(t, env, cfg, nop)), f.dlqStream, only, env.Subject("dlq.exhausted"))
}
