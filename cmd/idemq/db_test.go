package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
)

// eachDB runs fn against a SQLite file in t.TempDir() and a fresh Postgres
// schema (IDEMQ_POSTGRES_URL), giving the open handle and the -db URL.
func eachDB(t *testing.T, fn func(t *testing.T, db *sql.DB, url string)) {
	t.Helper()
	t.Run("sqlite", func(t *testing.T) {
		t.Parallel()
		path := filepath.Join(t.TempDir(), "idemq.db")
		db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = db.Close() })
		fn(t, db, "sqlite:"+path)
	})
	t.Run("postgres", func(t *testing.T) {
		t.Parallel()
		pg := harness.Postgres(t)
		fn(t, pg.DB, pg.URL)
	})
}

func tableExists(ctx context.Context, db *sql.DB, table string) bool {
	rows, err := db.QueryContext(ctx, `SELECT 1 FROM `+table+` WHERE 1 = 0`)
	if err != nil {
		return false
	}
	_ = rows.Close()
	return true
}

// fillOutbox writes two rows to a stream, two to a subject no stream
// captures, runs the real relay until it has marked them sent and failed,
// then adds one pending row. Every row is created 90 s before t0.
func fillOutbox(t *testing.T, ctx context.Context, db *sql.DB) {
	t.Helper()
	fillOutboxAt(t, ctx, db, t0.Add(-90*time.Second))
}

// fillOutboxAt is fillOutbox with every row created at created.
func fillOutboxAt(t *testing.T, ctx context.Context, db *sql.DB, created time.Time) {
	t.Helper()
	env := harness.EmbeddedNATS(t)
	if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: env.Name("GOOD"), Subjects: []string{env.Subject("good.>")}}); err != nil {
		t.Fatal(err)
	}
	ob, err := outbox.New(ctx, db, outbox.Config{Now: func() time.Time { return created }})
	if err != nil {
		t.Fatal(err)
	}
	add := func(msgs ...outbox.Message) {
		t.Helper()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := ob.AddTx(ctx, tx, msgs...); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	add(outbox.Message{ID: "good-1", Subject: env.Subject("good.a"), Data: []byte("1")},
		outbox.Message{ID: "good-2", Subject: env.Subject("good.b"), Data: []byte("2")},
		outbox.Message{ID: "bad-1", Subject: env.Subject("nowhere.a"), Data: []byte("3")},
		outbox.Message{ID: "bad-2", Subject: env.Subject("nowhere.b"), Data: []byte("4")})

	relay, err := outbox.NewRelay(db, outbox.JetStream(env.JS), outbox.RelayConfig{PollInterval: 10 * time.Millisecond, NoListen: true,
		Retention: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- relay.Run(rctx) }()
	for st := relay.Stats(); st.Published < 2 || st.Failed < 2; st = relay.Stats() {
		select {
		case <-ctx.Done():
			stop()
			<-done
			t.Fatalf("relay did not settle the rows: %+v", st)
		case <-time.After(10 * time.Millisecond):
		}
	}
	stop()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("relay: %v", err)
	}
	add(outbox.Message{ID: "late-1", Subject: env.Subject("good.c"), Data: []byte("5")})
}

func TestOutboxCommands(t *testing.T) {
	eachDB(t, func(t *testing.T, db *sql.DB, url string) {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		fillOutbox(t, ctx, db)

		code, out, errOut := runCLI(t, "outbox", "stats", "-db", url)
		if code != exitOK {
			t.Fatalf("stats: exit %d: %s", code, errOut)
		}
		for _, want := range []string{"table    idemq_outbox", "pending  1\n", "sent     2\n", "failed   2\n",
			"oldest pending: 1m30s (seq 5, id late-1, created " + t0.Add(-90*time.Second).Format(time.RFC3339) + ")"} {
			if !strings.Contains(out, want) {
				t.Errorf("stats lacks %q:\n%s", want, out)
			}
		}

		code, out, errOut = runCLI(t, "outbox", "failed", "-db", url)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if code != exitOK || len(lines) != 3 || !strings.HasPrefix(lines[0], "SEQ") {
			t.Fatalf("failed: exit %d\n%s\n%s", code, out, errOut)
		}
		for i, id := range []string{"bad-1", "bad-2"} {
			if f := strings.Fields(lines[i+1]); f[1] != id || !strings.Contains(lines[i+1], "no response") {
				t.Errorf("failed row %d: %q", i, lines[i+1])
			}
		}
		if _, out, _ = runCLI(t, "outbox", "failed", "-db", url, "-limit", "1"); strings.Count(out, "\n") != 2 {
			t.Errorf("failed -limit 1:\n%s", out)
		}

		code, out, _ = runCLI(t, "outbox", "retry", "-db", url, "-id", "bad-1")
		if code != exitOK || out != "requeued 1 rows\n" {
			t.Fatalf("retry -id bad-1: exit %d %q", code, out)
		}
		// bad-1 is pending now and "nope" does not exist: nothing to requeue.
		code, out, errOut = runCLI(t, "outbox", "retry", "-db", url, "-id", "bad-1,nope")
		if code != exitError || out != "requeued 0 rows\n" || !strings.Contains(errOut, errNotRequeued.Error()) {
			t.Fatalf("retry -id bad-1,nope: exit %d %q %q", code, out, errOut)
		}
		code, out, _ = runCLI(t, "outbox", "retry", "-db", url, "-all-failed")
		if code != exitOK || out != "requeued 1 rows\n" {
			t.Fatalf("retry -all-failed: exit %d %q", code, out)
		}
		_, out, _ = runCLI(t, "outbox", "stats", "-db", url)
		if !strings.Contains(out, "pending  3\n") || !strings.Contains(out, "failed   0\n") {
			t.Errorf("stats after retry:\n%s", out)
		}
		if _, out, _ = runCLI(t, "outbox", "failed", "-db", url); out != "no failed rows\n" {
			t.Errorf("failed after retry: %q", out)
		}

		// Inspection never creates a table.
		code, _, _ = runCLI(t, "outbox", "stats", "-db", url, "-table", "missing_outbox")
		if code != exitError || tableExists(ctx, db, "missing_outbox") {
			t.Errorf("stats on a missing table: exit %d, table created: %v", code, tableExists(ctx, db, "missing_outbox"))
		}
	})
}

func TestOutboxRetryAllFailedFunc(t *testing.T) {
	eachDB(t, func(t *testing.T, db *sql.DB, url string) {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		fillOutbox(t, ctx, db)
		ob, err := outbox.New(ctx, db, outbox.Config{SkipCreate: true})
		if err != nil {
			t.Fatal(err)
		}
		n, err := outboxRetry(ctx, db, ob, nil, true)
		if err != nil || n != 2 {
			t.Fatalf("outboxRetry(-all-failed) = %d, %v; want 2", n, err)
		}
		n, err = outboxRetry(ctx, db, ob, []string{"good-1"}, false)
		if !errors.Is(err, errNotRequeued) || n != 0 {
			t.Fatalf("outboxRetry(sent row) = %d, %v; want 0, errNotRequeued", n, err)
		}
	})
}

func TestDedupeGet(t *testing.T) {
	eachDB(t, func(t *testing.T, db *sql.DB, url string) {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		store, err := sqlstore.New(ctx, db, sqlstore.Config{})
		if err != nil {
			t.Fatal(err)
		}
		g := &dedupe.Guard{Store: store, Namespace: "payments", Lease: 10 * time.Minute, Retention: 24 * time.Hour}
		done, err := g.ClaimKey(ctx, "k-done", "fp-1")
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Complete(ctx, done, dedupe.Result{Data: []byte("hello")}); err != nil {
			t.Fatal(err)
		}
		if _, err := g.ClaimKey(ctx, "k-busy", "fp-2"); err != nil {
			t.Fatal(err)
		}
		long := strings.Repeat("x", 300)
		lt, err := g.ClaimKey(ctx, long, "")
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Complete(ctx, lt, dedupe.Result{Failed: true, Data: []byte("402")}); err != nil {
			t.Fatal(err)
		}

		a, out, errb := testApp()
		a.now = time.Now
		code := a.run(ctx, []string{"dedupe", "get", "-db", url, "-namespace", "payments", "k-done"})
		if code != exitOK {
			t.Fatalf("get k-done: exit %d: %s", code, errb)
		}
		for _, want := range []string{"key:         payments:k-done\n", "state:       done\n", "fingerprint: fp-1\n",
			"lease until: -\n", "result:      5 bytes\n"} {
			if !strings.Contains(out.String(), want) {
				t.Errorf("get k-done lacks %q:\n%s", want, out)
			}
		}

		a, out, _ = testApp()
		a.now = time.Now
		if code := a.run(ctx, []string{"dedupe", "get", "-json", "-db", url, "-namespace", "payments", "k-busy"}); code != exitOK {
			t.Fatalf("get k-busy: exit %d", code)
		}
		var v recordView
		if err := json.Unmarshal(out.Bytes(), &v); err != nil {
			t.Fatalf("-json %q: %v", out, err)
		}
		if v.Key != "payments:k-busy" || v.State != "in_progress" || !v.LeaseAlive || v.Fingerprint != "fp-2" || v.Token == "" {
			t.Errorf("k-busy: %+v", v)
		}

		// A long key is found under its hashed stored key.
		code, outS, errS := runCLI(t, "dedupe", "get", "-db", url, "-namespace", "payments", long)
		if code != exitOK || !strings.Contains(outS, "key:         "+lt.Key+"\n") || !strings.Contains(outS, "state:       failed") {
			t.Fatalf("get long key: exit %d\n%s\n%s", code, outS, errS)
		}

		// Without the namespace the key is not found, and the error names
		// the namespace that finds it.
		code, _, errS = runCLI(t, "dedupe", "get", "-db", url, "k-done")
		if code != exitError || !strings.Contains(errS, "record not found") || !strings.Contains(errS, `"payments:k-done" (-namespace payments)`) {
			t.Errorf("get without namespace: exit %d %q; want a miss naming -namespace payments", code, errS)
		}
		src := &sqlSource{db: db, store: store, url: url, table: sqlstore.DefaultTable}
		if err := dedupeGet(ctx, src, &dedupe.Guard{}, "k-done", time.Now(), false, io.Discard); !errors.Is(err, sqlstore.ErrNotFound) || !errors.Is(err, errRecordNotFound) {
			t.Errorf("dedupeGet(k-done) = %v, want sqlstore.ErrNotFound", err)
		}
		// A key stored nowhere says how keys are stored.
		code, _, errS = runCLI(t, "dedupe", "get", "-db", url, "-namespace", "other", "nowhere")
		if code != exitError || !strings.Contains(errS, `stored key "other:nowhere"`) || !strings.Contains(errS, "-namespace NS") {
			t.Errorf("get of an unknown key: exit %d %q", code, errS)
		}

		// A missing table is an error and is not created.
		code, _, _ = runCLI(t, "dedupe", "get", "-db", url, "-table", "missing_dedupe", "k")
		if code != exitError || tableExists(ctx, db, "missing_dedupe") {
			t.Errorf("get on a missing table: exit %d, created %v", code, tableExists(ctx, db, "missing_dedupe"))
		}
		if code, _, _ := runCLI(t, "dedupe", "get", "-db", url, "-table", "bad;name", "k"); code != exitError {
			t.Errorf("get with a bad table name: exit %d", code)
		}
	})
}
