package outbox_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/dedupe/sqlstore/pgxconn"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
	"github.com/idemq/idemq/retry"
)

// TestPgxInboxAndOutbox runs the inbox and the outbox writer on pgx alone
// (no *sql.DB in the Inbox, the Store or the Outbox): a handler
// fn(ctx, pgx.Tx, msg) applies its effect and adds an outgoing message in
// the inbox transaction; a redelivery replays the stored result without
// running it, a reused key with another body is a conflict, a rejection is
// committed and replayed. What pgx wrote, database/sql then reads.
func TestPgxInboxAndOutbox(t *testing.T) {
	env := harness.Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := pgxpool.New(ctx, env.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	store, err := sqlstore.NewOn(ctx, pgxconn.Pool(pool), sqlstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	ob, err := outbox.NewOn(ctx, pgxconn.Pool(pool), outbox.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "CREATE TABLE effects (key text, amount int)"); err != nil {
		t.Fatal(err)
	}
	in, err := outbox.NewInbox(nil, outbox.InboxConfig{Guard: &dedupe.Guard{
		Store: store, Key: dedupe.HeaderKey("Idempotency-Key"), Namespace: "pgx", Lease: time.Minute, Retention: time.Hour,
	}})
	if err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int64
	h := in.PgxHandler(pool, func(ctx context.Context, tx pgx.Tx, m *consumer.Message) error {
		runs.Add(1)
		key := m.Header["Idempotency-Key"][0]
		if string(m.Data) == "reject" {
			return consumer.Reject([]byte("402"), errors.New("no money"))
		}
		if _, err := tx.Exec(ctx, "INSERT INTO effects VALUES ($1, 1)", key); err != nil {
			return err
		}
		if err := ob.AddIn(ctx, pgxconn.Tx(tx), outbox.Message{Subject: "done." + key, Data: m.Data}); err != nil {
			return err
		}
		m.SetResult([]byte("ok:" + key))
		return nil
	})
	msg := func(key, body string) *consumer.Message {
		return &consumer.Message{ID: "id-" + key, Header: map[string][]string{"Idempotency-Key": {key}}, Data: []byte(body)}
	}
	first := msg("k1", `{"a":1}`)
	if err := h(ctx, first); err != nil {
		t.Fatalf("first delivery: %v", err)
	}
	again := msg("k1", `{"a":1}`)
	if err := h(ctx, again); err != nil {
		t.Fatalf("redelivery: %v", err)
	}
	if r, _ := again.Result(); string(r) != "ok:k1" || runs.Load() != 1 {
		t.Fatalf("redelivery replayed %q after %d runs, want %q after 1", r, runs.Load(), "ok:k1")
	}
	if err := h(ctx, msg("k1", `{"a":2}`)); !errors.Is(err, consumer.ErrConflict) || !retry.IsPermanent(err) {
		t.Fatalf("reused key with another body: %v, want a permanent conflict", err)
	}
	var rej *consumer.RejectError
	if err := h(ctx, msg("k2", "reject")); !errors.As(err, &rej) || string(rej.Data) != "402" {
		t.Fatalf("rejection: %v", err)
	}
	if err := h(ctx, msg("k2", "reject")); !errors.As(err, &rej) || runs.Load() != 2 {
		t.Fatalf("replayed rejection: %v after %d runs, want a RejectError after 2", err, runs.Load())
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM effects").Scan(&n); err != nil || n != 1 {
		t.Fatalf("effects: %d rows (%v), want 1", n, err)
	}
	// database/sql reads what pgx wrote: one outbox row with the derived
	// id, one done record.
	rows, err := ob.List(ctx, env.DB, nil)
	if err != nil || len(rows) != 1 || rows[0].Subject != "done.k1" || rows[0].ID == "" {
		t.Fatalf("outbox rows through database/sql: %+v, %v", rows, err)
	}
	sq, err := sqlstore.New(ctx, env.DB, sqlstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := sq.Get(ctx, "pgx:k1"); err != nil || r.State != dedupe.StateDone {
		t.Fatalf("record through database/sql: %+v, %v", r, err)
	}
	// The database/sql Handler of a pgx-only Inbox says what to use.
	if err := in.Handler(nil)(ctx, msg("k3", "x")); err == nil {
		t.Fatal("Handler of an Inbox without *sql.DB succeeded")
	}
}
