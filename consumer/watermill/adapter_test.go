package idemqwm_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
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
	"github.com/idemq/idemq/retry"
)

// gochannelBus is an in-process bus for the unit tests: one persistent
// GoChannel whose Publish returns once every subscriber acked the message.
func gochannelBus(t *testing.T) *bus { return gochannelBusWith(t, true) }

// gochannelBusWith is gochannelBus, with Publish blocking until the ack
// (one message of a topic at a time) or not.
func gochannelBusWith(t *testing.T, block bool) *bus {
	t.Helper()
	gc := gochannel.NewGoChannel(gochannel.Config{Persistent: true, BlockPublishUntilSubscriberAck: block}, watermill.NopLogger{})
	t.Cleanup(func() { _ = gc.Close() })
	id := randomID(t)
	return &bus{
		w:          wiring{Kind: "gochannel", Topic: "in." + id, Poison: "poison." + id},
		pub:        gc,
		sub:        gc,
		readPoison: func(ctx context.Context) (<-chan *message.Message, error) { return gc.Subscribe(ctx, "poison."+id) },
	}
}

func TestNewValidatesConfig(t *testing.T) {
	t.Parallel()
	b := gochannelBus(t)
	good := testConfig(b, nil)
	for _, tc := range []struct {
		name string
		edit func(c *idemqwm.Config)
		want string
	}{
		{"no guard", func(c *idemqwm.Config) { c.Pipeline.Guard = nil }, "Pipeline.Guard is required"},
		{"no store", func(c *idemqwm.Config) { c.Pipeline.Guard = &dedupe.Guard{} }, "Guard.Store is nil"},
		{"dead letter set", func(c *idemqwm.Config) {
			c.Pipeline.DeadLetter = func(context.Context, *consumer.Message, consumer.DeadLetterInfo) error { return nil }
		}, "Pipeline.DeadLetter is set"},
		{"no poison publisher", func(c *idemqwm.Config) { c.PoisonPublisher = nil }, "PoisonPublisher is required"},
		{"no poison topic", func(c *idemqwm.Config) { c.PoisonTopic = "" }, "PoisonTopic is required"},
		{"heartbeat not below lease", func(c *idemqwm.Config) { c.Pipeline.HeartbeatInterval = time.Minute }, "must be shorter than the dedupe lease"},
	} {
		cfg := good
		g := *good.Pipeline.Guard
		cfg.Pipeline.Guard = &g
		tc.edit(&cfg)
		_, err := idemqwm.New(cfg)
		if !errors.Is(err, idemqwm.ErrInvalidConfig) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: New = %v; want ErrInvalidConfig saying %q", tc.name, err, tc.want)
		}
	}
	a, err := idemqwm.New(good)
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Config(); got.PublishTimeout != idemqwm.DefaultPublishTimeout || got.Hostname == "" || got.MaxWait != good.MaxWait {
		t.Fatalf("defaults not applied: %+v", got)
	}
}

// recorder is a message.Publisher that records what it published and fails
// the first fail calls.
type recorder struct {
	mu   sync.Mutex
	fail int
	msgs []*message.Message
}

func (r *recorder) Publish(_ string, msgs ...*message.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail > 0 {
		r.fail--
		return errors.New("broker refused the publish")
	}
	r.msgs = append(r.msgs, msgs...)
	return nil
}

func (r *recorder) Close() error { return nil }

func (r *recorder) published() []*message.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*message.Message(nil), r.msgs...)
}

// When the router fails to publish what the handler produced after idemq
// recorded the run, the redelivery is a duplicate: idemq returns the stored
// produced messages again, so they are published, with the same UUIDs,
// and the handler does not run twice. With NoReplayProduced they are lost.
func TestProducedMessagesReplayedAfterPublishFailure(t *testing.T) {
	t.Parallel()
	for _, noReplay := range []bool{false, true} {
		b := gochannelBus(t)
		cfg := testConfig(b, nil)
		cfg.NoReplayProduced = noReplay
		a, err := idemqwm.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		out := &recorder{fail: 1}
		var runs atomic.Int32
		r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
		if err != nil {
			t.Fatal(err)
		}
		r.AddMiddleware(a.Middleware)
		r.AddHandler("charge", b.w.Topic, b.sub, "charged", out, func(m *message.Message) ([]*message.Message, error) {
			runs.Add(1)
			e := message.NewMessage("charged-"+m.Metadata.Get("Idempotency-Key"), []byte(`{"ok":true}`))
			e.Metadata.Set("Idempotency-Key", "charged-"+m.Metadata.Get("Idempotency-Key"))
			return []*message.Message{e}, nil
		})
		startRouter(t, r)
		publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`) // returns once acked

		got := out.published()
		if runs.Load() != 1 {
			t.Fatalf("noReplay=%v: handler ran %d times, want 1", noReplay, runs.Load())
		}
		if s := a.Stats(); s.Duplicates != 1 {
			t.Fatalf("noReplay=%v: stats %+v, want the redelivery answered as a duplicate", noReplay, s)
		}
		if noReplay {
			if len(got) != 0 {
				t.Fatalf("NoReplayProduced: %d messages published, want none (the failed publish is lost)", len(got))
			}
			continue
		}
		if len(got) != 1 || got[0].UUID != "charged-pay-1" || string(got[0].Payload) != `{"ok":true}` ||
			got[0].Metadata.Get("Idempotency-Key") != "charged-pay-1" {
			t.Fatalf("published %d messages %v; want the produced one replayed with its UUID, payload and metadata", len(got), got)
		}
	}
}

// failingStore fails the first n Claims, as a store that does not answer.
type failingStore struct {
	dedupe.Store
	n atomic.Int32
}

func (f *failingStore) Claim(ctx context.Context, key, fp string, lease, retention time.Duration) (dedupe.Claim, error) {
	if f.n.Add(-1) >= 0 {
		return dedupe.Claim{}, errors.New("dial tcp: connection refused")
	}
	return f.Store.Claim(ctx, key, fp, lease, retention)
}

// A store outage uses no attempt: with a single-attempt policy, a message
// that met the store down four times still runs and succeeds.
func TestStoreUnavailableUsesNoAttempt(t *testing.T) {
	t.Parallel()
	b := gochannelBus(t)
	store := &failingStore{Store: memstore.New(memstore.Config{})}
	store.n.Store(4)
	cfg := testConfig(b, store)
	cfg.Pipeline.Retry = retry.Policy{MaxAttempts: 1}
	cfg.Pipeline.UnavailableDelay = 5 * time.Millisecond
	cfg.MaxWait = 40 * time.Millisecond
	a, err := idemqwm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := newCounter()
	runRouter(t, b.sub, b.w.Topic, "orders", a.NoPublishHandler(func(m *message.Message) error {
		c.run("k")
		c.apply("k")
		return nil
	}))
	publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`)
	if runs, applied := c.get("k"); runs != 1 || applied != 1 {
		t.Fatalf("handler ran %d, applied %d; want 1 and 1", runs, applied)
	}
	if s := a.Stats(); s.Unavailable != 4 || s.Retried != 4 || s.DeadLettered != 0 {
		t.Fatalf("stats %+v: want 4 unavailable retries, no dead letter", s)
	}
}

// pauseRecorder is a consumer.PauseObserver that records its calls.
type pauseRecorder struct {
	consumer.NopObserver
	mu    sync.Mutex
	calls []string
	err   error // Paused's last
}

func (p *pauseRecorder) Paused(_ context.Context, dep consumer.Dependency, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, "paused "+dep.String())
	p.err = err
}

func (p *pauseRecorder) Resumed(_ context.Context, dep consumer.Dependency, pausedFor time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	state := "resumed " + dep.String()
	if pausedFor < 0 {
		state += " after a negative pause"
	}
	p.calls = append(p.calls, state)
}

func (p *pauseRecorder) got() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.calls...)
}

// PauseThreshold deliveries in a row that find the store down are a pause,
// reported to a PauseObserver once, and ended by the first delivery that
// claims again.
func TestStoreOutageReportedAsPause(t *testing.T) {
	t.Parallel()
	b := gochannelBus(t)
	store := &failingStore{Store: memstore.New(memstore.Config{})}
	store.n.Store(idemqwm.PauseThreshold + 2)
	cfg := testConfig(b, store)
	cfg.Pipeline.UnavailableDelay = time.Millisecond
	cfg.MaxWait = 20 * time.Millisecond
	obs := &pauseRecorder{}
	cfg.Pipeline.Observer = obs
	a, err := idemqwm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	runRouter(t, b.sub, b.w.Topic, "orders", a.NoPublishHandler(func(*message.Message) error {
		runs.Add(1)
		return nil
	}))
	publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`) // returns once acked
	want := []string{"paused store", "resumed store"}
	if got := obs.got(); !slices.Equal(got, want) {
		t.Fatalf("pause observer heard %q, want %q", got, want)
	}
	if obs.mu.Lock(); obs.err == nil || !strings.Contains(obs.err.Error(), "connection refused") {
		t.Errorf("Paused's error %v, want the store's", obs.err)
	}
	obs.mu.Unlock()
	if s := a.Stats(); s.Unavailable != idemqwm.PauseThreshold+2 || runs.Load() != 1 {
		t.Fatalf("stats %+v, %d runs: want %d unavailable retries, then one run", s, runs.Load(), idemqwm.PauseThreshold+2)
	}

	// Fewer than PauseThreshold in a row are no pause.
	store.n.Store(idemqwm.PauseThreshold - 1)
	publishKey(t, b.pub, b.w.Topic, "pay-2", `{"amount":100}`)
	if got := obs.got(); len(got) != 2 {
		t.Fatalf("after a short outage the observer heard %q, want nothing more", got[2:])
	}
}

// flakyPublisher fails the first n publishes.
type flakyPublisher struct {
	message.Publisher
	n atomic.Int32
}

func (f *flakyPublisher) Publish(topic string, msgs ...*message.Message) error {
	if f.n.Add(-1) >= 0 {
		return errors.New("poison topic unreachable")
	}
	return f.Publisher.Publish(topic, msgs...)
}

// A failed poison publish keeps the message: it is retried, and its
// redelivery past the attempts is dead-lettered without running the
// handler again.
func TestPoisonPublishFailureRetried(t *testing.T) {
	t.Parallel()
	b := gochannelBus(t)
	cfg := testConfig(b, nil)
	flaky := &flakyPublisher{Publisher: b.pub}
	flaky.n.Store(1)
	cfg.PoisonPublisher = flaky
	cfg.Pipeline.Retry = retry.Policy{MaxAttempts: 1}
	cfg.Pipeline.UnavailableDelay = 5 * time.Millisecond
	a, err := idemqwm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	runRouter(t, b.sub, b.w.Topic, "orders", a.NoPublishHandler(func(*message.Message) error {
		runs.Add(1)
		return errors.New("bank down")
	}))
	id := publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`)
	m := b.poison(t, 1)[0]
	if m.UUID != id || m.Metadata.Get(consumer.HeaderReason) != "exhausted" || m.Metadata.Get(consumer.HeaderAttempts) != "1" {
		t.Fatalf("dead letter %s reason %q attempts %q; want %s exhausted after 1 attempt",
			m.UUID, m.Metadata.Get(consumer.HeaderReason), m.Metadata.Get(consumer.HeaderAttempts), id)
	}
	if runs.Load() != 1 {
		t.Fatalf("handler ran %d times, want 1", runs.Load())
	}
	eventually(t, "the dead letter counted", func() bool { return a.Stats().DeadLettered == 1 })
	if s := a.Stats(); s.Unavailable != 1 {
		t.Fatalf("stats %+v: want 1 unavailable retry", s)
	}
}

// A Busy duplicate of a message running in the same process is held until
// the original ends, then acked as a duplicate.
func TestBusyDuplicateWaitsForLocalOriginal(t *testing.T) {
	t.Parallel()
	b := gochannelBusWith(t, false) // both deliveries at once
	cfg := testConfig(b, nil)
	cfg.Pipeline.Guard.Lease = 30 * time.Second
	cfg.MaxWait = 10 * time.Second
	a, err := idemqwm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	var runs atomic.Int32
	runRouter(t, b.sub, b.w.Topic, "orders", a.NoPublishHandler(func(*message.Message) error {
		runs.Add(1)
		<-release
		return nil
	}))
	publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`)
	publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`)
	eventually(t, "the original running", func() bool { return runs.Load() == 1 })
	eventually(t, "the second delivery answered Busy", func() bool { return a.Stats().Retried >= 1 })
	close(release)
	eventually(t, "both acked", func() bool { return a.Stats().Acked == 2 })
	if runs.Load() != 1 {
		t.Fatalf("handler ran %d times, want 1", runs.Load())
	}
	if s := a.Stats(); s.Duplicates != 1 {
		t.Fatalf("stats %+v: want 1 duplicate", s)
	}
}

// Handler runs an idemq consumer.Handler: the message is translated, a
// Reject is stored and replayed (acked, never retried).
func TestHandlerRunsConsumerHandler(t *testing.T) {
	t.Parallel()
	b := gochannelBus(t)
	a, err := idemqwm.New(testConfig(b, nil))
	if err != nil {
		t.Fatal(err)
	}
	type seen struct {
		id, subject, key string
		native           bool
		attempt          int
	}
	var mu sync.Mutex
	var got []seen
	runRouter(t, b.sub, b.w.Topic, "orders", a.Handler(func(ctx context.Context, m *consumer.Message) error {
		_, native := m.Native.(*message.Message)
		mu.Lock()
		got = append(got, seen{m.ID, m.Subject, m.Header["Idempotency-Key"][0], native, m.Attempt})
		mu.Unlock()
		return consumer.Reject([]byte("402"), errors.New("insufficient funds"))
	}))
	id := publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`)
	publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`)
	mu.Lock()
	defer mu.Unlock()
	want := seen{id, b.w.Topic, "pay-1", true, 1}
	if len(got) != 1 || got[0] != want {
		t.Fatalf("handler saw %+v; want once %+v", got, want)
	}
	if s := a.Stats(); s.Acked != 2 || s.Duplicates != 1 || s.Retried != 0 {
		t.Fatalf("stats %+v: want the rejection acked and its duplicate replayed", s)
	}
}

// Two handlers consuming the same messages (a fan-out) each run once; with
// SharedKeys they dedupe as one.
func TestKeysNamespacedPerHandler(t *testing.T) {
	t.Parallel()
	for _, shared := range []bool{false, true} {
		b := gochannelBus(t)
		cfg := testConfig(b, nil)
		cfg.SharedKeys = shared
		a, err := idemqwm.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		var billing, shipping atomic.Int32
		r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
		if err != nil {
			t.Fatal(err)
		}
		r.AddMiddleware(a.Middleware)
		r.AddConsumerHandler("billing", b.w.Topic, b.sub, func(*message.Message) error { billing.Add(1); return nil })
		r.AddConsumerHandler("shipping", b.w.Topic, b.sub, func(*message.Message) error { shipping.Add(1); return nil })
		startRouter(t, r)
		publishKey(t, b.pub, b.w.Topic, "order-1", `{"id":1}`)
		publishKey(t, b.pub, b.w.Topic, "order-1", `{"id":1}`)
		total := billing.Load() + shipping.Load()
		if !shared && (billing.Load() != 1 || shipping.Load() != 1) {
			t.Fatalf("billing ran %d, shipping %d; want each once", billing.Load(), shipping.Load())
		}
		if shared && total != 1 {
			t.Fatalf("SharedKeys: billing ran %d, shipping %d; want one run in all", billing.Load(), shipping.Load())
		}
	}
}

// Watermill's Retry outside idemq works: each retry is the next attempt, and
// the supersede logic raises no false alarm.
func TestRetryMiddlewareOutside(t *testing.T) {
	t.Parallel()
	b := gochannelBus(t)
	a, err := idemqwm.New(testConfig(b, nil))
	if err != nil {
		t.Fatal(err)
	}
	c := newCounter()
	runRouter(t, b.sub, b.w.Topic, "orders", func(m *message.Message) error {
		if c.run("k") == 1 {
			return errors.New("bank timed out")
		}
		c.apply("k")
		return nil
	}, middleware.Retry{MaxRetries: 3, InitialInterval: time.Millisecond}.Middleware, a.Middleware)
	publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`)
	if runs, applied := c.get("k"); runs != 2 || applied != 1 {
		t.Fatalf("handler ran %d, applied %d; want 2 and 1", runs, applied)
	}
	if s := a.Stats(); s.AckedRetries != 0 || s.Retried != 1 {
		t.Fatalf("stats %+v: want one retry, no acked retry", s)
	}
}

// PoisonQueue outside idemq turns idemq's redelivery error into an Ack: the
// first transient failure is poisoned by Watermill and never retried. The
// adapter cannot prevent it, but reports it (Stats.AckedRetries).
func TestPoisonQueueOutsideIsReported(t *testing.T) {
	t.Parallel()
	b := gochannelBus(t)
	a, err := idemqwm.New(testConfig(b, nil))
	if err != nil {
		t.Fatal(err)
	}
	pq, err := middleware.PoisonQueue(b.pub, "watermill-poison."+b.w.Topic)
	if err != nil {
		t.Fatal(err)
	}
	c := newCounter()
	runRouter(t, b.sub, b.w.Topic, "orders", func(m *message.Message) error {
		if c.run("k") == 1 {
			return errors.New("bank timed out")
		}
		c.apply("k")
		return nil
	}, pq, a.Middleware)
	publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`)
	eventually(t, "the acked retry reported", func() bool { return a.Stats().AckedRetries == 1 })
	if runs, applied := c.get("k"); runs != 1 || applied != 0 {
		t.Fatalf("handler ran %d, applied %d; want the loss: 1 run, 0 effects", runs, applied)
	}
}

// InstantAck acks before idemq runs; that is reported too.
func TestInstantAckIsReported(t *testing.T) {
	t.Parallel()
	b := gochannelBus(t)
	a, err := idemqwm.New(testConfig(b, nil))
	if err != nil {
		t.Fatal(err)
	}
	runRouter(t, b.sub, b.w.Topic, "orders", func(*message.Message) error { return nil }, middleware.InstantAck, a.Middleware)
	publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`)
	eventually(t, "the early ack reported", func() bool { return a.Stats().AckedRetries == 1 })
}

// The adapter added router-wide and per handler: the inner layer passes
// through (its claim would find the outer one's key Busy forever), and the
// message runs once.
func TestDoubleWrapPassesThrough(t *testing.T) {
	t.Parallel()
	b := gochannelBus(t)
	a, err := idemqwm.New(testConfig(b, nil))
	if err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	r.AddMiddleware(a.Middleware)
	h := r.AddConsumerHandler("orders", b.w.Topic, b.sub, func(*message.Message) error { runs.Add(1); return nil })
	h.AddMiddleware(a.Middleware)
	startRouter(t, r)
	publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`)
	publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`)
	if runs.Load() != 1 {
		t.Fatalf("handler ran %d times, want 1", runs.Load())
	}
	if s := a.Stats(); s.DoubleWrapped != 1 || s.Duplicates != 1 || s.Retried != 0 {
		t.Fatalf("stats %+v: want 1 pass-through, 1 duplicate, no retry", s)
	}
}

// The returned error wraps ErrRedeliver and the handler's error.
func TestRedeliverErrorWrapsCause(t *testing.T) {
	t.Parallel()
	b := gochannelBus(t)
	a, err := idemqwm.New(testConfig(b, nil))
	if err != nil {
		t.Fatal(err)
	}
	cause := errors.New("bank timed out")
	h := a.NoPublishHandler(func(*message.Message) error { return cause })
	m := message.NewMessage(watermill.NewUUID(), []byte(`{}`))
	m.Metadata.Set("Idempotency-Key", "k")
	err = h(m)
	if !errors.Is(err, idemqwm.ErrRedeliver) || !errors.Is(err, cause) {
		t.Fatalf("error %v: want it to wrap ErrRedeliver and the cause", err)
	}
}

// MaxWait caps the in-handler wait: with an hour of backoff, the retry
// still comes at once.
func TestMaxWaitCapsBackoff(t *testing.T) {
	t.Parallel()
	b := gochannelBus(t)
	cfg := testConfig(b, nil)
	cfg.Pipeline.Retry = retry.Policy{MaxAttempts: 3, Backoff: retry.Constant(time.Hour)}
	cfg.MaxWait = 10 * time.Millisecond
	a, err := idemqwm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c := newCounter()
	runRouter(t, b.sub, b.w.Topic, "orders", a.NoPublishHandler(func(*message.Message) error {
		if c.run("k") == 1 {
			return errors.New("bank timed out")
		}
		c.apply("k")
		return nil
	}))
	publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`) // returns once acked
	if runs, applied := c.get("k"); runs != 2 || applied != 1 {
		t.Fatalf("handler ran %d, applied %d; want 2 and 1", runs, applied)
	}
}

// A wait in the handler ends with the message's context: a router shutting
// down does not wait for MaxWait.
func TestShutdownEndsWait(t *testing.T) {
	t.Parallel()
	b := gochannelBusWith(t, false)
	cfg := testConfig(b, nil)
	cfg.Pipeline.Retry = retry.Policy{MaxAttempts: 3, Backoff: retry.Constant(time.Hour)}
	cfg.MaxWait = time.Hour
	a, err := idemqwm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int32
	r, err := message.NewRouter(message.RouterConfig{CloseTimeout: waitFor}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	r.AddConsumerHandler("orders", b.w.Topic, b.sub, a.NoPublishHandler(func(*message.Message) error {
		runs.Add(1)
		return errors.New("bank timed out")
	}))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	<-r.Running()
	publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`)
	eventually(t, "the handler failed once", func() bool { return runs.Load() == 1 })
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("router: %v", err)
		}
	case <-time.After(waitFor):
		t.Fatalf("router still closing after %v: the wait ignored the message's context", waitFor)
	}
	if runs.Load() != 1 {
		t.Fatalf("handler ran %d times, want 1", runs.Load())
	}
}
