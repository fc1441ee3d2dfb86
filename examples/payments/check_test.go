package main

import (
	"context"
	"database/sql"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/idemq/idemq/integration/harness"
)

// TestCheckDetectsViolations feeds the checks a run whose ledger applied one
// payment twice, lost another, moved money without a ledger row and has no
// events or dead letters, and expects each affected invariant to fail.
func TestCheckDetectsViolations(t *testing.T) {
	ns := harness.EmbeddedNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d := &demo{
		cfg:      demoConfig{NATSURL: ns.URL, DBURL: "sqlite:" + filepath.Join(t.TempDir(), "check.db"), Payments: 100, Out: io.Discard},
		run:      "rtest01",
		events:   newEventCounter(),
		startSeq: map[string]uint64{},
		start:    time.Now(),
	}
	if err := d.setup(ctx); err != nil {
		t.Fatal(err)
	}
	defer d.db.Close()
	defer d.nc.Close()
	d.cl = newClient("http://127.0.0.1:1", 0, 1)
	d.producer = newProducer(d)
	d.producer.sent = []directMsg{{n: 1, kind: directMalformed, key: "rtest01-m1", data: []byte("x"), reason: "invalid"}}

	a, b := d.accounts[0], d.accounts[1]
	for i, key := range []string{"rtest01-p1", "rtest01-p2"} {
		d.cl.accepted[key] = &job{kind: jobPay, key: key, pay: payment{PaymentID: key, From: a, To: b, Amount: int64(10 * (i + 1)), Currency: "GBP"}}
	}
	// p1 applied twice (and its money moved twice), p2 never.
	for range 2 {
		if err := d.db.inTx(ctx, func(tx *sql.Tx) error {
			return applyTransfer(ctx, d.db, tx, "rtest01-p1", d.cl.accepted["rtest01-p1"].pay)
		}); err != nil {
			t.Fatal(err)
		}
	}
	// Money created from nothing.
	if _, err := d.db.ExecContext(ctx, d.db.q(`UPDATE accounts SET balance = balance + 1 WHERE id = ?`), a); err != nil {
		t.Fatal(err)
	}

	rep, err := d.check(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if rep.ok() {
		t.Fatal("report ok for a run that broke every invariant")
	}
	failed := map[string]bool{}
	for _, inv := range rep.invariants {
		if !inv.ok {
			failed[inv.name] = true
		}
	}
	for _, want := range []string{
		"money conserved",
		"every accepted payment applied exactly once",
		"balances match the ledger, none negative",
		"completed events in the stream = applied payments",
		"request events = accepted payments (API outbox)",
		"DLQ = malformed + conflicts",
	} {
		if !failed[want] {
			t.Errorf("invariant %q held; want it to fail", want)
		}
	}
	var sb strings.Builder
	rep.print(&sb)
	if !strings.Contains(sb.String(), "✗ every accepted payment applied exactly once") {
		t.Errorf("summary does not mark the failure:\n%s", sb.String())
	}
}
