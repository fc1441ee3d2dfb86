package idemqwm_test

import (
	"context"
	"io"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"go.uber.org/goleak"

	"github.com/idemq/idemq/consumer"
	idemqwm "github.com/idemq/idemq/consumer/watermill"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/retry"
)

func TestMain(m *testing.M) {
	if os.Getenv(envWorker) != "" {
		os.Exit(runWorker())
	}
	goleak.VerifyTestMain(m,
		// Watermill's NewMapExpiringKeyRepository starts a clean-up loop
		// on context.Background() that nothing stops (the side-by-side
		// test and the benchmarks use Watermill's Deduplicator as is).
		goleak.IgnoreTopFunction("github.com/ThreeDotsLabs/watermill/message/router/middleware.(*mapExpiringKeyRepository).cleanOutLoop"),
	)
}

// waitFor bounds how long a test waits for something that must happen; it
// is a safety net for failing tests, not a speed assertion.
const waitFor = 30 * time.Second

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// testConfig is a fast configuration: memstore guard keyed by
// Idempotency-Key, 3 attempts 20ms apart, in-handler waits capped at
// 200ms, dead letters to b's poison topic.
func testConfig(b *bus, store dedupe.Store) idemqwm.Config {
	if store == nil {
		store = memstore.New(memstore.Config{})
	}
	return idemqwm.Config{
		Pipeline: consumer.Config{
			Guard: &dedupe.Guard{
				Store: store,
				Key:   dedupe.HeaderKey("Idempotency-Key"),
				Lease: 2 * time.Second,
			},
			Retry:  retry.Policy{MaxAttempts: 3, Backoff: retry.Constant(20 * time.Millisecond)},
			Logger: quiet(),
		},
		PoisonPublisher: b.pub,
		PoisonTopic:     b.w.Poison,
		MaxWait:         200 * time.Millisecond,
	}
}

// runRouter runs a router with one no-publisher handler named name on
// sub/topic, with the given middleware outermost first, until the test
// ends.
func runRouter(t *testing.T, sub message.Subscriber, topic, name string, h message.NoPublishHandlerFunc, mws ...message.HandlerMiddleware) *message.Router {
	t.Helper()
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: 10 * time.Second}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	r.AddMiddleware(mws...)
	r.AddConsumerHandler(name, topic, sub, h)
	startRouter(t, r)
	return r
}

// startRouter runs r until the test ends and waits until it consumes.
func startRouter(t *testing.T, r *message.Router) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("router: %v", err)
		}
	})
	select {
	case <-r.Running():
	case err := <-done:
		done <- err
		t.Fatalf("router stopped at start: %v", err)
	case <-time.After(waitFor):
		t.Fatalf("router not running within %v", waitFor)
	}
}

// eventually polls cond until it holds, failing after waitFor.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitFor)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, waitFor)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// counter counts handler runs and applied effects per key.
type counter struct {
	mu      sync.Mutex
	runs    map[string]int
	applied map[string]int
}

func newCounter() *counter {
	return &counter{runs: map[string]int{}, applied: map[string]int{}}
}

// run records a run of key and returns its number (1-based).
func (c *counter) run(key string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.runs[key]++
	return c.runs[key]
}

func (c *counter) apply(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.applied[key]++
}

func (c *counter) get(key string) (runs, applied int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.runs[key], c.applied[key]
}
