package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// chaosReport is the result of a TestPaymentsChaos run: the figures and
// the invariants, each with the numbers it was decided on.
type chaosReport struct {
	settled      bool
	setup, total time.Duration
	figures      []string
	checks       []checkResult
}

type checkResult struct {
	name   string
	ok     bool
	detail string
}

func (rep *chaosReport) add(name string, ok bool, format string, args ...any) {
	rep.checks = append(rep.checks, checkResult{name: name, ok: ok, detail: fmt.Sprintf(format, args...)})
}

func (rep *chaosReport) ok() bool {
	for _, c := range rep.checks {
		if !c.ok {
			return false
		}
	}
	return rep.settled && len(rep.checks) > 0
}

// String renders the report.
func (rep *chaosReport) String(r *chaosRun) string {
	var b strings.Builder
	cfg := r.cfg
	fmt.Fprintf(&b, "\n── chaos report · %s mode · seed %d · %.1fs in all (setup %.1fs) ──\n", cfg.mode, r.wl.seed, rep.total.Seconds(), rep.setup.Seconds())
	fmt.Fprintf(&b, "  system: 3-node nats-server %s cluster (%s), R3 streams PAYMENTS and DLQ; Postgres of the test's own on port %d; %d payments worker processes (-concurrency %d, -ack-wait %v)\n",
		r.env.Conn.ConnectedServerVersion(), r.c.Name, r.pg.Port, cfg.workers, cfg.concurrency, cfg.ackWait)
	fmt.Fprintf(&b, "  not done: no Redis master kill: the payments worker keeps its dedupe records in Postgres (SQL inbox), no Redis is involved\n")
	fmt.Fprintf(&b, "\nwhat was done, and when (since the workers were ready)\n%s\n", joinLines(r.tl.all(), "  "))
	fmt.Fprintf(&b, "\nfigures\n%s\n", joinLines(rep.figures, "  "))
	fmt.Fprintf(&b, "\ninvariants (checked from the database and the streams)\n")
	for _, c := range rep.checks {
		mark := "✓"
		if !c.ok {
			mark = "✗"
		}
		fmt.Fprintf(&b, "  %s %s\n      %s\n", mark, c.name, c.detail)
	}
	if !rep.settled {
		fmt.Fprintf(&b, "  ✗ the backlog did not drain within %v: the counts above may be incomplete\n", cfg.settle)
	}
	if rep.ok() {
		fmt.Fprintf(&b, "\nall invariants hold\n")
	} else {
		fmt.Fprintf(&b, "\nSOME INVARIANTS DO NOT HOLD\n")
	}
	return b.String()
}

// ledgerRow is one row of the workers' transfers table.
type ledgerRow struct {
	key, paymentID, from, to, outcome string
	amount                            int64
}

// outcomeEvent is the body of payments.completed and payments.rejected.
type outcomeEvent struct {
	payment
	Status string `json:"status"`
	Code   int    `json:"code"`
}

// check computes the report after the workers stopped.
func (r *chaosRun) check(ctx context.Context, settled bool) *chaosReport {
	rep := &chaosReport{settled: settled}
	t := r.t
	sent := r.wl.published()
	byKind := map[kind]int{}
	for _, m := range sent {
		byKind[m.kind]++
	}

	// The ledger and the balances.
	var ledger []ledgerRow
	if err := retryFor(ctx, "read the ledger", func(ctx context.Context) error {
		ledger = ledger[:0]
		rows, err := r.db.QueryContext(ctx, `SELECT idempotency_key, payment_id, from_account, to_account, amount, outcome FROM transfers`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var l ledgerRow
			if err := rows.Scan(&l.key, &l.paymentID, &l.from, &l.to, &l.amount, &l.outcome); err != nil {
				return err
			}
			ledger = append(ledger, l)
		}
		return rows.Err()
	}); err != nil {
		t.Fatal(err)
	}
	balances := map[string]int64{}
	if err := retryFor(ctx, "read the balances", func(ctx context.Context) error {
		rows, err := r.db.QueryContext(ctx, `SELECT id, balance FROM accounts`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var id string
			var bal int64
			if err := rows.Scan(&id, &bal); err != nil {
				return err
			}
			balances[id] = bal
		}
		return rows.Err()
	}); err != nil {
		t.Fatal(err)
	}
	outboxRows := map[string]int64{}
	if err := retryFor(ctx, "read the outbox", func(ctx context.Context) error {
		rows, err := r.db.QueryContext(ctx, `SELECT state, count(*) FROM idemq_outbox GROUP BY state`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var s string
			var n int64
			if err := rows.Scan(&s, &n); err != nil {
				return err
			}
			outboxRows[s] = n
		}
		return rows.Err()
	}); err != nil {
		t.Fatal(err)
	}

	// The streams: replicas first, so that the reads see a settled stream.
	var current []string
	for _, s := range []string{streamPayments, streamDLQ} {
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		err := r.c.WaitStreamCurrent(cctx, r.env.JS, s)
		cancel()
		info, ierr := streamInfo(ctx, r.env.JS, s)
		switch {
		case err != nil:
			current = append(current, fmt.Sprintf("%s: %v", s, err))
		case ierr != nil:
			current = append(current, fmt.Sprintf("%s: %v", s, ierr))
		case info.Config.Replicas != 3 || len(info.Cluster.Replicas) != 2:
			current = append(current, fmt.Sprintf("%s: %d replicas configured, %d followers", s, info.Config.Replicas, len(info.Cluster.Replicas)))
		}
	}
	completed, rejected := map[string]*streamEvent{}, map[string]*streamEvent{}
	requested := map[string]int{} // Chaos-Msg → copies
	var badEvents []string
	if err := readStream(ctx, r.env.JS, streamPayments, func(m jetstream.Msg) {
		id := m.Headers().Get(jetstream.MsgIDHeader)
		var into map[string]*streamEvent
		var key string
		switch m.Subject() {
		case subjRequested:
			requested[m.Headers().Get(headerChaosMsg)]++
			return
		case subjCompleted:
			into, key = completed, strings.TrimPrefix(id, "completed.")
		case subjRejected:
			into, key = rejected, strings.TrimPrefix(id, "rejected.")
		default:
			badEvents = append(badEvents, "subject "+m.Subject())
			return
		}
		e := into[key]
		if e == nil {
			e = &streamEvent{}
			into[key] = e
		}
		e.copies++
		if err := json.Unmarshal(m.Data(), &e.ev); err != nil {
			badEvents = append(badEvents, fmt.Sprintf("%s: %v", id, err))
		}
	}); err != nil {
		t.Fatal(err)
	}
	type letter struct {
		n, reason, origSubject, origStream, subject, key string
		data                                             []byte
	}
	var letters []letter
	if err := readStream(ctx, r.env.JS, streamDLQ, func(m jetstream.Msg) {
		h := m.Headers()
		letters = append(letters, letter{n: h.Get(headerChaosMsg), reason: h.Get(headerReason), origSubject: h.Get(headerOrigSubject),
			origStream: h.Get(headerOrigStream), subject: m.Subject(), key: h.Get(headerKey), data: append([]byte(nil), m.Data()...)})
	}); err != nil {
		t.Fatal(err)
	}
	var ci *jetstream.ConsumerInfo
	if err := retryFor(ctx, "consumer info", func(ctx context.Context) error {
		c, err := r.env.JS.Consumer(ctx, streamPayments, durableWorker)
		if err == nil {
			ci, err = c.Info(ctx)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}

	// Figures.
	ledgerCompleted, ledgerRejected := 0, 0
	for _, l := range ledger {
		if l.outcome == "completed" {
			ledgerCompleted++
		} else {
			ledgerRejected++
		}
	}
	exits := r.ws.unexpectedExits()
	var exitLines []string
	for _, e := range exits {
		exitLines = append(exitLines, fmt.Sprintf("    %6.1fs %s (ready: %v): %s; last lines: %s", (e.at-r.tl.start.Sub(r.ws.start)).Seconds(), e.name, e.ready, e.err, strings.Join(e.last, " | ")))
	}
	rep.figures = []string{
		fmt.Sprintf("published     %d messages to %s: %d payments + %d overdrafts, %d duplicates with a fresh timestamp (%d soon after their original, %d of applied payments), %d conflicting reuses of applied keys, %d malformed",
			len(sent), subjRequested, byKind[kindPayment], byKind[kindOverdraft], byKind[kindDuplicate], countsFor(r.cfg.payments).nearDups, countsFor(r.cfg.payments).lateDups, byKind[kindConflict], byKind[kindMalformed]),
		fmt.Sprintf("              %d publishes retried through elections (each with Nats-Msg-Id chaos.<n>), %d PubAcks reported a retried publish as a duplicate", r.wl.publishRetries.Load(), r.wl.dupAcks.Load()),
		fmt.Sprintf("accounts      %d, funded £%s", len(r.wl.accounts), pounds(r.wl.funded)),
		fmt.Sprintf("ledger        %d rows: %d completed, %d rejected (402)", len(ledger), ledgerCompleted, ledgerRejected),
		fmt.Sprintf("events        %d on %s, %d on %s", countCopies(completed), subjCompleted, countCopies(rejected), subjRejected),
		fmt.Sprintf("dead letters  %d on %s", len(letters), subjDLQPay),
		fmt.Sprintf("chaos         %d worker SIGKILLs (each restarted), %d PAYMENTS leader kills (each restarted), %d Postgres immediate restarts (down %s)",
			r.workerKills, r.leaderKills, r.pgRestarts, durations(r.pgDowns)),
		fmt.Sprintf("worker logs   %s", r.ws.eventSummary()),
		fmt.Sprintf("worker exits  %d the test did not cause (the set restarted each after 0.5s)", len(exits)),
	}
	rep.figures = append(rep.figures, exitLines...)
	rep.figures = append(rep.figures, fmt.Sprintf("consumer      %s: %d pending, %d unacknowledged, %d redelivered, delivered up to stream sequence %d",
		durableWorker, ci.NumPending, ci.NumAckPending, ci.NumRedelivered, ci.Delivered.Stream))

	// 1. Money conserved, balances as the ledger says, none negative.
	var sum int64
	for _, b := range balances {
		sum += b
	}
	want := map[string]int64{}
	for i, a := range r.wl.accounts {
		want[a] = richBalance
		if i >= accountCount-poorAccounts {
			want[a] = poorBalance
		}
	}
	for _, l := range ledger {
		if l.outcome == "completed" {
			want[l.from] -= l.amount
			want[l.to] += l.amount
		}
	}
	var off []string
	negative := 0
	for a, b := range balances {
		if b != want[a] {
			off = append(off, fmt.Sprintf("%s %d≠%d", a, b, want[a]))
		}
		if b < 0 {
			negative++
		}
	}
	sort.Strings(off)
	rep.add("money conserved", sum == r.wl.funded && len(balances) == accountCount,
		"sum of the %d balances £%s, funded £%s", len(balances), pounds(sum), pounds(r.wl.funded))
	rep.add("balances match the ledger, none negative", len(off) == 0 && negative == 0,
		"%d accounts off, %d negative %s", len(off), negative, examples(off))

	// 2. Every payment applied exactly once, as published.
	byKey := map[string][]ledgerRow{}
	for _, l := range ledger {
		byKey[l.key] = append(byKey[l.key], l)
	}
	var missing, twice, wrong, overdraftApplied, unknown []string
	originals := 0
	for _, m := range sent {
		if m.kind != kindPayment && m.kind != kindOverdraft {
			continue
		}
		originals++
		ls := byKey[m.key]
		switch {
		case len(ls) == 0:
			missing = append(missing, m.key)
		case len(ls) > 1:
			twice = append(twice, fmt.Sprintf("%s×%d", m.key, len(ls)))
		case ls[0].amount != m.pay.Amount || ls[0].from != m.pay.From || ls[0].to != m.pay.To || ls[0].paymentID != m.pay.PaymentID:
			wrong = append(wrong, m.key)
		case m.kind == kindOverdraft && ls[0].outcome != "rejected":
			overdraftApplied = append(overdraftApplied, m.key)
		}
		delete(byKey, m.key)
	}
	for k := range byKey {
		unknown = append(unknown, k)
	}
	rep.add("every payment applied exactly once",
		originals == r.cfg.payments && len(ledger) == originals && len(missing)+len(twice)+len(wrong)+len(overdraftApplied)+len(unknown) == 0,
		"%d payments published, %d ledger rows: %d missing, %d applied more than once, %d with another amount or account (a conflict applied), %d of %d overdrafts not rejected, %d rows of unknown keys %s",
		originals, len(ledger), len(missing), len(twice), len(wrong), len(overdraftApplied), byKind[kindOverdraft], len(unknown), examples(missing, twice, wrong, overdraftApplied, unknown))

	// 3. Events = applied payments: one completed event per completed
	// transfer, one rejected event per rejection, nothing else.
	var evBad []string
	for _, l := range ledger {
		into, other := completed, rejected
		if l.outcome != "completed" {
			into, other = rejected, completed
		}
		e := into[l.key]
		switch {
		case e == nil:
			evBad = append(evBad, "no event for "+l.key)
		case e.copies != 1:
			evBad = append(evBad, fmt.Sprintf("%d events for %s", e.copies, l.key))
		case e.ev.Amount != l.amount || e.ev.Status != l.outcome:
			evBad = append(evBad, fmt.Sprintf("event of %s says %s %d", l.key, e.ev.Status, e.ev.Amount))
		}
		if other[l.key] != nil {
			evBad = append(evBad, "both outcomes for "+l.key)
		}
	}
	evBad = append(evBad, badEvents...)
	rep.add("events (payments.completed + payments.rejected) = applied payments",
		countCopies(completed) == ledgerCompleted && countCopies(rejected) == ledgerRejected && len(completed) == ledgerCompleted && len(rejected) == ledgerRejected && len(evBad) == 0,
		"%s: %d messages, %d distinct keys, %d completed transfers; %s: %d messages, %d distinct, %d rejected transfers; %d events = %d applied %s",
		subjCompleted, countCopies(completed), len(completed), ledgerCompleted, subjRejected, countCopies(rejected), len(rejected), ledgerRejected,
		countCopies(completed)+countCopies(rejected), len(ledger), examples(evBad))

	// 4. DLQ = malformed + conflicts, each once, intact.
	byN := map[string][]letter{}
	for _, l := range letters {
		byN[l.n] = append(byN[l.n], l)
	}
	reasons := map[string]int{}
	var dlqBad []string
	for _, m := range sent {
		n := strconv.Itoa(m.n)
		ls := byN[n]
		delete(byN, n)
		switch {
		case m.reason == "" && len(ls) > 0:
			dlqBad = append(dlqBad, fmt.Sprintf("%s %d dead-lettered (%s)", m.kind, m.n, ls[0].reason))
		case m.reason == "":
		case len(ls) == 0:
			dlqBad = append(dlqBad, fmt.Sprintf("%s %d not dead-lettered", m.kind, m.n))
		case len(ls) > 1:
			dlqBad = append(dlqBad, fmt.Sprintf("%s %d dead-lettered %d times", m.kind, m.n, len(ls)))
		case ls[0].reason != m.reason:
			dlqBad = append(dlqBad, fmt.Sprintf("%s %d: reason %q, want %q", m.kind, m.n, ls[0].reason, m.reason))
		case !bytes.Equal(ls[0].data, m.data) || ls[0].key != m.key || ls[0].origSubject != subjRequested || ls[0].origStream != streamPayments || ls[0].subject != subjDLQPay:
			dlqBad = append(dlqBad, fmt.Sprintf("%s %d: dead letter altered (body, key, subject or Idemq-Original-* headers)", m.kind, m.n))
		}
		for _, l := range ls {
			reasons[l.reason]++
		}
	}
	for n, ls := range byN {
		dlqBad = append(dlqBad, fmt.Sprintf("%d letters of unknown message %q (%s)", len(ls), n, ls[0].reason))
	}
	wantDLQ := byKind[kindMalformed] + byKind[kindConflict]
	rep.add("DLQ = malformed + conflicts",
		len(letters) == wantDLQ && reasons["invalid"] == byKind[kindMalformed] && reasons["conflict"] == byKind[kindConflict] && len(dlqBad) == 0,
		"%d dead letters (%s) = %d malformed + %d conflicts; %d duplicates acknowledged without a letter; bodies and headers intact %s",
		len(letters), formatCounts(reasons), byKind[kindMalformed], byKind[kindConflict], byKind[kindDuplicate], examples(dlqBad))

	// 5. Every published message stored once.
	var reqBad []string
	for _, m := range sent {
		n := strconv.Itoa(m.n)
		if c := requested[n]; c != 1 {
			reqBad = append(reqBad, fmt.Sprintf("message %d stored %d times", m.n, c))
		}
		delete(requested, n)
	}
	for n, c := range requested {
		reqBad = append(reqBad, fmt.Sprintf("unknown message %q stored %d times", n, c))
	}
	rep.add("requests in the stream = messages published", len(reqBad) == 0,
		"%d messages published, each stored once on %s %s", len(sent), subjRequested, examples(reqBad))

	// 6. Outbox: one event row per applied payment, all sent.
	rep.add("outbox: every event row sent, none failed",
		outboxRows["sent"] == int64(len(ledger)) && outboxRows["pending"] == 0 && outboxRows["failed"] == 0,
		"idemq_outbox: %d sent, %d pending, %d failed, for %d applied payments", outboxRows["sent"], outboxRows["pending"], outboxRows["failed"], len(ledger))

	// 7. Consumer drained.
	rep.add("consumer drained", ci.NumPending == 0 && ci.NumAckPending == 0,
		"%s: %d pending, %d unacknowledged", durableWorker, ci.NumPending, ci.NumAckPending)

	// 8. Streams back to three current replicas.
	rep.add("PAYMENTS and DLQ back to 3 current replicas", len(current) == 0,
		"Replicas 3, leader and 2 current followers each %s", examples(current))
	return rep
}

// streamEvent is what the stream holds for one key on one outcome subject.
type streamEvent struct {
	copies int
	ev     outcomeEvent
}

// countCopies returns the number of messages in m.
func countCopies(m map[string]*streamEvent) int {
	n := 0
	for _, e := range m {
		n += e.copies
	}
	return n
}

// pounds renders minor units as pounds.
func pounds(p int64) string { return fmt.Sprintf("%d.%02d", p/100, p%100) }

// durations renders a list of durations.
func durations(ds []time.Duration) string {
	if len(ds) == 0 {
		return "-"
	}
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = fmt.Sprintf("%.1fs", d.Seconds())
	}
	return strings.Join(parts, ", ")
}

// formatCounts renders {"invalid": 12, "conflict": 20} as "20 conflict, 12 invalid".
func formatCounts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%d %s", m[k], k))
	}
	return strings.Join(parts, ", ")
}

// examples returns up to three entries of the lists, for a failed check.
func examples(lists ...[]string) string {
	var all []string
	for _, l := range lists {
		all = append(all, l...)
	}
	if len(all) == 0 {
		return ""
	}
	sort.Strings(all)
	if len(all) > 3 {
		all = append(all[:3], fmt.Sprintf("… %d in all", len(all)))
	}
	return "(" + strings.Join(all, "; ") + ")"
}
