package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/idemq/idemq/integration/harness"
	"github.com/nats-io/nats.go/jetstream"
)

// e2ePayments keeps each end-to-end run around ten seconds (twenty with -race).
const e2ePayments = 400

// runE2E runs the demo against natsURL and dbURL, its names prefixed with
// prefix ("" for the contract's), with the test binary as the worker and
// api executable, and fails the test unless every invariant holds.
// The demo itself SIGKILLs workers mid-run and the API once, and checks the
// invariants from the database and the streams; the test then checks again
// directly, with its own queries.
func runE2E(t *testing.T, natsURL, dbURL, prefix string, payments int) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	rep, err := runDemo(ctx, demoConfig{
		Payments:    payments,
		Workers:     2,
		Concurrency: 4,
		Clients:     8,
		DropRate:    0.2,
		NATSURL:     natsURL,
		DBURL:       dbURL,
		Drain:       30 * time.Second,
		Exe:         exe,
		Out:         &out,
		Prefix:      prefix,
	})
	t.Log("\n" + out.String())
	if err != nil {
		t.Fatalf("demo: %v", err)
	}
	if !rep.ok() {
		t.Fatal("an invariant did not hold (see the summary above)")
	}
	if rep.crashes < 2 {
		t.Fatalf("the demo crashed %d processes, want several", rep.crashes)
	}
	for _, want := range []string{"money conserved", "every accepted payment applied exactly once",
		"completed events in the stream = applied payments", "DLQ = malformed + conflicts"} {
		if !strings.Contains(out.String(), "✓ "+want) {
			t.Errorf("summary lacks %q", want)
		}
	}
	nm, err := namesFor(prefix)
	if err != nil {
		t.Fatal(err)
	}
	verifyIndependently(t, ctx, dbURL, nm, payments, rep)
}

// verifyIndependently re-checks the main invariants with fresh connections
// and plain queries, not through the demo's own checking code.
func verifyIndependently(t *testing.T, ctx context.Context, dbURL string, nm names, payments int, rep *report) {
	t.Helper()
	db, err := openDB(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.nm = nm
	var sum, n int64
	if err := db.QueryRowContext(ctx, db.q(`SELECT coalesce(sum(balance), 0), count(*) FROM accounts WHERE id LIKE ?`), "acc-"+rep.run+"-%").Scan(&sum, &n); err != nil {
		t.Fatal(err)
	}
	if n != demoAccounts || sum != demoAccounts*demoInitialBalance {
		t.Errorf("accounts: %d with total %d, want %d with total %d", n, sum, demoAccounts, demoAccounts*demoInitialBalance)
	}
	var doubled int64
	if err := db.QueryRowContext(ctx, db.q(`SELECT count(*) FROM (SELECT idempotency_key FROM transfers WHERE idempotency_key LIKE ?
		GROUP BY idempotency_key HAVING count(*) > 1) d`), rep.run+"-%").Scan(&doubled); err != nil {
		t.Fatal(err)
	}
	if doubled != 0 {
		t.Errorf("%d keys applied more than once", doubled)
	}
	var completed int64
	if err := db.QueryRowContext(ctx, db.q(`SELECT count(*) FROM transfers WHERE idempotency_key LIKE ? AND outcome = ?`), rep.run+"-%", outcomeCompleted).Scan(&completed); err != nil {
		t.Fatal(err)
	}
	if completed < int64(payments)/2 {
		t.Errorf("only %d of %d payments completed", completed, payments)
	}
	if int(completed) != rep.completedEvents {
		t.Errorf("%d completed transfers, %d completed events", completed, rep.completedEvents)
	}
}

// TestE2EPostgresEmbeddedNATS runs the example against the real Postgres
// (a schema of its own) with an embedded NATS server for the streams, whose
// names the contract fixes.
func TestE2EPostgresEmbeddedNATS(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	pg := harness.Postgres(t)
	ns := harness.EmbeddedNATS(t)
	runE2E(t, ns.URL, pg.URL, "", e2ePayments)
}

// TestE2EPostgresRealNATS runs the example against the real Postgres and
// the real, shared NATS server with -prefix, as anyone sharing a server
// would: its streams, subjects and consumer carry the prefix, so it touches
// no PAYMENTS or DLQ stream of anyone else and needs no purge. The test
// checks that the prefixed streams are the ones used, and deletes them
// afterwards.
func TestE2EPostgresRealNATS(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	pg := harness.Postgres(t)
	ns := harness.NATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	prefix := strings.ReplaceAll(ns.Name("e2e"), "-", "_")
	nm, err := namesFor(prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, name := range []string{nm.paymentsStream(), nm.dlqStream()} {
			if err := ns.JS.DeleteStream(context.Background(), name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Errorf("delete stream %s: %v", name, err)
			}
		}
	})
	runE2E(t, ns.URL, pg.URL, prefix, e2ePayments)
	for _, name := range []string{nm.paymentsStream(), nm.dlqStream()} {
		s, err := ns.JS.Stream(ctx, name)
		if err != nil || s.CachedInfo().State.Msgs == 0 {
			t.Fatalf("prefixed stream %s: %v, or empty; the demo did not use it", name, err)
		}
	}
	if _, err := ns.JS.Consumer(ctx, nm.paymentsStream(), nm.durable()); err != nil {
		t.Errorf("prefixed consumer %s: %v", nm.durable(), err)
	}
}

// TestE2ESQLiteEmbedded runs the zero-set-up configuration of the demo
// (SQLite, embedded NATS), smaller: the real-service variants are the point.
func TestE2ESQLiteEmbedded(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	ns := harness.EmbeddedNATS(t)
	runE2E(t, ns.URL, "sqlite:"+t.TempDir()+"/payments.db", "", e2ePayments/2)
}
