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

// runE2E runs the demo against natsURL and dbURL with the test binary as the
// worker and api executable, and fails the test unless every invariant holds.
// The demo itself SIGKILLs workers mid-run and the API once, and checks the
// invariants from the database and the streams; the test then checks again
// directly, with its own queries.
func runE2E(t *testing.T, natsURL, dbURL string, payments int) {
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
	verifyIndependently(t, ctx, dbURL, payments, rep)
}

// verifyIndependently re-checks the main invariants with fresh connections
// and plain queries, not through the demo's own checking code.
func verifyIndependently(t *testing.T, ctx context.Context, dbURL string, payments int, rep *report) {
	t.Helper()
	db, err := openDB(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
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
	runE2E(t, ns.URL, pg.URL, e2ePayments)
}

// TestE2EPostgresRealNATS runs the example against the real Postgres and
// the real NATS server. The contract fixes the stream names PAYMENTS and DLQ,
// so the test cannot use the harness's prefixed names: it purges both
// streams first, and must not run in parallel with anything else using them.
// The demo only counts messages of its own run (keys and headers carry a run
// id), so leftovers from other runs cannot make it pass or fail.
func TestE2EPostgresRealNATS(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	pg := harness.Postgres(t)
	ns := harness.NATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	purge := func() {
		for _, name := range []string{streamPayments, streamDLQ} {
			s, err := ns.JS.Stream(ctx, name)
			if errors.Is(err, jetstream.ErrStreamNotFound) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Purge(ctx); err != nil {
				t.Fatalf("purge %s: %v", name, err)
			}
		}
	}
	purge()
	runE2E(t, ns.URL, pg.URL, e2ePayments)
	purge() // leave no payments behind on the shared server
}

// TestE2ESQLiteEmbedded runs the zero-set-up configuration of the demo
// (SQLite, embedded NATS), smaller: the real-service variants are the point.
func TestE2ESQLiteEmbedded(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	ns := harness.EmbeddedNATS(t)
	runE2E(t, ns.URL, "sqlite:"+t.TempDir()+"/payments.db", e2ePayments/2)
}
