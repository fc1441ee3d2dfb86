package main

import (
	"context"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/idemq/idemq/integration/harness"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestWorkerContract runs a worker in process on SQLite and an embedded NATS
// server and checks each outcome the contract names: a transfer applied
// once, a duplicate with a fresh timestamp ignored, a conflict, an invalid
// body and a missing key dead-lettered with their reasons, an overdraft
// rejected once and its duplicate replayed, an unknown account dead-lettered
// as permanent.
func TestWorkerContract(t *testing.T) {
	ns := harness.EmbeddedNATS(t)
	dbURL := "sqlite:" + filepath.Join(t.TempDir(), "worker.db")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	w, err := newWorker(ctx, dbURL, ns.URL, names{}, 2, 2*time.Second, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer w.close()
	for id, balance := range map[string]int64{"acc-a": 1000, "acc-b": 1000} {
		if _, err := w.db.ExecContext(ctx, w.db.q(`INSERT INTO accounts (id, balance) VALUES (?, ?)`), id, balance); err != nil {
			t.Fatal(err)
		}
	}
	rctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := w.run(rctx); err != nil {
			t.Errorf("worker: %v", err)
		}
	})
	defer func() {
		stop()
		wg.Wait()
	}()

	publish := func(key, body string) {
		t.Helper()
		msg := nats.NewMsg(subjRequested)
		msg.Data = []byte(body)
		if key != "" {
			msg.Header.Set(headerKey, key)
		}
		if _, err := ns.JS.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	pay := func(id, from, to string, amount, ts int) string {
		return string(mustJSON(payment{PaymentID: id, From: from, To: to, Amount: int64(amount), Currency: "GBP", Timestamp: int64(ts)}))
	}

	publish("k1", pay("p1", "acc-a", "acc-b", 100, 1))
	publish("k3", pay("p3", "acc-a", "acc-b", 1_000_000, 1))
	waitFor(t, ctx, "two ledger rows", func() bool { return ledgerCount(t, w.db, "") == 2 })
	publish("k1", pay("p1", "acc-a", "acc-b", 100, 2))                                                          // duplicate, fresh timestamp
	publish("k1", pay("p1", "acc-a", "acc-b", 200, 3))                                                          // conflict
	publish("k3", pay("p3", "acc-a", "acc-b", 1_000_000, 4))                                                    // duplicate of a rejection
	publish("k2", `{"payment_id":"p2","from":"acc-a","to":"acc-b","amount":-1,"currency":"GBP","timestamp":1}`) // invalid
	publish("", pay("p5", "acc-a", "acc-b", 1, 1))                                                              // no key: invalid
	publish("k4", pay("p4", "acc-a", "acc-nobody", 1, 1))                                                       // unknown account: permanent
	waitFor(t, ctx, "four dead letters", func() bool { return streamMsgs(t, ns.JS, streamDLQ) == 4 })
	waitFor(t, ctx, "every message acknowledged", func() bool {
		c, err := ns.JS.Consumer(ctx, streamPayments, durableWorker)
		if err != nil {
			return false
		}
		info, err := c.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0
	})
	// 8 requests published above, then the 2 outcome events.
	waitFor(t, ctx, "outcome events", func() bool { return streamMsgs(t, ns.JS, streamPayments) >= 10 })

	var a, b int64
	if err := w.db.QueryRowContext(ctx, `SELECT (SELECT balance FROM accounts WHERE id = 'acc-a'), (SELECT balance FROM accounts WHERE id = 'acc-b')`).Scan(&a, &b); err != nil {
		t.Fatal(err)
	}
	if a != 900 || b != 1100 {
		t.Errorf("balances acc-a %d, acc-b %d; want 900 and 1100", a, b)
	}
	if n := ledgerCount(t, w.db, outcomeCompleted); n != 1 {
		t.Errorf("%d completed ledger rows, want 1", n)
	}
	if n := ledgerCount(t, w.db, outcomeRejected); n != 1 {
		t.Errorf("%d rejected ledger rows, want 1", n)
	}

	d := &demo{js: ns.JS, startSeq: map[string]uint64{streamPayments: 1, streamDLQ: 1}}
	reasons := map[string]int{}
	if err := d.readStream(ctx, streamDLQ, func(m jetstream.Msg) {
		if m.Subject() != subjDLQ || m.Headers().Get(headerOrigSubject) != subjRequested {
			t.Errorf("dead letter on %s from %s", m.Subject(), m.Headers().Get(headerOrigSubject))
		}
		reasons[m.Headers().Get(headerReason)]++
	}); err != nil {
		t.Fatal(err)
	}
	if reasons["conflict"] != 1 || reasons["invalid"] != 2 || reasons["permanent"] != 1 {
		t.Errorf("dead-letter reasons %v, want 1 conflict, 2 invalid, 1 permanent", reasons)
	}
	events := map[string]int{}
	if err := d.readStream(ctx, streamPayments, func(m jetstream.Msg) {
		if m.Subject() != subjRequested {
			events[m.Subject()+" "+m.Headers().Get(headerNatsMsgID)]++
		}
	}); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"payments.completed completed.k1": 1, "payments.rejected rejected.k3": 1}
	if len(events) != len(want) || events["payments.completed completed.k1"] != 1 || events["payments.rejected rejected.k3"] != 1 {
		t.Errorf("outcome events %v, want %v", events, want)
	}
}

func ledgerCount(t *testing.T, db *database, outcome string) int {
	t.Helper()
	var n int
	q, args := `SELECT count(*) FROM transfers`, []any{}
	if outcome != "" {
		q, args = q+` WHERE outcome = ?`, append(args, outcome)
	}
	if err := db.QueryRowContext(context.Background(), db.q(q), args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func streamMsgs(t *testing.T, js jetstream.JetStream, name string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), name)
	if err != nil {
		return 0
	}
	return s.CachedInfo().State.Msgs
}

// waitFor polls cond until it holds or ctx ends.
func waitFor(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(20 * time.Millisecond):
		}
	}
}
