package outbox_test

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
	"github.com/jackc/pgx/v5"
)

// listener LISTENs on channel; next returns the payload of the next
// notification.
type listener struct {
	conn *pgx.Conn
}

func listen(t *testing.T, ctx context.Context, url, channel string) *listener {
	t.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		t.Fatal(err)
	}
	return &listener{conn: conn}
}

func (l *listener) next(t *testing.T, ctx context.Context) string {
	t.Helper()
	n, err := l.conn.WaitForNotification(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return n.Payload
}

// notified commits one outbox row and reports whether its commit
// signalled the channel: a marker notification sent after the commit
// arrives after any notification of the commit.
func notified(t *testing.T, ctx context.Context, db *sql.DB, ob *outbox.Outbox, l *listener, m outbox.Message) bool {
	t.Helper()
	add(t, ctx, db, ob, m)
	return sawNotification(t, ctx, db, ob, l)
}

// sawNotification reports whether a commit's notification arrived since
// the last marker, sending a new marker.
func sawNotification(t *testing.T, ctx context.Context, db *sql.DB, ob *outbox.Outbox, l *listener) bool {
	t.Helper()
	if _, err := db.ExecContext(ctx, "SELECT pg_notify($1, 'marker')", ob.Channel()); err != nil {
		t.Fatal(err)
	}
	switch p := l.next(t, ctx); p {
	case "":
		if got := l.next(t, ctx); got != "marker" {
			t.Fatalf("after the commit's notification: %q, want the marker", got)
		}
		return true
	case "marker":
		return false
	default:
		t.Fatalf("notification %q", p)
		return false
	}
}

// lockConn returns a connection of its own on db.
func lockConn(t *testing.T, ctx context.Context, db *sql.DB) *sql.Conn {
	t.Helper()
	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func queryBool(t *testing.T, ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, query string) bool {
	t.Helper()
	var b bool
	if err := q.QueryRowContext(ctx, query).Scan(&b); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return b
}

// AddTx skips the NOTIFY exactly while a relay holds the awake lock and no
// relay holds or waits for the inflight lock, and a writer that skipped
// holds inflight until its transaction ends.
func TestAddTxNotifiesUnlessRelayAwake(t *testing.T) {
	pg := harness.Postgres(t)
	ctx := ctxT(t)
	channel := "idemq_wake_" + strings.ToLower(pg.Schema)
	ob := newOutbox(t, pg.DB, outbox.Config{Channel: channel})
	l := listen(t, ctx, pg.URL, channel)
	awake, inflight := outbox.AwakeLockKey(ob.Table()), outbox.InflightLockKey(ob.Table())

	if !notified(t, ctx, pg.DB, ob, l, outbox.Message{ID: "a", Subject: "s"}) {
		t.Fatal("no relay awake: the commit did not notify")
	}

	relay := lockConn(t, ctx, pg.DB)
	if !queryBool(t, ctx, relay, "SELECT pg_try_advisory_lock("+awake+")") {
		t.Fatal("awake lock taken")
	}
	if notified(t, ctx, pg.DB, ob, l, outbox.Message{ID: "b", Subject: "s"}) {
		t.Fatal("relay awake: the commit notified")
	}

	// A relay releasing awake holds (or waits for) inflight: writers
	// notify meanwhile.
	if !queryBool(t, ctx, relay, "SELECT pg_try_advisory_lock("+inflight+")") {
		t.Fatal("inflight lock taken")
	}
	if !notified(t, ctx, pg.DB, ob, l, outbox.Message{ID: "c", Subject: "s"}) {
		t.Fatal("inflight held by a relay: the commit did not notify")
	}
	if !queryBool(t, ctx, relay, "SELECT pg_advisory_unlock("+inflight+")") {
		t.Fatal("inflight not held")
	}

	// A writer that skipped holds inflight until it ends.
	tx, err := pg.DB.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ob.AddTx(ctx, tx, outbox.Message{ID: "d", Subject: "s"}); err != nil {
		t.Fatal(err)
	}
	if queryBool(t, ctx, relay, "SELECT pg_try_advisory_lock("+inflight+")") {
		t.Fatal("inflight free while a writer that skipped its NOTIFY is in its transaction")
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if !queryBool(t, ctx, relay, "SELECT pg_try_advisory_lock("+inflight+") AND pg_advisory_unlock("+inflight+")") {
		t.Fatal("inflight still held after the writer's commit")
	}
	// The writer's session holds neither lock afterwards.
	if !queryBool(t, ctx, relay, "SELECT pg_advisory_unlock("+awake+")") {
		t.Fatal("awake not held")
	}
	if got := counts(t, ctx, pg.DB, ob)[outbox.StatePending]; got != 4 {
		t.Fatalf("%d pending rows, want 4", got)
	}
	var leaked int
	if err := pg.DB.QueryRowContext(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid IN ($1, $2)
		AND objid = $3::regclass::oid`, outbox.AwakeLockClass, outbox.InflightLockClass, ob.Table()).Scan(&leaked); err != nil {
		t.Fatal(err)
	}
	if leaked != 0 {
		t.Fatalf("%d wake-up locks still held", leaked)
	}
}

// An awake relay publishes rows whose writers skipped the NOTIFY without
// polling; when it falls idle it waits for a writer still in its
// transaction and claims that writer's row after the commit; asleep, it is
// woken by NOTIFY again. PollInterval is an hour, so only these paths can
// publish.
func TestAwakeRelayStrandsNoRow(t *testing.T) {
	pg := harness.Postgres(t)
	ctx := ctxT(t)
	e := newRelayEnv(t, pg.DB, harness.NATS(t))
	channel := "idemq_wake_" + strings.ToLower(pg.Schema)
	e.ob = newOutbox(t, pg.DB, outbox.Config{Channel: channel})
	l := listen(t, ctx, pg.URL, channel)
	r := e.relay(t, nil, &outbox.RelayConfig{Channel: channel, PollInterval: time.Hour})
	outbox.SetAwakeIdle(r, time.Hour)
	stop := runRelay(t, r)
	defer func() { _ = stop() }()
	sent := func(n int64) {
		t.Helper()
		eventually(t, 20*time.Second, "rows sent", func() (bool, error) {
			return counts(t, ctx, pg.DB, e.ob)[outbox.StateSent] == n, nil
		})
	}

	outbox.StayAwake(r)
	eventually(t, 10*time.Second, "relay awake", func() (bool, error) { return outbox.Awake(r), nil })
	if notified(t, ctx, pg.DB, e.ob, l, outbox.Message{ID: "skipped", Subject: e.subj("x")}) {
		t.Fatal("relay awake: the commit notified")
	}
	sent(1)

	// A writer in its transaction when the relay falls idle.
	tx, err := pg.DB.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	if err := e.ob.AddTx(ctx, tx, outbox.Message{ID: "in-flight", Subject: e.subj("x")}); err != nil {
		t.Fatal(err)
	}
	outbox.SetAwakeIdle(r, 0)
	eventually(t, 10*time.Second, "relay waiting for the writer", func() (bool, error) {
		var waiting int
		err := pg.DB.QueryRowContext(ctx, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND classid = $1 AND objid = $2::regclass::oid`, outbox.InflightLockClass, e.ob.Table()).Scan(&waiting)
		return waiting == 1, err
	})
	if !outbox.Awake(r) {
		t.Fatal("relay asleep before the writer it waits for committed")
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	sent(2)
	eventually(t, 10*time.Second, "relay asleep", func() (bool, error) { return !outbox.Awake(r), nil })
	if sawNotification(t, ctx, pg.DB, e.ob, l) {
		t.Fatal("the writer in flight while the relay was awake notified")
	}

	// Asleep: the next commit notifies and wakes the relay.
	if !notified(t, ctx, pg.DB, e.ob, l, outbox.Message{ID: "woken", Subject: e.subj("x")}) {
		t.Fatal("relay asleep: the commit did not notify")
	}
	sent(3)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if s := r.Stats(); s.Published != 3 {
		t.Fatalf("published %d, want 3", s.Published)
	}
}

func TestTooFewConnsForWakeUps(t *testing.T) {
	db, err := sql.Open("pgx", "postgres://127.0.0.1:1/none") // never connects
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, tc := range []struct {
		max, workers int
		want         bool
	}{{0, 2, false}, {3, 2, true}, {4, 2, false}, {5, 4, true}, {6, 4, false}} {
		db.SetMaxOpenConns(tc.max)
		if got := outbox.TooFewConns(db, tc.workers); got != tc.want {
			t.Errorf("MaxOpenConns %d, %d workers: tooFewConns = %v, want %v", tc.max, tc.workers, got, tc.want)
		}
	}
}
