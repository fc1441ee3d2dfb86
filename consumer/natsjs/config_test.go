package natsjs_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/retry"
)

func nop(ctx context.Context, m *consumer.Message) error { return nil }

func validConfig() natsjs.Config {
	return natsjs.Config{Stream: "S", Durable: "d", DeadLetter: natsjs.DeadLetterConfig{Subject: "dlq.s"}}
}

func TestNewValidates(t *testing.T) {
	env := harness.EmbeddedNATS(t)
	g := func(lease, retention time.Duration) *dedupe.Guard {
		return &dedupe.Guard{Store: memstore.New(memstore.Config{}), Lease: lease, Retention: retention}
	}
	tests := []struct {
		name   string
		mutate func(c *natsjs.Config)
		want   []string // substrings of the error; nil: valid
	}{
		{"valid", func(c *natsjs.Config) {}, nil},
		{"no stream", func(c *natsjs.Config) { c.Stream = "" }, []string{"Stream"}},
		{"no durable", func(c *natsjs.Config) { c.Durable = "" }, []string{"Durable"}},
		{"bad durable", func(c *natsjs.Config) { c.Durable = "a.b" }, []string{"Durable"}},
		{"store and guard", func(c *natsjs.Config) {
			c.Store = memstore.New(memstore.Config{})
			c.Pipeline.Guard = &dedupe.Guard{Store: c.Store}
		}, []string{"Store", "Pipeline.Guard"}},
		{"max deliver equal to attempts", func(c *natsjs.Config) {
			c.MaxDeliver = 5
		}, []string{"MaxDeliver 5", "5 attempts", "at least 6"}},
		{"max deliver above attempts", func(c *natsjs.Config) { c.MaxDeliver = 6 }, nil},
		{"max deliver unlimited", func(c *natsjs.Config) { c.MaxDeliver = -1 }, nil},
		{"max deliver below -1", func(c *natsjs.Config) { c.MaxDeliver = -2 }, []string{"MaxDeliver -2"}},
		{"heartbeat not below ack wait", func(c *natsjs.Config) {
			c.AckWait, c.HeartbeatInterval = time.Second, time.Second
		}, []string{"HeartbeatInterval 1s", "AckWait 1s"}},
		{"ack wait above lease", func(c *natsjs.Config) {
			c.AckWait = time.Minute
			c.Pipeline.Guard = g(30*time.Second, 0)
		}, []string{"AckWait 1m0s", "lease 30s"}},
		{"retention below horizon", func(c *natsjs.Config) {
			c.AckWait = 10 * time.Second
			c.Pipeline.Retry = retry.Policy{MaxAttempts: 3, Backoff: retry.Constant(time.Minute)}
			c.Pipeline.Guard = g(10*time.Second, time.Minute)
		}, []string{"retention 1m0s", "horizon 2m30s"}},
		{"replay window counts", func(c *natsjs.Config) {
			c.ReplayWindow = 48 * time.Hour
			c.Pipeline.Guard = g(0, 0)
		}, []string{"retention 24h0m0s", "replay window 48h0m0s"}},
		{"pipeline invalid", func(c *natsjs.Config) { c.Pipeline.Guard = &dedupe.Guard{} }, []string{"Guard.Store"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := validConfig()
			tc.mutate(&cfg)
			c, err := natsjs.New(env.JS, cfg, nop)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("New: %v", err)
				}
				return
			}
			if !errors.Is(err, natsjs.ErrInvalidConfig) {
				t.Fatalf("New = %v, %v; want ErrInvalidConfig", c, err)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
	if _, err := natsjs.New(nil, validConfig(), nop); !errors.Is(err, natsjs.ErrInvalidConfig) {
		t.Errorf("nil JetStream: %v", err)
	}
	if _, err := natsjs.New(env.JS, validConfig(), nil); !errors.Is(err, natsjs.ErrInvalidConfig) {
		t.Errorf("nil handler: %v", err)
	}
}

func TestDefaults(t *testing.T) {
	env := harness.EmbeddedNATS(t)
	c, err := natsjs.New(env.JS, validConfig(), nop)
	if err != nil {
		t.Fatal(err)
	}
	got := c.Config()
	if got.AckWait != natsjs.DefaultAckWait || got.HeartbeatInterval != natsjs.DefaultAckWait/2 ||
		got.MaxDeliver != -1 || got.MaxProbeInterval != natsjs.DefaultMaxProbeInterval || got.Concurrency <= 0 ||
		got.Concurrency != natsjs.DefaultConcurrency || got.FetchBatch != natsjs.MaxDefaultFetchBatch ||
		got.PullWait != natsjs.DefaultPullWait || got.DeadLetter.Stream != "DLQ" ||
		len(got.DeadLetter.StreamSubjects) != 1 || got.DeadLetter.StreamSubjects[0] != "dlq.>" ||
		got.AdvisoryStream != natsjs.DefaultAdvisoryStream || got.Pipeline.HeartbeatInterval != got.HeartbeatInterval {
		t.Fatalf("defaults not applied: %+v", got)
	}

	cfg := validConfig()
	cfg.PullWait = 200 * time.Millisecond
	cfg.Concurrency = 3
	if c, err = natsjs.New(env.JS, cfg, nop); err != nil {
		t.Fatal(err)
	}
	if got := c.Config(); got.PullWait != natsjs.MinPullWait || got.FetchBatch != 3*natsjs.DefaultFetchBatchFactor {
		t.Fatalf("PullWait %v FetchBatch %d, want PullWait raised to %v and FetchBatch = %d × Concurrency 3", got.PullWait, got.FetchBatch, natsjs.MinPullWait, natsjs.DefaultFetchBatchFactor)
	}
	// Past the cap the default stays at MaxDefaultFetchBatch, and never
	// falls below Concurrency.
	for conc, want := range map[int]int{natsjs.MaxDefaultFetchBatch / 4: natsjs.MaxDefaultFetchBatch, 2 * natsjs.MaxDefaultFetchBatch: 2 * natsjs.MaxDefaultFetchBatch} {
		cfg := validConfig()
		cfg.Concurrency = conc
		if c, err = natsjs.New(env.JS, cfg, nop); err != nil {
			t.Fatal(err)
		}
		if got := c.Config().FetchBatch; got != want {
			t.Errorf("Concurrency %d: FetchBatch %d, want %d", conc, got, want)
		}
	}
}

func TestHorizon(t *testing.T) {
	cfg := natsjs.Config{
		AckWait:      10 * time.Second,
		ReplayWindow: time.Hour,
		Pipeline: consumer.Config{
			Retry:       retry.Policy{MaxAttempts: 3, Backoff: retry.Constant(time.Minute)},
			Budget:      retry.NewBudget(0.1, 10),
			BudgetDelay: 5 * time.Minute,
		},
	}
	// backoff 2×1m + AckWait 3×10s + replay 1h + budget 2×5m
	if got, want := natsjs.Horizon(cfg), 2*time.Minute+30*time.Second+time.Hour+10*time.Minute; got != want {
		t.Fatalf("Horizon = %v, want %v", got, want)
	}
	cfg.ReplayWindow = 1 << 62
	cfg.AckWait = 1 << 62
	if got := natsjs.Horizon(cfg); got <= 0 {
		t.Fatalf("Horizon overflowed: %v", got)
	}
}

func TestSeveralFilterSubjects(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newFixture(t, env)
		cfg := f.config()
		cfg.FilterSubjects = []string{env.Subject("in.a"), env.Subject("in.b")}
		var calls counter
		c := newConsumer(t, env, cfg, func(ctx context.Context, m *consumer.Message) error { calls.inc(m.Subject); return nil })
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		if v := env.Conn.ConnectedServerVersion(); strings.HasPrefix(v, "2.9.") {
			if err := c.Run(ctx); !errors.Is(err, natsjs.ErrServerTooOld) || !strings.Contains(err.Error(), v) {
				t.Fatalf("Run on %s = %v, want ErrServerTooOld naming the version", v, err)
			}
			return
		}
		for _, s := range []string{"in.a", "in.b", "in.c"} {
			if _, err := env.JS.Publish(ctx, env.Subject(s), []byte("x")); err != nil {
				t.Fatal(err)
			}
		}
		start(t, c)
		eventually(t, "filtered messages", func() bool { return calls.total() == 2 })
		if calls.get(env.Subject("in.a")) != 1 || calls.get(env.Subject("in.b")) != 1 {
			t.Fatalf("calls %v", calls.m)
		}
	})
}

func TestDoubleAck(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newFixture(t, env)
		cfg := f.config()
		cfg.DoubleAck = true
		cfg.FilterSubjects = []string{f.subject}
		var calls counter
		c := newConsumer(t, env, cfg, func(ctx context.Context, m *consumer.Message) error { calls.inc(key(m)); return nil })
		for _, k := range []string{"a", "b", "c"} {
			f.publish(t, k, "{}", nil)
		}
		start(t, c)
		f.waitSettled(t)
		if calls.total() != 3 {
			t.Fatalf("handled %d messages, want 3", calls.total())
		}
	})
}

func TestDefaultDeadLetterAndGuard(t *testing.T) {
	env := harness.EmbeddedNATS(t)
	cfg := validConfig()
	cfg.Stream = "ORDERS"
	cfg.DeadLetter = natsjs.DeadLetterConfig{}
	cfg.Store = memstore.New(memstore.Config{})
	c, err := natsjs.New(env.JS, cfg, nop)
	if err != nil {
		t.Fatal(err)
	}
	got := c.Config()
	if dl := got.DeadLetter; dl.Subject != "dlq.orders" || dl.Stream != "DLQ" || dl.NoCreateStream || len(dl.StreamSubjects) != 1 || dl.StreamSubjects[0] != "dlq.>" {
		t.Errorf("default dead letters: %+v", dl)
	}
	g := got.Pipeline.Guard
	if g == nil || g.Store != cfg.Store || g.Namespace != cfg.Durable || g.NoFingerprint {
		t.Fatalf("default guard: %+v", g)
	}
	tk, err := g.Claim(context.Background(), dedupe.Input{MessageID: "ORDERS:7", Data: []byte(`{}`)})
	if err != nil || tk.Key != cfg.Durable+":ORDERS:7" || tk.Fingerprint == "" {
		t.Fatalf("claim without Idempotency-Key: %+v, %v; want the message id as key, a fingerprint", tk, err)
	}
	tk, err = g.Claim(context.Background(), dedupe.Input{Header: map[string][]string{"Idempotency-Key": {"k"}}, MessageID: "ORDERS:8"})
	if err != nil || tk.Key != cfg.Durable+":k" {
		t.Fatalf("claim with Idempotency-Key: %+v, %v", tk, err)
	}
}
