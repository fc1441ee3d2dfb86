package outage_test

import (
	"context"
	"database/sql"
	"log/slog"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
)

// TestInboxDatabaseOutage stops the transactional inbox's own Postgres
// (immediate mode) while messages wait, with the default retry policy: the
// inbox reports its database as unavailable (consumer.Unavailable with a
// ping as probe), so the consumer pauses and probes instead of burning
// attempts; when the database is back every message is applied once and
// none is dead-lettered. A dedupe guard is not involved: the inbox is the
// dedupe, and attempts are deliveries.
func TestInboxDatabaseOutage(t *testing.T) {
	t.Parallel()
	env := harness.NATS(t)
	pg := harness.StartPostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	db, err := sql.Open("pgx", pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE effects (k text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	store, err := sqlstore.New(ctx, db, sqlstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	inbox, err := outbox.NewInbox(db, outbox.InboxConfig{Guard: &dedupe.Guard{Store: store, Key: dedupe.HeaderKey("Idempotency-Key")}})
	if err != nil {
		t.Fatal(err)
	}
	w := newWorkload(t, env)
	logs := newLogCounter(t)
	c, err := natsjs.New(env.JS, w.config(slog.New(logs), nil, true), inbox.Handler(func(ctx context.Context, tx *sql.Tx, m *consumer.Message) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO effects (k) VALUES ($1)`, m.Header["Idempotency-Key"][0])
		return err
	}))
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, c)

	pctx, stopProducer := context.WithCancel(ctx)
	keysc := w.produce(pctx, t, 50*time.Millisecond, 0)
	sleepCtx(ctx, 2*time.Second)
	if err := pg.Stop(harness.PostgresImmediate); err != nil {
		t.Fatal(err)
	}
	down := scaled(20*time.Second, 5*time.Second)
	t.Logf("postgres stopped for %v", down)
	sleepCtx(ctx, down)
	if err := pg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	sleepCtx(ctx, 2*time.Second)
	stopProducer()
	keys := <-keysc
	w.settle(t)
	stop()

	applied := map[string]int{}
	rows, err := db.QueryContext(ctx, `SELECT k FROM effects`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var k string
		if err := rows.Scan(&k); err != nil {
			t.Fatal(err)
		}
		applied[k]++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	bad := 0
	for _, k := range keys {
		if applied[k] != 1 {
			bad++
			if bad < 5 {
				t.Errorf("message %s applied %d times", k, applied[k])
			}
		}
	}
	if n := w.deadLetters(t); n != 0 {
		t.Errorf("%d dead letters, want 0", n)
	}
	t.Logf("%d messages through a %v database outage: %d not applied exactly once; %d pauses logged",
		len(keys), down, bad, logs.count("paused consuming"))
	if logs.count("paused consuming") < 1 {
		t.Errorf("the consumer never paused during the database outage")
	}
}
