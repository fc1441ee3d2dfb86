package natsjs_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/retry"
)

func headerGuard(store dedupe.Store) *dedupe.Guard {
	return &dedupe.Guard{Store: store, Key: dedupe.HeaderKey("Idempotency-Key"), Lease: 2 * time.Second}
}

func TestDuplicatesSuppressed(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newFixture(t, env)
		cfg := f.config()
		cfg.Pipeline.Guard = headerGuard(memstore.New(memstore.Config{}))
		var calls counter
		c := newConsumer(t, env, cfg, func(ctx context.Context, m *consumer.Message) error {
			calls.inc(key(m))
			m.SetResult([]byte("done " + key(m)))
			return nil
		})
		f.publish(t, "k1", `{"n":1}`, nil)
		f.publish(t, "k1", `{"n":1}`, nil) // a publisher retry
		f.publish(t, "k2", `{"n":2}`, nil)
		start(t, c)
		f.waitSettled(t)
		f.publish(t, "k1", `{"n":1}`, nil) // a late retry
		f.publish(t, "k2", `{"n":2}`, nil)
		f.waitSettled(t)
		if calls.get("k1") != 1 || calls.get("k2") != 1 {
			t.Fatalf("handler calls k1=%d k2=%d, want 1 each", calls.get("k1"), calls.get("k2"))
		}
	})
}

func TestTransientRedeliveredWithGrowingDelays(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newFixture(t, env)
		cfg := f.config()
		cfg.Pipeline.Guard = headerGuard(memstore.New(memstore.Config{}))
		cfg.Pipeline.Retry = retry.Policy{MaxAttempts: 5, Backoff: retry.Exponential{
			Initial: 150 * time.Millisecond, Multiplier: 2, Max: 10 * time.Second, Jitter: retry.JitterNone}}
		var (
			mu       sync.Mutex
			attempts []int
			at       []time.Time
		)
		c := newConsumer(t, env, cfg, func(ctx context.Context, m *consumer.Message) error {
			mu.Lock()
			defer mu.Unlock()
			attempts = append(attempts, m.Attempt)
			at = append(at, time.Now())
			if m.Attempt < 4 {
				return errors.New("dependency unavailable")
			}
			return nil
		})
		f.publish(t, "k1", `{}`, nil)
		start(t, c)
		f.waitSettled(t)
		mu.Lock()
		defer mu.Unlock()
		if fmt.Sprint(attempts) != "[1 2 3 4]" {
			t.Fatalf("attempts seen %v, want [1 2 3 4]", attempts)
		}
		// Each gap is at least the schedule's delay (150ms, 300ms, 600ms),
		// with a 10% tolerance for clock granularity; no upper bound.
		for i := 1; i < len(at); i++ {
			want := 150 * time.Millisecond << (i - 1)
			if gap := at[i].Sub(at[i-1]); gap < want*9/10 {
				t.Errorf("gap before attempt %d = %v, want at least %v", i+1, gap, want)
			}
		}
	})
}

func TestPermanentErrorDeadLetteredWithEveryHeader(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newFixture(t, env)
		cfg := f.config()
		cfg.Pipeline.Guard = headerGuard(memstore.New(memstore.Config{}))
		var calls atomic.Int32
		c := newConsumer(t, env, cfg, func(ctx context.Context, m *consumer.Message) error {
			calls.Add(1)
			return retry.Permanent(errors.New("card declined\nby issuer"))
		})
		body := `{"payment_id":"p-1","amount":100}`
		ack := f.publish(t, "k1", body, nats.Header{"X-Trace": {"abc", "def"}, "Nats-Msg-Id": {"orig-1"}})
		before := time.Now().UTC().Truncate(time.Second)
		start(t, c)
		dl := f.deadLetters(t, 1)[0]
		info := f.waitSettled(t)
		after := time.Now().UTC()

		if dl.Subject != f.dlqSubject || string(dl.Data) != body {
			t.Fatalf("dead letter on %q with body %q, want %q with %q", dl.Subject, dl.Data, f.dlqSubject, body)
		}
		want := map[string]string{
			"Idemq-Reason":            "permanent",
			"Idemq-Error":             "card declined; by issuer",
			"Idemq-Original-Subject":  f.subject,
			"Idemq-Original-Stream":   f.stream,
			"Idemq-Original-Sequence": strconv.FormatUint(ack.Sequence, 10),
			"Idemq-Consumer":          f.durable,
			"Idemq-Attempts":          "1",
			"Idemq-Host":              "test-host",
			"Nats-Msg-Id":             f.stream + ":" + strconv.FormatUint(ack.Sequence, 10),
			"Idemq-Original-Msg-Id":   "orig-1",
			"Idempotency-Key":         "k1",
		}
		for k, v := range want {
			if got := dl.Header.Get(k); got != v {
				t.Errorf("header %s = %q, want %q", k, got, v)
			}
		}
		if got := dl.Header.Values("X-Trace"); fmt.Sprint(got) != "[abc def]" {
			t.Errorf("original header X-Trace = %v, want [abc def]", got)
		}
		failedAt := dl.Header.Get("Idemq-Failed-At")
		ts, err := time.Parse(time.RFC3339, failedAt)
		if err != nil || !strings.HasSuffix(failedAt, "Z") || ts.Before(before) || ts.After(after) {
			t.Errorf("Idemq-Failed-At = %q (%v), want RFC 3339 UTC between %v and %v", failedAt, err, before, after)
		}
		if calls.Load() != 1 || info.NumRedelivered != 0 {
			t.Errorf("handler ran %d times, %d redelivered; want 1 run, terminated", calls.Load(), info.NumRedelivered)
		}
	})
}

func TestAttemptsExhaustedDeadLettered(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newFixture(t, env)
		cfg := f.config()
		var calls atomic.Int32
		c := newConsumer(t, env, cfg, func(ctx context.Context, m *consumer.Message) error {
			calls.Add(1)
			return errors.New("still down")
		})
		f.publish(t, "", `{}`, nil)
		start(t, c)
		dl := f.deadLetters(t, 1)[0]
		f.waitSettled(t)
		if r := dl.Header.Get("Idemq-Reason"); r != "exhausted" {
			t.Errorf("reason %q, want exhausted", r)
		}
		if a := dl.Header.Get("Idemq-Attempts"); a != "3" {
			t.Errorf("attempts %q, want 3", a)
		}
		if e := dl.Header.Get("Idemq-Error"); e != "still down" {
			t.Errorf("error %q, want the handler's", e)
		}
		if calls.Load() != 3 {
			t.Errorf("handler ran %d times, want 3", calls.Load())
		}
	})
}

func TestPoisonJSONDeadLetteredInvalid(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newFixture(t, env)
		cfg := f.config()
		cfg.Pipeline.Guard = &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.JSONFieldKey("payment_id"), Lease: 2 * time.Second}
		var calls atomic.Int32
		c := newConsumer(t, env, cfg, func(ctx context.Context, m *consumer.Message) error {
			calls.Add(1)
			return nil
		})
		f.publish(t, "", `{"payment_id": "p-1", "amount": `, nil)
		f.publish(t, "", `{"payment_id": "p-2", "amount": 5}`, nil)
		start(t, c)
		dl := f.deadLetters(t, 1)[0]
		f.waitSettled(t)
		if r := dl.Header.Get("Idemq-Reason"); r != "invalid" {
			t.Errorf("reason %q, want invalid", r)
		}
		if string(dl.Data) != `{"payment_id": "p-1", "amount": ` || dl.Header.Get("Idemq-Error") == "" {
			t.Errorf("dead letter %q with error %q", dl.Data, dl.Header.Get("Idemq-Error"))
		}
		if calls.Load() != 1 {
			t.Errorf("handler ran %d times, want 1 (the valid message only)", calls.Load())
		}
	})
}

func TestBusyRedeliveredAfterLease(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newFixture(t, env)
		cfg := f.config()
		g := headerGuard(memstore.New(memstore.Config{}))
		cfg.Pipeline.Guard = g
		var (
			mu      sync.Mutex
			ranAt   time.Time
			attempt int
			calls   int
			warm    bool
		)
		c := newConsumer(t, env, cfg, func(ctx context.Context, m *consumer.Message) error {
			mu.Lock()
			defer mu.Unlock()
			if key(m) == "warm-up" {
				warm = true
				return nil
			}
			calls++
			ranAt, attempt = time.Now(), m.Attempt
			return nil
		})
		// The consumer is running and has processed a message before the
		// pre-claim, so that its start-up (slow on a loaded machine) does
		// not eat into the lease and turn the Busy into a takeover.
		start(t, c)
		f.publish(t, "warm-up", `{}`, nil)
		eventually(t, "the warm-up message handled", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return warm
		})
		// Another attempt holds the key: it crashed after claiming.
		claimedAt := time.Now()
		tk, err := g.Claim(context.Background(), dedupe.Input{Header: map[string][]string{"Idempotency-Key": {"k1"}}})
		if err != nil || tk.Status != dedupe.Acquired {
			t.Fatalf("pre-claim: %v %v", tk.Status, err)
		}
		f.publish(t, "k1", `{}`, nil)
		f.waitSettled(t)
		mu.Lock()
		defer mu.Unlock()
		if calls != 1 || attempt < 2 {
			t.Fatalf("handler ran %d times at attempt %d; want once, after a Busy redelivery", calls, attempt)
		}
		if ranAt.Sub(claimedAt) < g.Lease {
			t.Fatalf("handler ran %v after the claim, before the %v lease lapsed", ranAt.Sub(claimedAt), g.Lease)
		}
	})
}

func TestPanicIsTransient(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newFixture(t, env)
		cfg := f.config()
		cfg.Pipeline.Guard = headerGuard(memstore.New(memstore.Config{}))
		var calls atomic.Int32
		c := newConsumer(t, env, cfg, func(ctx context.Context, m *consumer.Message) error {
			if calls.Add(1) == 1 {
				panic("nil map write")
			}
			return nil
		})
		f.publish(t, "k1", `{}`, nil)
		start(t, c)
		info := f.waitSettled(t)
		if calls.Load() != 2 || info.NumRedelivered != 0 {
			t.Fatalf("handler ran %d times; want 2 (panic, then success)", calls.Load())
		}
	})
}

func TestDeadLetterStreamMissingLosesNothing(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newFixture(t, env)
		cfg := f.config()
		cfg.DeadLetter.NoCreateStream = true
		var calls atomic.Int32
		c := newConsumer(t, env, cfg, func(ctx context.Context, m *consumer.Message) error {
			calls.Add(1)
			return retry.Permanent(errors.New("bad request"))
		})
		f.publish(t, "k1", `{}`, nil)
		start(t, c)
		// The dead-letter publish fails: the message is redelivered, again
		// and again, instead of being terminated.
		eventually(t, "redeliveries while the DLQ is missing", func() bool { return calls.Load() >= 3 })
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: f.dlqStream, Subjects: []string{env.Subject("dlq.>")}}); err != nil {
			t.Fatal(err)
		}
		dl := f.deadLetters(t, 1)[0]
		f.waitSettled(t)
		if r := dl.Header.Get("Idemq-Reason"); r != "permanent" {
			t.Errorf("reason %q, want permanent", r)
		}
		if n, _ := strconv.Atoi(dl.Header.Get("Idemq-Attempts")); n < 3 {
			t.Errorf("attempts %d, want at least 3", n)
		}
	})
}

func TestGracefulShutdownLosesNothing(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newFixture(t, env)
		cfg := f.config()
		cfg.Pipeline.Guard = headerGuard(memstore.New(memstore.Config{})) // shared by both runs
		const n = 20
		var done, started counter
		var running atomic.Int32
		h := func(ctx context.Context, m *consumer.Message) error {
			started.inc(key(m))
			running.Add(1)
			defer running.Add(-1)
			select {
			case <-time.After(50 * time.Millisecond):
			case <-ctx.Done():
				return ctx.Err()
			}
			done.inc(key(m))
			return nil
		}
		for i := range n {
			f.publish(t, fmt.Sprintf("k%02d", i), `{}`, nil)
		}
		stop := start(t, newConsumer(t, env, cfg, h))
		eventually(t, "a few messages processed", func() bool { return done.total() >= 5 })
		stop()
		if r := running.Load(); r != 0 {
			t.Fatalf("%d handlers still running after Run returned", r)
		}
		if done.total() == n {
			t.Fatalf("all %d messages were processed before shutdown; the test needs a partial run", n)
		}
		start(t, newConsumer(t, env, cfg, h))
		f.waitSettled(t)
		for i := range n {
			k := fmt.Sprintf("k%02d", i)
			if done.get(k) != 1 || started.get(k) != 1 {
				t.Errorf("%s: handler started %d times, completed %d; want once", k, started.get(k), done.get(k))
			}
		}
	})
}

func TestShutdownTimeoutHandsBackRunningMessages(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newFixture(t, env)
		cfg := f.config()
		cfg.ShutdownTimeout = 100 * time.Millisecond
		cfg.Pipeline.Guard = headerGuard(memstore.New(memstore.Config{}))
		var done counter
		var started atomic.Int32
		block := make(chan struct{})
		h := func(ctx context.Context, m *consumer.Message) error {
			started.Add(1)
			select {
			case <-block:
			case <-ctx.Done():
				return ctx.Err()
			}
			done.inc(key(m))
			return nil
		}
		f.publish(t, "k1", `{}`, nil)
		stop := start(t, newConsumer(t, env, cfg, h))
		eventually(t, "the handler to start", func() bool { return started.Load() == 1 })
		stop() // the handler ignores shutdown until its context is cancelled
		close(block)
		start(t, newConsumer(t, env, cfg, h))
		f.waitSettled(t)
		if done.get("k1") != 1 || started.Load() != 2 {
			t.Fatalf("started %d times, completed %d; want the interrupted message completed once by the next run",
				started.Load(), done.get("k1"))
		}
	})
}

func TestMaxDeliveriesAdvisoryDeadLetters(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newFixture(t, env)
		cfg := f.config()
		cfg.AckWait = time.Second
		cfg.MaxDeliver = 2
		cfg.Pipeline.Retry = retry.Policy{MaxAttempts: 1}
		var calls atomic.Int32
		h := func(ctx context.Context, m *consumer.Message) error { calls.Add(1); return nil }

		// A first run creates the durable consumer and the advisory capture.
		stop := start(t, newConsumer(t, env, cfg, h))
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		var raw jetstream.Consumer
		eventually(t, "the durable consumer and the advisory capture", func() bool {
			var err error
			if raw, err = env.JS.Consumer(ctx, f.stream, f.durable); err != nil {
				return false
			}
			s, err := env.JS.Stream(ctx, cfg.AdvisoryStream)
			if err != nil {
				return false
			}
			info, err := s.Info(ctx)
			return err == nil && info.State.Consumers == 1
		})
		stop()

		// Workers that take the message and die without answering, twice.
		ack := f.publish(t, "k1", `{"x":1}`, nil)
		for delivery := 1; delivery <= 2; delivery++ {
			b, err := raw.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
			if err != nil {
				t.Fatal(err)
			}
			got := 0
			for range b.Messages() {
				got++
			}
			if got != 1 {
				t.Fatalf("delivery %d: fetched %d messages (%v)", delivery, got, b.Error())
			}
		}
		// The next pull makes the server notice MaxDeliver and advise.
		b, err := raw.Fetch(1, jetstream.FetchMaxWait(2*cfg.AckWait))
		if err != nil {
			t.Fatal(err)
		}
		for m := range b.Messages() {
			t.Fatalf("delivered again past MaxDeliver: %v", m.Subject())
		}

		obs := &pauseRecorder{}
		cfg.Pipeline.Observer = obs
		start(t, newConsumer(t, env, cfg, h))
		dl := f.deadLetters(t, 1)[0]
		// The Observer counts it as a dead letter, like the pipeline's.
		eventually(t, "the advised dead letter observed", func() bool {
			obs.mu.Lock()
			defer obs.mu.Unlock()
			return len(obs.deadLetters) == 1
		})
		obs.mu.Lock()
		if d := obs.deadLetters[0]; d.reason != consumer.ReasonExhausted || !errors.Is(d.err, natsjs.ErrMaxDeliveries) || d.seq != ack.Sequence || len(obs.outcomes) != 0 {
			t.Errorf("observed %+v and %d deliveries, want one dead letter (exhausted, ErrMaxDeliveries) for sequence %d and no delivery", d, len(obs.outcomes), ack.Sequence)
		}
		obs.mu.Unlock()
		if r := dl.Header.Get("Idemq-Reason"); r != "exhausted" {
			t.Errorf("reason %q, want exhausted", r)
		}
		if a := dl.Header.Get("Idemq-Attempts"); a != "2" {
			t.Errorf("attempts %q, want 2", a)
		}
		if s := dl.Header.Get("Idemq-Original-Sequence"); s != strconv.FormatUint(ack.Sequence, 10) {
			t.Errorf("sequence %q, want %d", s, ack.Sequence)
		}
		if e := dl.Header.Get("Idemq-Error"); !strings.Contains(e, "MaxDeliver") {
			t.Errorf("error %q, want it to name MaxDeliver", e)
		}
		if string(dl.Data) != `{"x":1}` || dl.Header.Get("Idempotency-Key") != "k1" {
			t.Errorf("dead letter %q with key %q, want the original", dl.Data, dl.Header.Get("Idempotency-Key"))
		}
		if calls.Load() != 0 {
			t.Errorf("handler ran %d times, want 0", calls.Load())
		}
	})
}

func TestRunTwiceConcurrentlyFails(t *testing.T) {
	t.Parallel()
	env := harness.EmbeddedNATS(t)
	f := newFixture(t, env)
	c := newConsumer(t, env, f.config(), func(ctx context.Context, m *consumer.Message) error { return nil })
	start(t, c)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	eventually(t, "the durable consumer", func() bool {
		_, err := env.JS.Consumer(ctx, f.stream, f.durable)
		return err == nil
	})
	if err := c.Run(ctx); !errors.Is(err, natsjs.ErrRunning) {
		t.Fatalf("second Run = %v, want ErrRunning", err)
	}
}

func TestRunFailsWithoutStream(t *testing.T) {
	t.Parallel()
	env := harness.EmbeddedNATS(t)
	f := &fixture{env: env, stream: env.Name("MISSING"), durable: "w", dlqSubject: env.Subject("dlq.x"), dlqStream: env.Name("DLQ")}
	c := newConsumer(t, env, f.config(), func(ctx context.Context, m *consumer.Message) error { return nil })
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := c.Run(ctx); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Fatalf("Run = %v, want ErrStreamNotFound", err)
	}
}
