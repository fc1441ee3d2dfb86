package outbox_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
	"github.com/idemq/idemq/retry"
)

// inboxEnv is an inbox, an outbox and an effects table on one database.
type inboxEnv struct {
	db     *sql.DB
	in     *outbox.Inbox
	ob     *outbox.Outbox
	sqlite bool
}

func newInboxEnv(t testing.TB, db *sql.DB, g *dedupe.Guard) *inboxEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := sqlstore.New(ctx, db, sqlstore.Config{})
	if err != nil {
		t.Fatalf("sqlstore.New: %v", err)
	}
	if g == nil {
		g = &dedupe.Guard{Key: dedupe.HeaderKey("Idempotency-Key")}
	}
	g.Store = st
	in, err := outbox.NewInbox(db, outbox.InboxConfig{Guard: g})
	if err != nil {
		t.Fatal(err)
	}
	ob, err := outbox.New(ctx, db, outbox.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS effects (k TEXT NOT NULL, v TEXT NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	return &inboxEnv{db: db, in: in, ob: ob, sqlite: sqlstore.DetectDialect(db) == sqlstore.SQLite}
}

// effect applies a non-idempotent write: one more row for k.
func (e *inboxEnv) effect(ctx context.Context, tx *sql.Tx, k, v string) error {
	q := `INSERT INTO effects (k, v) VALUES ($1, $2)`
	if e.sqlite {
		q = `INSERT INTO effects (k, v) VALUES (?, ?)`
	}
	_, err := tx.ExecContext(ctx, q, k, v)
	return err
}

func (e *inboxEnv) effects(t testing.TB, ctx context.Context) map[string]int {
	t.Helper()
	rs, err := e.db.QueryContext(ctx, `SELECT k, COUNT(*) FROM effects GROUP BY k`)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	out := map[string]int{}
	for rs.Next() {
		var k string
		var n int
		if err := rs.Scan(&k, &n); err != nil {
			t.Fatal(err)
		}
		out[k] = n
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func TestInboxHandle(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *sql.DB) {
		ctx := ctxT(t)
		e := newInboxEnv(t, db, nil)
		calls := 0
		fn := func(res dedupe.Result, fail error) outbox.TxFunc {
			return func(ctx context.Context, tx *sql.Tx) (dedupe.Result, error) {
				calls++
				if err := e.effect(ctx, tx, "k1", "x"); err != nil {
					return dedupe.Result{}, err
				}
				if err := e.ob.AddTx(ctx, tx, outbox.Message{Subject: "out.done"}); err != nil {
					return dedupe.Result{}, err
				}
				return res, fail
			}
		}
		// A failing attempt leaves nothing behind: no effect, no record, no message.
		errBoom := errors.New("boom")
		if _, err := e.in.Handle(ctx, "k1", "fp1", fn(dedupe.Result{}, errBoom)); !errors.Is(err, errBoom) {
			t.Fatalf("Handle = %v, want boom", err)
		}
		if n := e.effects(t, ctx)["k1"]; n != 0 {
			t.Fatalf("effects after failure = %d", n)
		}
		out, err := e.in.Handle(ctx, "k1", "fp1", fn(dedupe.Result{Data: []byte("ok")}, nil))
		if err != nil || out.Status != dedupe.Acquired || string(out.Result.Data) != "ok" {
			t.Fatalf("Handle = %+v, %v", out, err)
		}
		out, err = e.in.Handle(ctx, "k1", "fp1", fn(dedupe.Result{Data: []byte("again")}, nil))
		if err != nil || out.Status != dedupe.Duplicate || string(out.Result.Data) != "ok" {
			t.Fatalf("duplicate Handle = %+v, %v", out, err)
		}
		out, err = e.in.Handle(ctx, "k1", "other-fp", fn(dedupe.Result{}, nil))
		if !errors.Is(err, consumer.ErrConflict) || out.Status != dedupe.Conflict {
			t.Fatalf("conflicting Handle = %+v, %v", out, err)
		}
		if calls != 2 {
			t.Fatalf("fn ran %d times, want 2", calls)
		}
		if n := e.effects(t, ctx)["k1"]; n != 1 {
			t.Fatalf("effects = %d, want 1", n)
		}
		rows, err := e.ob.List(ctx, db, nil)
		if err != nil || len(rows) != 1 || rows[0].ID != "k1#0" {
			t.Fatalf("outbox rows = %+v, %v", rows, err)
		}

		// A business failure is committed and replayed, not re-run.
		out, err = e.in.Handle(ctx, "k2", "", fn(dedupe.Result{Failed: true, Data: []byte("402")}, nil))
		if err != nil || out.Status != dedupe.Acquired {
			t.Fatalf("rejecting Handle = %+v, %v", out, err)
		}
		out, err = e.in.Handle(ctx, "k2", "", fn(dedupe.Result{}, nil))
		if err != nil || out.Status != dedupe.Duplicate || !out.Result.Failed || string(out.Result.Data) != "402" {
			t.Fatalf("replayed rejection = %+v, %v", out, err)
		}
	})
}

// A concurrent duplicate waits for the first transaction on the unique key
// and then sees its committed record.
func TestInboxConcurrentDuplicateWaits(t *testing.T) {
	pg := harness.Postgres(t)
	ctx := ctxT(t)
	e := newInboxEnv(t, pg.DB, nil)
	var calls atomic.Int32
	inFn, release := make(chan struct{}), make(chan struct{})
	first := make(chan error, 1)
	go func() {
		_, err := e.in.Handle(ctx, "same", "", func(ctx context.Context, tx *sql.Tx) (dedupe.Result, error) {
			calls.Add(1)
			close(inFn)
			<-release
			return dedupe.Result{Data: []byte("first")}, e.effect(ctx, tx, "same", "1")
		})
		first <- err
	}()
	<-inFn
	second := make(chan outbox.InboxOutcome, 1)
	go func() {
		out, err := e.in.Handle(ctx, "same", "", func(ctx context.Context, tx *sql.Tx) (dedupe.Result, error) {
			calls.Add(1)
			return dedupe.Result{Data: []byte("second")}, e.effect(ctx, tx, "same", "2")
		})
		if err != nil {
			t.Errorf("second Handle: %v", err)
		}
		second <- out
	}()
	// The second transaction blocks on the first one's uncommitted key.
	eventually(t, 10*time.Second, "second claim waits on a lock", func() (bool, error) {
		var n int
		err := pg.DB.QueryRowContext(ctx, `SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'`).Scan(&n)
		return n > 0, err
	})
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	out := <-second
	if out.Status != dedupe.Duplicate || string(out.Result.Data) != "first" || calls.Load() != 1 {
		t.Fatalf("second = %+v, fn calls %d", out, calls.Load())
	}
	if n := e.effects(t, ctx)["same"]; n != 1 {
		t.Fatalf("effects = %d", n)
	}
}

func TestInboxHandlerAdapter(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *sql.DB) {
		ctx := ctxT(t)
		e := newInboxEnv(t, db, &dedupe.Guard{Key: dedupe.HeaderKey("Idempotency-Key"), Fingerprint: &dedupe.Fingerprinter{}, Namespace: "pay"})
		var calls atomic.Int32
		h := e.in.Handler(func(ctx context.Context, tx *sql.Tx, m *consumer.Message) error {
			calls.Add(1)
			if string(m.Data) == `{"amount":0}` {
				return consumer.Reject([]byte("402"), errors.New("no money"))
			}
			if string(m.Data) == `{"amount":-1}` {
				return errors.New("database hiccup")
			}
			if err := e.effect(ctx, tx, m.Header["Idempotency-Key"][0], string(m.Data)); err != nil {
				return err
			}
			m.SetResult([]byte("done"))
			return e.ob.AddTx(ctx, tx, outbox.Message{Subject: "pay.completed"}, outbox.Message{ID: "completed." + m.Header["Idempotency-Key"][0], Subject: "pay.completed"})
		})
		pipe, err := consumer.NewPipeline(consumer.Config{Retry: retry.Policy{MaxAttempts: 3}, Logger: quiet}, h)
		if err != nil {
			t.Fatal(err)
		}
		msg := func(id, key, body string, attempt int) *consumer.Message {
			return &consumer.Message{ID: id, Subject: "pay.requested", Data: []byte(body), Attempt: attempt,
				Header: map[string][]string{"Idempotency-Key": {key}, "traceparent": {"00-abc-def-01"}}}
		}
		out := pipe.Process(ctx, msg("m1", "k1", `{"amount":5}`, 1))
		if out.Action != consumer.Ack || out.Result == nil || string(out.Result.Data) != "done" {
			t.Fatalf("first: %+v", out)
		}
		out = pipe.Process(ctx, msg("m1", "k1", `{"amount":5}`, 2)) // redelivery
		if out.Action != consumer.Ack || string(out.Result.Data) != "done" {
			t.Fatalf("duplicate: %+v", out)
		}
		out = pipe.Process(ctx, msg("m2", "k1", `{"amount":6}`, 1)) // same key, other body
		if out.Action != consumer.DeadLetter || !errors.Is(out.Err, consumer.ErrConflict) {
			t.Fatalf("conflict: %+v", out)
		}
		out = pipe.Process(ctx, msg("m3", "k3", `{"amount":0}`, 1))
		if out.Action != consumer.Ack || out.Result == nil || !out.Result.Failed {
			t.Fatalf("reject: %+v", out)
		}
		out = pipe.Process(ctx, msg("m3", "k3", `{"amount":0}`, 2))
		if out.Action != consumer.Ack || !out.Result.Failed || string(out.Result.Data) != "402" {
			t.Fatalf("replayed reject: %+v", out)
		}
		out = pipe.Process(ctx, msg("m4", "k4", `{"amount":-1}`, 1))
		if out.Action != consumer.Retry {
			t.Fatalf("transient: %+v", out)
		}
		out = pipe.Process(ctx, &consumer.Message{ID: "m5", Data: []byte(`{}`), Attempt: 1})
		if out.Action != consumer.DeadLetter || !dedupe.IsInvalidInput(out.Err) {
			t.Fatalf("missing key: %+v", out)
		}
		if got := calls.Load(); got != 3 {
			t.Fatalf("handler ran %d times, want 3 (k1, k3, k4)", got)
		}
		if eff := e.effects(t, ctx); fmt.Sprint(eff) != "map[k1:1]" {
			t.Fatalf("effects = %v", eff)
		}
		rows, err := e.ob.List(ctx, db, nil)
		if err != nil || len(rows) != 2 {
			t.Fatalf("outbox rows = %+v, %v", rows, err)
		}
		if rows[0].ID != "m1#0" || rows[1].ID != "completed.k1" ||
			rows[0].Header[outbox.HeaderCausationID][0] != "m1" || rows[0].Header[outbox.HeaderTraceparent][0] != "00-abc-def-01" {
			t.Fatalf("outbox rows = %+v", rows)
		}
	})
}
