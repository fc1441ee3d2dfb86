package outbox_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
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
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
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
	case "panic":
		if m.Attempt == 1 {
			if err := e.effect(ctx, tx, m.Header["Idempotency-Key"][0], "before the panic"); err != nil {
				return err
			}
			panic("handler bug")
		}
	}
	if err := e.effect(ctx, tx, m.Header["Idempotency-Key"][0], string(m.Data)); err != nil {
		return err
	}
	return e.ob.AddTx(ctx, tx, outbox.Message{Subject: "out.done", Data: m.Data})
}

func (e *batchEnv) batch(t testing.TB, size int) *natsjs.Consumer {
	t.Helper()
	return e.batchWith(t, size, e.in.BatchHandler(e.handler))
}

func (e *batchEnv) batchWith(t testing.TB, size int, h consumer.BatchHandler) *natsjs.Consumer {
	t.Helper()
	b, err := natsjs.NewBatch(e.nats.JS, natsjs.Config{
		Stream:     e.stream,
		Durable:    e.nats.Name("batch"),
		BatchSize:  size,
		AckWait:    2 * time.Second,
		DeadLetter: natsjs.DeadLetterConfig{Subject: e.nats.Subject("dlq.in"), Stream: e.nats.Name("DLQ")},
		Pipeline: consumer.Config{
			Retry:  retry.Policy{MaxAttempts: 3, Backoff: retry.Constant(50 * time.Millisecond)},
			Logger: quiet,
		},
	}, h)
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

func runBatch(t testing.TB, b *natsjs.Consumer) (stop func() error) {
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
		reasons[m.Header.Get(consumer.HeaderOriginalMsgID)] = m.Header.Get(consumer.HeaderReason)
	}
	// Batches run concurrently (Concurrency 4), so either message of key k7
	// may commit first; the other one is the conflict.
	if _, ok := reasons["m7"]; ok {
		reasons["m7-other"] = reasons["m7"]
		delete(reasons, "m7")
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
	// The first batch commits, then the process "dies" before its acks:
	// the batch error hands every message back unacknowledged.
	crashed := errors.New("killed after commit")
	inner := e.in.BatchHandler(e.handler)
	var once atomic.Bool
	var committed int
	h := func(ctx context.Context, msgs []*consumer.Message) ([]error, error) {
		errs, err := inner(ctx, msgs)
		if err == nil && once.CompareAndSwap(false, true) {
			committed = len(msgs)
			return nil, crashed
		}
		return errs, err
	}
	// The redeliveries of the committed messages are acked as duplicates
	// without running again.
	stop := runBatch(t, e.batchWith(t, 50, h))
	eventually(t, 20*time.Second, "all messages settled", func() (bool, error) { return e.settled(ctx) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if committed == 0 {
		t.Fatal("the first batch committed nothing")
	}
	callsBefore := int32(committed)
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

// countingDB opens pg's database through a driver wrapper that counts the
// statements (Exec, Query, Begin, Commit, Rollback: one round trip each, a
// first-time prepare aside) sent on its connections, and the transactions
// begun. Dialect detection still sees the pgx driver.
func countingDB(t testing.TB, pg *harness.PostgresEnv) (*sql.DB, *roundTrips) {
	t.Helper()
	cfg, err := pgx.ParseConfig(pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	rt := &roundTrips{}
	db := sql.OpenDB(countingConnector{Connector: stdlib.GetConnector(*cfg), rt: rt})
	t.Cleanup(func() { _ = db.Close() })
	return db, rt
}

// roundTrips counts statements and transactions.
type roundTrips struct{ stmts, begins atomic.Int64 }

func (r *roundTrips) snapshot() (stmts, begins int64) { return r.stmts.Load(), r.begins.Load() }

type countingConnector struct {
	driver.Connector
	rt *roundTrips
}

// pgxConn is what database/sql uses of a pgx stdlib connection.
type pgxConn interface {
	driver.Conn
	driver.ConnPrepareContext
	driver.ConnBeginTx
	driver.ExecerContext
	driver.QueryerContext
	driver.Pinger
	driver.NamedValueChecker
	driver.SessionResetter
}

func (c countingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	conn, err := c.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &countingConn{pgxConn: conn.(pgxConn), rt: c.rt}, nil
}

type countingConn struct {
	pgxConn
	rt *roundTrips
}

func (c *countingConn) ExecContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Result, error) {
	c.rt.stmts.Add(1)
	return c.pgxConn.ExecContext(ctx, q, args)
}

func (c *countingConn) QueryContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Rows, error) {
	c.rt.stmts.Add(1)
	return c.pgxConn.QueryContext(ctx, q, args)
}

func (c *countingConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	c.rt.stmts.Add(1)
	c.rt.begins.Add(1)
	tx, err := c.pgxConn.BeginTx(ctx, opts)
	if err != nil {
		return nil, err
	}
	return countingTx{Tx: tx, rt: c.rt}, nil
}

type countingTx struct {
	driver.Tx
	rt *roundTrips
}

func (t countingTx) Commit() error   { t.rt.stmts.Add(1); return t.Tx.Commit() }
func (t countingTx) Rollback() error { t.rt.stmts.Add(1); return t.Tx.Rollback() }

// TestBatchRoundTrips: a batch without failures costs the handler's own
// statement per message plus at most five per transaction (begin, claim,
// complete, outbox insert, commit), not five per message.
func TestBatchRoundTrips(t *testing.T) {
	pg := harness.Postgres(t)
	ctx := ctxT(t)
	db, rt := countingDB(t, pg)
	e := newBatchEnv(t, db, harness.NATS(t))
	const n = 50
	for i := range n {
		e.publish(t, ctx, fmt.Sprint("m", i), fmt.Sprint("k", i), fmt.Sprint("body", i))
	}
	stmts0, begins0 := rt.snapshot()
	stop := runBatch(t, e.batch(t, n))
	eventually(t, 20*time.Second, "all messages settled", func() (bool, error) { return e.settled(ctx) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	stmts, begins := rt.snapshot()
	stmts, begins = stmts-stmts0, begins-begins0
	if eff := e.effects(t, ctx); len(eff) != n {
		t.Fatalf("%d keys with effects, want %d", len(eff), n)
	}
	if c := counts(t, ctx, pg.DB, e.ob); c[outbox.StatePending] != n {
		t.Fatalf("outbox = %v, want %d pending", c, n)
	}
	if begins == 0 || stmts > n+5*begins {
		t.Fatalf("%d statements in %d transactions for %d messages, want at most %d", stmts, begins, n, n+5*begins)
	}
	t.Logf("%d statements in %d transactions for %d messages", stmts, begins, n)
}

// TestBatchFallbackToSavepoints: one failing message in a batch of 50 makes
// the optimistic pass roll back; the batch runs again with a savepoint per
// message, so the 49 others commit once (their first-pass effects are
// gone), and the failing one is dead-lettered (poison) or retried and then
// committed (a panic on the first attempt).
func TestBatchFallbackToSavepoints(t *testing.T) {
	for _, bad := range []string{"poison", "panic"} {
		t.Run(bad, func(t *testing.T) {
			pg := harness.Postgres(t)
			ctx := ctxT(t)
			e := newBatchEnv(t, pg.DB, harness.NATS(t))
			const n = 50
			for i := range n {
				body := fmt.Sprint("body", i)
				if i == 25 {
					body = bad
				}
				e.publish(t, ctx, fmt.Sprint("m", i), fmt.Sprint("k", i), body)
			}
			stop := runBatch(t, e.batch(t, n))
			eventually(t, 20*time.Second, "all messages settled", func() (bool, error) { return e.settled(ctx) })
			if err := stop(); err != nil {
				t.Fatal(err)
			}
			eff := e.effects(t, ctx)
			want := n - 1
			if bad == "panic" {
				want = n
			}
			if len(eff) != want {
				t.Fatalf("%d keys with effects, want %d", len(eff), want)
			}
			for k, c := range eff {
				if c != 1 {
					t.Errorf("key %s applied %d times", k, c)
				}
			}
			if c := counts(t, ctx, pg.DB, e.ob); c[outbox.StatePending] != int64(want) {
				t.Fatalf("outbox = %v, want %d pending", c, want)
			}
			if calls := int(e.calls.Load()); calls <= n {
				t.Fatalf("handler ran %d times: the optimistic pass did not run before the savepoint pass", calls)
			}
			dead := streamMsgs(t, ctx, e.dlq)
			switch {
			case bad == "poison" && (len(dead) != 1 || dead[0].Header.Get(consumer.HeaderReason) != "permanent" || string(dead[0].Data) != "poison"):
				t.Fatalf("dead letters = %d, want the poison message with reason permanent", len(dead))
			case bad == "panic" && len(dead) != 0:
				t.Fatalf("%d dead letters, want none", len(dead))
			}
		})
	}
}

// TestBatchSameKeyTwice: a key claimed by an earlier message of the same
// batch is answered Busy and redelivered soon; the redelivery is then a
// duplicate. The effect is applied once.
func TestBatchSameKeyTwice(t *testing.T) {
	pg := harness.Postgres(t)
	ctx := ctxT(t)
	e := newBatchEnv(t, pg.DB, harness.NATS(t))
	e.publish(t, ctx, "m1", "k", "same")
	e.publish(t, ctx, "m2", "k", "same")
	e.publish(t, ctx, "m3", "other", "x")
	stop := runBatch(t, e.batch(t, 10))
	eventually(t, 20*time.Second, "all messages settled", func() (bool, error) { return e.settled(ctx) })
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if eff := e.effects(t, ctx); eff["k"] != 1 || eff["other"] != 1 || len(eff) != 2 {
		t.Fatalf("effects = %v, want k and other once", eff)
	}
	if n := len(streamMsgs(t, ctx, e.dlq)); n != 0 {
		t.Fatalf("%d dead letters, want none", n)
	}
}
