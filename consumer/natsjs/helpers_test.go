package natsjs_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/retry"
)

func TestMain(m *testing.M) {
	if os.Getenv(envWorker) != "" {
		os.Exit(runWorker())
	}
	goleak.VerifyTestMain(m)
}

// waitFor bounds how long a test waits for something that must happen; it is
// a safety net for failing tests, not a speed assertion.
const waitFor = 30 * time.Second

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// eachServer runs fn against the real server (IDEMQ_NATS_URL) and an
// embedded one, in parallel.
func eachServer(t *testing.T, fn func(t *testing.T, env *harness.NATSEnv)) {
	t.Helper()
	t.Run("real", func(t *testing.T) {
		t.Parallel()
		fn(t, harness.NATS(t))
	})
	t.Run("embedded", func(t *testing.T) {
		t.Parallel()
		fn(t, harness.EmbeddedNATS(t))
	})
}

// fixture is one test's stream, subjects and dead-letter names.
type fixture struct {
	env        *harness.NATSEnv
	stream     string
	subject    string
	dlqStream  string
	dlqSubject string
	durable    string
}

func newFixture(t *testing.T, env *harness.NATSEnv) *fixture {
	t.Helper()
	f := &fixture{
		env:        env,
		stream:     env.Name("IN"),
		subject:    env.Subject("in.orders"),
		dlqStream:  env.Name("DLQ"),
		dlqSubject: env.Subject("dlq.orders"),
		durable:    "worker",
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: f.stream, Subjects: []string{env.Subject("in.>")}}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	return f
}

// config returns a fast test configuration: AckWait 2s, 3 attempts 50ms
// apart, dead letters to a stream the consumer creates.
func (f *fixture) config() natsjs.Config {
	return natsjs.Config{
		Stream:           f.stream,
		Durable:          f.durable,
		Concurrency:      4,
		AckWait:          2 * time.Second,
		PullWait:         200 * time.Millisecond,
		ShutdownTimeout:  10 * time.Second,
		ShutdownNakDelay: 50 * time.Millisecond,
		AdvisoryStream:   f.env.Name("ADV"),
		Hostname:         "test-host",
		DeadLetter: natsjs.DeadLetterConfig{
			Subject:        f.dlqSubject,
			Stream:         f.dlqStream,
			StreamSubjects: []string{f.env.Subject("dlq.>")},
			RetryDelay:     200 * time.Millisecond,
		},
		Pipeline: consumer.Config{
			Logger: quiet(),
			Retry:  retry.Policy{MaxAttempts: 3, Backoff: retry.Constant(50 * time.Millisecond)},
		},
	}
}

func (f *fixture) publish(t *testing.T, key string, data string, hdr nats.Header) *jetstream.PubAck {
	t.Helper()
	m := nats.NewMsg(f.subject)
	for k, v := range hdr {
		m.Header[k] = v
	}
	if key != "" {
		m.Header.Set("Idempotency-Key", key)
	}
	m.Data = []byte(data)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ack, err := f.env.JS.PublishMsg(ctx, m)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	return ack
}

// start runs c until the test ends (or the returned stop is called) and
// checks that Run returned nil.
func start(t *testing.T, c *natsjs.Consumer) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func newConsumer(t *testing.T, env *harness.NATSEnv, cfg natsjs.Config, h consumer.Handler) *natsjs.Consumer {
	t.Helper()
	c, err := natsjs.New(env.JS, cfg, h)
	if err != nil {
		t.Fatalf("natsjs.New: %v", err)
	}
	return c
}

// eventually polls cond until it holds or waitFor passes.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", waitFor, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitSettled waits until the durable consumer has acknowledged (or
// terminated) every message of the stream.
func (f *fixture) waitSettled(t *testing.T) *jetstream.ConsumerInfo {
	t.Helper()
	var info *jetstream.ConsumerInfo
	eventually(t, "all messages settled", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		s, err := f.env.JS.Stream(ctx, f.stream)
		if err != nil {
			return false
		}
		si, err := s.Info(ctx)
		if err != nil {
			return false
		}
		c, err := s.Consumer(ctx, f.durable)
		if err != nil {
			return false
		}
		info, err = c.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream >= si.State.LastSeq
	})
	return info
}

// deadLetters waits until the dead-letter stream holds n messages and
// returns them.
func (f *fixture) deadLetters(t *testing.T, n int) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	var s jetstream.Stream
	eventually(t, "dead letters", func() bool {
		var err error
		if s == nil {
			if s, err = f.env.JS.Stream(ctx, f.dlqStream); err != nil {
				s = nil
				return false
			}
		}
		info, err := s.Info(ctx)
		return err == nil && info.State.Msgs >= uint64(n)
	})
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != uint64(n) {
		t.Fatalf("dead-letter stream holds %d messages, want %d", info.State.Msgs, n)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	return out
}

// counter counts handler calls per key, safe for concurrent use.
type counter struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *counter) inc(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil {
		c.m = map[string]int{}
	}
	c.m[key]++
	return c.m[key]
}

func (c *counter) get(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.m[key]
}

func (c *counter) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.m {
		n += v
	}
	return n
}

func key(m *consumer.Message) string {
	if v := m.Header["Idempotency-Key"]; len(v) > 0 {
		return v[0]
	}
	return m.ID
}
