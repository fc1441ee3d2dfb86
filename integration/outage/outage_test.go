package outage_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/dedupe/redisstore"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/retry"
)

// logCounter is a slog.Handler that counts records by message prefix and
// keeps the test's log readable (it writes to t.Log).
type logCounter struct {
	t  *testing.T
	mu sync.Mutex
	n  map[string]int
}

func newLogCounter(t *testing.T) *logCounter { return &logCounter{t: t, n: map[string]int{}} }

func (l *logCounter) Enabled(_ context.Context, lv slog.Level) bool { return lv >= slog.LevelInfo }
func (l *logCounter) Handle(_ context.Context, r slog.Record) error {
	l.mu.Lock()
	l.n[r.Message]++
	l.mu.Unlock()
	if r.Level >= slog.LevelWarn || strings.Contains(r.Message, "resum") {
		var attrs []string
		r.Attrs(func(a slog.Attr) bool { attrs = append(attrs, a.String()); return true })
		l.t.Logf("%s %s %s", r.Level, r.Message, strings.Join(attrs, " "))
	}
	return nil
}
func (l *logCounter) WithAttrs([]slog.Attr) slog.Handler { return l }
func (l *logCounter) WithGroup(string) slog.Handler      { return l }

// count returns how many records had a message containing s.
func (l *logCounter) count(s string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for m, c := range l.n {
		if strings.Contains(m, s) {
			n += c
		}
	}
	return n
}

// countingStore counts Acquired claims, to check that no handler started
// without one.
type countingStore struct {
	dedupe.Store
	acquired atomic.Int64
}

func (s *countingStore) Claim(ctx context.Context, key, fp string, lease, retention time.Duration) (dedupe.Claim, error) {
	c, err := s.Store.Claim(ctx, key, fp, lease, retention)
	if err == nil && c.Status == dedupe.Acquired {
		s.acquired.Add(1)
	}
	return c, err
}

func (s *countingStore) Ping(ctx context.Context) error { return s.Store.(dedupe.Pinger).Ping(ctx) }

// workload is a consumer under test and what its handler saw.
type workload struct {
	env       *harness.NATSEnv
	stream    string
	subject   string
	dlqStream string
	dlqSubj   string
	mu        sync.Mutex
	effects   map[string]int
	lastDone  time.Time
	started   atomic.Int64
}

func newWorkload(t *testing.T, env *harness.NATSEnv) *workload {
	w := &workload{
		env: env, stream: env.Name("IN"), subject: env.Subject("in.orders"),
		dlqStream: env.Name("DLQ"), dlqSubj: env.Subject("dlq.orders"),
		effects: map[string]int{},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: w.stream, Subjects: []string{env.Subject("in.>")}}); err != nil {
		t.Fatal(err)
	}
	return w
}

// config is the default configuration: only names are set.
func (w *workload) config(log *slog.Logger, g *dedupe.Guard, createDLQ bool) natsjs.Config {
	return natsjs.Config{
		Stream:  w.stream,
		Durable: "worker",
		DeadLetter: natsjs.DeadLetterConfig{
			Subject: w.dlqSubj, Stream: w.dlqStream, NoCreateStream: !createDLQ,
			StreamSubjects: []string{w.env.Subject("dlq.>")},
		},
		AdvisoryStream: w.env.Name("ADV"),
		Pipeline:       consumer.Config{Guard: g, Logger: log},
	}
}

func (w *workload) handler(ctx context.Context, m *consumer.Message) error {
	w.started.Add(1)
	if strings.Contains(string(m.Data), "poison") {
		return retry.Permanent(fmt.Errorf("poison message %s", m.Header["Idempotency-Key"][0]))
	}
	w.mu.Lock()
	w.effects[m.Header["Idempotency-Key"][0]]++
	w.lastDone = time.Now()
	w.mu.Unlock()
	return nil
}

// produce publishes one message every interval until ctx ends; every
// poisonEvery-th is poison (0: none). It returns the keys published.
func (w *workload) produce(ctx context.Context, t *testing.T, interval time.Duration, poisonEvery int) <-chan []string {
	out := make(chan []string, 1)
	go func() {
		var keys []string
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for i := 1; ; i++ {
			select {
			case <-ctx.Done():
				out <- keys
				return
			case <-tick.C:
			}
			key := fmt.Sprintf("k%05d", i)
			body := fmt.Sprintf(`{"n":%d}`, i)
			if poisonEvery > 0 && i%poisonEvery == 0 {
				key, body = "p"+key, fmt.Sprintf(`{"n":%d,"poison":true}`, i)
			}
			msg := &nats.Msg{Subject: w.subject, Header: nats.Header{"Idempotency-Key": {key}}, Data: []byte(body)}
			pctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			_, err := w.env.JS.PublishMsg(pctx, msg)
			cancel()
			if err != nil {
				t.Errorf("publish %s: %v", key, err)
				continue
			}
			keys = append(keys, key)
		}
	}()
	return out
}

// doneAfter returns the first completion at or after since, waiting up to
// a minute; zero when none came.
func (w *workload) doneAfter(since time.Time) time.Time {
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		w.mu.Lock()
		last := w.lastDone
		w.mu.Unlock()
		if !last.Before(since) {
			return last
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Time{}
}

// settle waits until the durable consumer has nothing pending or in flight.
func (w *workload) settle(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	for {
		cons, err := w.env.JS.Consumer(ctx, w.stream, "worker")
		if err == nil {
			if info, err := cons.Info(ctx); err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.NumRedelivered == 0 {
				return
			}
		}
		select {
		case <-ctx.Done():
			t.Fatalf("consumer did not settle: %v", err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// deadLetters returns the number of messages in the dead-letter stream.
func (w *workload) deadLetters(t *testing.T) uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := w.env.JS.Stream(ctx, w.dlqStream)
	if err != nil {
		t.Fatalf("dead-letter stream: %v", err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func run(t *testing.T, c *natsjs.Consumer) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	select {
	case <-c.Ready():
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("consumer not ready")
	}
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

// TestRedisOutage stops the dedupe store (its own redis-server) twice
// under a steady stream of messages, with the default retry policy and
// defaults everywhere: no dead letter, nothing lost or applied twice, no
// handler without a claim, one pause and one resumption logged per outage.
func TestRedisOutage(t *testing.T) {
	t.Parallel()
	env := harness.NATS(t)
	rp := startRedis(t)
	rdb := redis.NewClient(&redis.Options{Addr: rp.addr})
	defer rdb.Close()
	store := &countingStore{Store: redisstore.New(rdb, redisstore.Config{})}
	w := newWorkload(t, env)
	logs := newLogCounter(t)
	g := &dedupe.Guard{Store: store, Key: dedupe.HeaderKey("Idempotency-Key")}
	c, err := natsjs.New(env.JS, w.config(slog.New(logs), g, true), w.handler)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c)

	ctx, cancelProducer := context.WithCancel(context.Background())
	keysc := w.produce(ctx, t, 25*time.Millisecond, 0)
	sleepCtx(ctx, 3*time.Second)
	outages := []time.Duration{scaled(30*time.Second, 4*time.Second), scaled(120*time.Second, 8*time.Second)}
	for i, d := range outages {
		rp.kill()
		t.Logf("outage %d: redis down for %v", i+1, d)
		time.Sleep(d)
		rp.start()
		back := time.Now()
		resumed := w.doneAfter(back)
		if resumed.IsZero() {
			t.Fatalf("outage %d: no message processed within a minute of redis's return", i+1)
		}
		t.Logf("outage %d: first message processed %v after redis returned", i+1, resumed.Sub(back).Round(time.Millisecond))
		time.Sleep(3 * time.Second)
	}
	cancelProducer()
	keys := <-keysc
	w.settle(t)
	stop()

	w.mu.Lock()
	defer w.mu.Unlock()
	lost, twice := 0, 0
	for _, k := range keys {
		switch n := w.effects[k]; {
		case n == 0:
			lost++
		case n > 1:
			twice++
		}
	}
	if lost != 0 || twice != 0 || len(w.effects) != len(keys) {
		t.Errorf("%d messages published: %d lost, %d applied twice, %d keys applied", len(keys), lost, twice, len(w.effects))
	}
	if n := w.deadLetters(t); n != 0 {
		t.Errorf("%d dead letters, want 0", n)
	}
	if s, a := w.started.Load(), store.acquired.Load(); s > a {
		t.Errorf("handler started %d times with %d claims acquired", s, a)
	}
	pauses, resumes := logs.count("paused consuming"), logs.count("answers again; resuming")
	t.Logf("%d messages, each applied once; handler started %d times; %d pauses and %d resumptions logged", len(keys), w.started.Load(), pauses, resumes)
	// With -short an outage can end while the client is still retrying its
	// first dial, before any claim fails: then there is no pause to log.
	if (!testing.Short() && pauses != len(outages)) || pauses < 1 || pauses > len(outages) || resumes != pauses {
		t.Errorf("logged %d pauses and %d resumptions for %d outages, want one each per outage", pauses, resumes, len(outages))
	}
}

// TestDeadLetterStreamOutage deletes the dead-letter stream for three
// minutes while poison messages arrive among good ones (NoCreateStream set,
// defaults otherwise): once the stream is back every poison message is in
// it, once, every good one was applied once, and nothing is stranded.
func TestDeadLetterStreamOutage(t *testing.T) {
	t.Parallel()
	env := harness.NATS(t)
	w := newWorkload(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dlqConfig := jetstream.StreamConfig{Name: w.dlqStream, Subjects: []string{env.Subject("dlq.>")}}
	if _, err := env.JS.CreateStream(ctx, dlqConfig); err != nil {
		t.Fatal(err)
	}
	logs := newLogCounter(t)
	g := &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.HeaderKey("Idempotency-Key")}
	c, err := natsjs.New(env.JS, w.config(slog.New(logs), g, false), w.handler)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c)

	// Deleted before the first message: a dead letter stored before the
	// deletion would be deleted with the stream.
	if err := env.JS.DeleteStream(ctx, w.dlqStream); err != nil {
		t.Fatal(err)
	}
	pctx, stopProducer := context.WithCancel(ctx)
	keysc := w.produce(pctx, t, 200*time.Millisecond, 5)
	down := scaled(3*time.Minute, 5*time.Second)
	t.Logf("dead-letter stream deleted for %v", down)
	sleepCtx(ctx, down)
	if _, err := env.JS.CreateStream(ctx, dlqConfig); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	sleepCtx(ctx, 2*time.Second)
	stopProducer()
	keys := <-keysc
	poison := 0
	for _, k := range keys {
		if strings.HasPrefix(k, "p") {
			poison++
		}
	}
	w.settle(t)
	for deadline := time.Now().Add(time.Minute); w.deadLetters(t) < uint64(poison) && time.Now().Before(deadline); {
		time.Sleep(100 * time.Millisecond)
	}
	w.settle(t)
	t.Logf("settled %v after the dead-letter stream returned", time.Since(back).Round(time.Millisecond))
	stop()

	w.mu.Lock()
	defer w.mu.Unlock()
	for _, k := range keys {
		if strings.HasPrefix(k, "p") {
			continue
		}
		if n := w.effects[k]; n != 1 {
			t.Errorf("good message %s applied %d times", k, n)
		}
	}
	if n := w.deadLetters(t); n != uint64(poison) {
		t.Errorf("%d dead letters for %d poison messages", n, poison)
	}
	if n := logs.count("paused consuming"); n != 1 {
		t.Errorf("%d pauses logged for one outage of the dead-letter stream, want 1", n)
	}
	t.Logf("%d messages (%d poison): every poison message dead-lettered once, every good one applied once; %d pause and %d resumption logged",
		len(keys), poison, logs.count("paused consuming"), logs.count("answers again; resuming"))
}
