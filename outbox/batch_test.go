package outbox_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
	"github.com/idemq/idemq/retry"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// batchEnv is a Postgres inbox fed by a JetStream stream, with a DLQ.
type batchEnv struct {
	*inboxEnv
	nats   *harness.NATSEnv
	stream string
	dlq    jetstream.Stream
	calls  atomic.Int32
}

func newBatchEnv(t testing.TB, db *sql.DB, env *harness.NATSEnv) *batchEnv {
	t.Helper()
	g := &dedupe.Guard{Key: dedupe.HeaderKey("Idempotency-Key"), Fingerprint: &dedupe.Fingerprinter{}}
	e := &batchEnv{inboxEnv: newInboxEnv(t, db, g), nats: env, stream: env.Name("IN")}
	createStream(t, env.JS, jetstream.StreamConfig{Name: e.stream, Subjects: []string{env.Subject("in.>")}})
	e.dlq = createStream(t, env.JS, jetstream.StreamConfig{Name: env.Name("DLQ"), Subjects: []string{env.Subject("dlq.>")}})
	return e
}

// handler applies one effect per message and emits one outbox message;
// bodies "poison" and "flaky" fail permanently and on the first attempt.
func (e *batchEnv) handler(ctx context.Context, tx *sql.Tx, m *consumer.Message) error {
	e.calls.Add(1)
	switch string(m.Data) {
	case "poison":
		return retry.Permanent(errors.New("cannot digest"))
	case "flaky":
		if m.Attempt == 1 {
			return errors.New("first attempt fails")
		}
	}
	if err := e.effect(ctx, tx, m.Header["Idempotency-Key"][0], string(m.Data)); err != nil {
		return err
	}
	return e.ob.AddTx(ctx, tx, outbox.Message{Subject: "out.done", Data: m.Data})
}

func (e *batchEnv) batch(t testing.TB, size int) *outbox.Batch {
	t.Helper()
	b, err := outbox.NewBatch(e.in, e.nats.JS, outbox.BatchConfig{
		Stream:     e.stream,
		Durable:    e.nats.Name("batch"),
		BatchSize:  size,
		PullWait:   200 * time.Millisecond,
		AckWait:    time.Second,
		DeadLetter: natsjs.DeadLetterConfig{Subject: e.nats.Subject("dlq.in"), Stream: e.nats.Name("DLQ")},
		Pipeline:   consumer.Config{Retry: retry.Policy{MaxAttempts: 3, Backoff: retry.Constant(50 * time.Millisecond)}},
		Logger:     quiet,
	}, e.handler)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (e *batchEnv) publish(t testing.TB, ctx context.Context, msgID, key, body string) {
	t.Helper()
	m := nats.NewMsg(e.nats.Subject("in.pay"))
	m.Data = []byte(body)
	if key != "" {
		m.Header.Set("Idempotency-Key", key)
	}
	if _, err := e.nats.JS.PublishMsg(ctx, m, jetstream.WithMsgID(msgID)); err != nil {
		t.Fatal(err)
	}
}

// settled reports whether the durable has nothing pending or unacknowledged.
func (e *batchEnv) settled(ctx context.Context) (bool, error) {
	c, err := e.nats.JS.Consumer(ctx, e.stream, e.nats.Name("batch"))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return false, nil // Run has not created it yet
	}
	if err != nil {
		return false, err
	}
	info, err := c.Info(ctx)
	if err != nil {
		return false, err
	}
	return info.NumPending == 0 && info.NumAckPending == 0, nil
}

func runBatch(t testing.TB, b *outbox.Batch) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- b.Run(ctx) }()
	var err error
	stopped := false
	stop = func() error {
		if !stopped {
			stopped = true
			cancel()
			err = <-done
		}
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

func TestBatchExactlyOnce(t *testing.T) {
	pg := harness.Postgres(t)
	ctx := ctxT(t)
	e := newBatchEnv(t, pg.DB, harness.NATS(t))
	for i := range 40 {
		e.publish(t, ctx, fmt.Sprint("m", i), fmt.Sprint("k", i), fmt.Sprint("body", i))
	}
	e.publish(t, ctx, "m3-again", "k3", "body3")   // a publisher retry: duplicate
	e.publish(t, ctx, "m7-other", "k7", "changed") // same key, other body: conflict
	e.publish(t, ctx, "poison", "kp", "poison")
	e.publish(t, ctx, "flaky", "kf", "flaky")
	e.publish(t, ctx, "nokey", "", "no key")
	stop := runBatch(t, e.batch(t, 16))
	eventually(t, 20*time.Second, "all messages settled", func() (bool, error) { return e.settled(ctx) })
	if err := stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	eff := e.effects(t, ctx)
	if len(eff) != 41 {
		t.Fatalf("%d keys with effects, want 41 (40 + flaky)", len(eff))
	}
	for k, n := range eff {
		if n != 1 {
			t.Errorf("key %s applied %d times", k, n)
		}
	}
	c := counts(t, ctx, pg.DB, e.ob)
	if c[outbox.StatePending] != 41 {
		t.Fatalf("outbox = %v, want 41 pending", c)
	}
	reasons := map[string]string{}
	for _, m := range streamMsgs(t, ctx, e.dlq) {
		reasons[m.Header.Get(natsjs.HeaderOriginalMsgID)] = m.Header.Get(natsjs.HeaderReason)
	}
	want := map[string]string{"m7-other": "conflict", "poison": "permanent", "nokey": "invalid"}
	if fmt.Sprint(reasons) != fmt.Sprint(want) {
		t.Fatalf("dead letters = %v, want %v", reasons, want)
	}
}

func TestBatchCrashBetweenCommitAndAck(t *testing.T) {
	pg := harness.Postgres(t)
	ctx := ctxT(t)
	e := newBatchEnv(t, pg.DB, harness.NATS(t))
	const n = 30
	for i := range n {
		e.publish(t, ctx, fmt.Sprint("m", i), fmt.Sprint("k", i), "v")
	}
	crashed := errors.New("killed after commit")
	first := e.batch(t, 50)
	outbox.SetAfterCommit(first, func() error { return crashed })
	if err := first.Run(ctx); !errors.Is(err, crashed) {
		t.Fatalf("first Run = %v, want the crash", err)
	}
	committed := len(e.effects(t, ctx))
	if committed == 0 {
		t.Fatal("first batch committed nothing")
	}
	callsBefore := e.calls.Load()

	// A new consumer gets the unacknowledged messages again after AckWait:
	// the committed ones are acked as duplicates without running again.
	stop := runBatch(t, e.batch(t, 50))
	eventually(t, 20*time.Second, "all messages settled", func() (bool, error) { return e.settled(ctx) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	eff := e.effects(t, ctx)
	if len(eff) != n {
		t.Fatalf("%d keys with effects, want %d", len(eff), n)
	}
	keys := make([]string, 0, n)
	for k, c := range eff {
		keys = append(keys, k)
		if c != 1 {
			t.Errorf("key %s applied %d times", k, c)
		}
	}
	sort.Strings(keys)
	if rerun := int(e.calls.Load()-callsBefore) - (n - committed); rerun != 0 {
		t.Fatalf("%d committed messages ran again", rerun)
	}
	if c := counts(t, ctx, pg.DB, e.ob); c[outbox.StatePending] != n {
		t.Fatalf("outbox = %v, want %d rows", c, n)
	}
}
