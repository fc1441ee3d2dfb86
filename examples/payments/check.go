package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Dead-letter headers read by the checks (the wire format in docs/ARCHITECTURE.md).
const (
	headerReason       = "Idemq-Reason"
	headerOrigSubject  = "Idemq-Original-Subject"
	headerOrigStream   = "Idemq-Original-Stream"
	headerNatsMsgID    = "Nats-Msg-Id"
	outboxCompletedPfx = "completed."
	outboxRejectedPfx  = "rejected."
	outboxRequestedPfx = "requested."
)

// streamState is what this run left in the PAYMENTS and DLQ streams.
type streamState struct {
	completed, rejected, requested          int            // messages (total)
	completedIDs, rejectedIDs, requestedIDs map[string]int // Nats-Msg-Id → copies
	deadLetters                             []deadLetter
}

// deadLetter is one message of this run on dlq.payments.
type deadLetter struct {
	demoMsg        string // the producer's message number
	reason         string
	origSubject    string
	origStream     string
	msgID          string
	data           []byte
	subjectOK      bool
	idempotencyKey string
}

// settled reports whether the streams hold every outcome event the ledger
// has and every dead letter the producer caused.
func (s *streamState) settled(applied, rejected int64, p *producer) bool {
	want := 0
	for _, m := range p.published() {
		if m.reason != "" {
			want++
		}
	}
	return int64(len(s.completedIDs)) >= applied && int64(len(s.rejectedIDs)) >= rejected && len(s.deadLetters) >= want
}

// scan reads this run's messages from PAYMENTS and DLQ.
func (d *demo) scan(ctx context.Context) (*streamState, error) {
	st := &streamState{completedIDs: map[string]int{}, rejectedIDs: map[string]int{}, requestedIDs: map[string]int{}}
	runKey := d.run + "-"
	err := d.readStream(ctx, d.nm.paymentsStream(), func(m jetstream.Msg) {
		id := m.Headers().Get(headerNatsMsgID)
		switch m.Subject() {
		case d.nm.completed():
			if strings.HasPrefix(id, outboxCompletedPfx+runKey) {
				st.completed++
				st.completedIDs[id]++
			}
		case d.nm.rejected():
			if strings.HasPrefix(id, outboxRejectedPfx+runKey) {
				st.rejected++
				st.rejectedIDs[id]++
			}
		case d.nm.requested():
			// Requests the API published (the producer's carry the run header).
			if strings.HasPrefix(id, outboxRequestedPfx+runKey) && m.Headers().Get(headerDemoRun) == "" {
				st.requested++
				st.requestedIDs[id]++
			}
		}
	})
	if err != nil {
		return nil, err
	}
	err = d.readStream(ctx, d.nm.dlqStream(), func(m jetstream.Msg) {
		h := m.Headers()
		if h.Get(headerDemoRun) != d.run {
			return
		}
		st.deadLetters = append(st.deadLetters, deadLetter{
			demoMsg:        h.Get(headerDemoMsg),
			reason:         h.Get(headerReason),
			origSubject:    h.Get(headerOrigSubject),
			origStream:     h.Get(headerOrigStream),
			msgID:          h.Get(headerNatsMsgID),
			data:           append([]byte(nil), m.Data()...),
			subjectOK:      m.Subject() == d.nm.dlqSubject(),
			idempotencyKey: h.Get(headerKey),
		})
	})
	return st, err
}

// readStream calls fn for every message of stream from this run's first
// sequence up to the stream's last sequence now, with an ordered consumer.
func (d *demo) readStream(ctx context.Context, stream string, fn func(jetstream.Msg)) error {
	s, err := d.js.Stream(ctx, stream)
	if err != nil {
		return err
	}
	last := s.CachedInfo().State.LastSeq
	first := d.startSeq[stream]
	if last < first || s.CachedInfo().State.Msgs == 0 {
		return nil
	}
	cons, err := d.js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:   first,
	})
	if err != nil {
		return fmt.Errorf("read %s: %w", stream, err)
	}
	// Ask for exactly the messages up to last, so each Fetch completes as
	// soon as they are delivered; every batch is read to the end so that no
	// fetch goroutine outlives the call.
	next, empty := first, 0
	for next <= last {
		batch, err := cons.Fetch(int(min(500, last-next+1)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			return fmt.Errorf("read %s: %w", stream, err)
		}
		got := 0
		var mdErr error
		for m := range batch.Messages() {
			md, err := m.Metadata()
			if err != nil {
				mdErr = err
				continue
			}
			if md.Sequence.Stream > last || mdErr != nil {
				continue
			}
			got++
			next = md.Sequence.Stream + 1
			fn(m)
		}
		if mdErr != nil {
			return fmt.Errorf("read %s: %w", stream, mdErr)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
			return fmt.Errorf("read %s: %w", stream, err)
		}
		if got == 0 {
			// Messages up to last may have been removed (purged, aged
			// out); give the consumer a few chances before calling it done.
			if empty++; empty == 3 {
				return nil
			}
		}
	}
	return nil
}

// invariant is one checked statement.
type invariant struct {
	name   string
	ok     bool
	detail string
}

// report is the demo's result.
type report struct {
	run        string
	elapsed    time.Duration
	lines      []string // the counters, formatted
	invariants []invariant
	problems   []string
	// crashes counts the SIGKILLs; completedEvents the completed events of
	// this run in the stream. Tests read them.
	crashes         int64
	completedEvents int
}

// ok reports whether every invariant held.
func (r *report) ok() bool {
	for _, inv := range r.invariants {
		if !inv.ok {
			return false
		}
	}
	return len(r.invariants) > 0
}

func (r *report) add(name string, ok bool, format string, args ...any) {
	r.invariants = append(r.invariants, invariant{name: name, ok: ok, detail: fmt.Sprintf(format, args...)})
}

// print writes the summary.
func (r *report) print(w io.Writer) {
	fmt.Fprintf(w, "\n── summary · run %s · %.1fs ──\n", r.run, r.elapsed.Seconds())
	for _, l := range r.lines {
		fmt.Fprintln(w, "  "+l)
	}
	fmt.Fprintln(w, "\ninvariants (checked from the database and the streams)")
	for _, inv := range r.invariants {
		mark := "✓"
		if !inv.ok {
			mark = "✗"
		}
		fmt.Fprintf(w, "  %s %s\n      %s\n", mark, inv.name, strings.TrimSpace(inv.detail))
	}
	for _, p := range r.problems {
		fmt.Fprintln(w, "  ! "+p)
	}
	if r.ok() {
		fmt.Fprintln(w, "\nall invariants hold")
	} else {
		fmt.Fprintln(w, "\nSOME INVARIANTS DO NOT HOLD")
	}
}

// ledgerRow is one transfers row of this run.
type ledgerRow struct {
	key, paymentID, from, to, outcome string
	amount                            int64
}

// check computes the report from the client's record, the database and the
// streams.
func (d *demo) check(ctx context.Context, drained bool) (*report, error) {
	r := &report{run: d.run, elapsed: time.Since(d.start), crashes: d.crashes.workers.Load() + d.crashes.api.Load()}
	s := d.cl.stats
	accepted := d.cl.acceptedJobs()
	st, err := d.scan(ctx)
	if err != nil {
		return nil, fmt.Errorf("read streams: %w", err)
	}

	r.completedEvents = st.completed

	// Ledger.
	rows, err := d.db.QueryContext(ctx, d.db.q(`SELECT idempotency_key, payment_id, from_account, to_account, amount, outcome
		FROM transfers WHERE idempotency_key LIKE ?`), d.run+"-%")
	if err != nil {
		return nil, err
	}
	byKey := map[string][]ledgerRow{}
	var completed, rejected int
	for rows.Next() {
		var l ledgerRow
		if err := rows.Scan(&l.key, &l.paymentID, &l.from, &l.to, &l.amount, &l.outcome); err != nil {
			rows.Close()
			return nil, err
		}
		byKey[l.key] = append(byKey[l.key], l)
		if l.outcome == outcomeCompleted {
			completed++
		} else {
			rejected++
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}

	// Balances.
	balances := map[string]int64{}
	var sum int64
	brows, err := d.db.QueryContext(ctx, d.db.q(`SELECT id, balance FROM accounts WHERE id LIKE ?`), "acc-"+d.run+"-%")
	if err != nil {
		return nil, err
	}
	for brows.Next() {
		var id string
		var b int64
		if err := brows.Scan(&id, &b); err != nil {
			brows.Close()
			return nil, err
		}
		balances[id] = b
		sum += b
	}
	brows.Close()
	if err := brows.Err(); err != nil {
		return nil, err
	}

	// Counters.
	plannedOverdrafts := 0
	for _, j := range accepted {
		if j.overdraft {
			plannedOverdrafts++
		}
	}
	prod := d.producer
	malformed, conflicts, dups := prod.count(directMalformed), prod.count(directConflict), prod.count(directDuplicate)
	reasons := map[string]int{}
	for _, dl := range st.deadLetters {
		reasons[dl.reason]++
	}
	r.lines = []string{
		fmt.Sprintf("sent                   %d requests to PUT /payments (%d payments, %d reused keys with a changed amount, %d bodies that are not payments)",
			s.sent.Load(), d.cfg.Payments, s.conflicts.Load(), s.badRequests.Load()),
		fmt.Sprintf("                       + %d messages straight to JetStream: %d malformed, %d conflicting, %d duplicates", malformed+conflicts+dups, malformed, conflicts, dups),
		fmt.Sprintf("retried                %d client retries with backoff+jitter (%d responses lost on purpose, %d connection errors, %d in-flight 409s, %d 5xx); %d redeliveries to workers (messages a killed worker held, after AckWait)",
			s.retries.Load(), s.lost.Load(), s.connErrors.Load(), s.inFlight409.Load(), s.serverErrors.Load(), d.events.get("redelivery")),
		fmt.Sprintf("duplicates suppressed  %d by the API (stored response replayed), %d by the workers (%d producer duplicates, %d redeliveries of payments already applied)",
			s.replayed.Load(), d.events.get("duplicate"), dups, max(d.events.get("duplicate")-dups, 0)),
		fmt.Sprintf("conflicts              %d × 409 at the API (key reused with another amount), %d dead-lettered by the workers", s.conflicts.Load(), reasons["conflict"]),
		fmt.Sprintf("accepted               %d payments (202): %d completed, %d rejected", len(accepted), completed, rejected),
		fmt.Sprintf("rejected (402)         %d (%d planned overdrafts, %d when an account ran low); recorded once, replayed to duplicates", rejected, plannedOverdrafts, rejected-plannedOverdrafts),
		fmt.Sprintf("dead-lettered          %d on %s (%s)", len(st.deadLetters), d.nm.dlqSubject(), formatReasons(reasons)),
		fmt.Sprintf("crashes                %d worker SIGKILLs, %d API SIGKILL, each followed by a restart", d.crashes.workers.Load(), d.crashes.api.Load()),
	}

	// 1. Money conserved.
	r.add("money conserved", sum == d.initial && len(balances) == len(d.accounts),
		"sum of the %d balances is £%s, funded £%s", len(balances), pounds(sum), pounds(d.initial))

	// 2. Every accepted payment applied exactly once, with the accepted amount.
	var missing, doubled, unexpected, wrong, overdraftApplied []string
	for key, j := range accepted {
		ls := byKey[key]
		switch {
		case len(ls) == 0:
			missing = append(missing, key)
		case len(ls) > 1:
			doubled = append(doubled, key)
		case ls[0].amount != j.pay.Amount || ls[0].from != j.pay.From || ls[0].to != j.pay.To:
			wrong = append(wrong, key)
		case j.overdraft && ls[0].outcome != outcomeRejected:
			overdraftApplied = append(overdraftApplied, key)
		}
	}
	for key := range byKey {
		if _, ok := accepted[key]; !ok {
			unexpected = append(unexpected, key)
		}
	}
	r.add("every accepted payment applied exactly once",
		len(missing)+len(doubled)+len(unexpected)+len(wrong)+len(overdraftApplied) == 0 && s.unresolved.Load() == 0 && s.unexpected.Load() == 0,
		"%d accepted keys, %d ledger rows: %d missing, %d applied twice, %d not accepted, %d with another amount, %d overdrafts applied; %d requests without a definite answer %s",
		len(accepted), completed+rejected, len(missing), len(doubled), len(unexpected), len(wrong), len(overdraftApplied), s.unresolved.Load(),
		examples(missing, doubled, unexpected, wrong, overdraftApplied))

	// 3. Balances are what the ledger says.
	want := map[string]int64{}
	for _, a := range d.accounts {
		want[a] = demoInitialBalance
	}
	for _, ls := range byKey {
		for _, l := range ls {
			if l.outcome == outcomeCompleted {
				want[l.from] -= l.amount
				want[l.to] += l.amount
			}
		}
	}
	var off []string
	negative := 0
	for a, b := range balances {
		if b != want[a] {
			off = append(off, fmt.Sprintf("%s: %s ≠ %s", a, pounds(b), pounds(want[a])))
		}
		if b < 0 {
			negative++
		}
	}
	sort.Strings(off)
	r.add("balances match the ledger, none negative", len(off) == 0 && negative == 0,
		"%d accounts off, %d negative %s", len(off), negative, examples(off))

	// 4. Completed events = applied payments (and rejections likewise).
	r.add("completed events in the stream = applied payments",
		st.completed == completed && len(st.completedIDs) == completed && st.rejected == rejected && len(st.rejectedIDs) == rejected,
		"%s: %d messages, %d distinct Nats-Msg-Id, %d completed transfers; %s: %d messages, %d distinct, %d rejected transfers",
		d.nm.completed(), st.completed, len(st.completedIDs), completed, d.nm.rejected(), st.rejected, len(st.rejectedIDs), rejected)

	// 5. Requests published once per accepted payment.
	r.add("request events = accepted payments (API outbox)",
		st.requested == len(accepted) && len(st.requestedIDs) == len(accepted),
		"%s from the API: %d messages, %d distinct Nats-Msg-Id, %d payments accepted", d.nm.requested(), st.requested, len(st.requestedIDs), len(accepted))

	// 6. DLQ = malformed + conflicts, each dead letter intact.
	byMsg := map[string]deadLetter{}
	dupDL := 0
	for _, dl := range st.deadLetters {
		if _, seen := byMsg[dl.demoMsg]; seen {
			dupDL++
		}
		byMsg[dl.demoMsg] = dl
	}
	var bad []string
	for _, m := range prod.published() {
		dl, ok := byMsg[strconv.Itoa(m.n)]
		switch {
		case m.reason == "" && ok:
			bad = append(bad, fmt.Sprintf("duplicate %d dead-lettered (%s)", m.n, dl.reason))
		case m.reason == "":
		case !ok:
			bad = append(bad, fmt.Sprintf("message %d (%s expected) missing", m.n, m.reason))
		case dl.reason != m.reason:
			bad = append(bad, fmt.Sprintf("message %d: reason %q, want %q", m.n, dl.reason, m.reason))
		case !bytes.Equal(dl.data, m.data) || dl.origSubject != d.nm.requested() || dl.origStream != d.nm.paymentsStream() || !dl.subjectOK || dl.idempotencyKey != m.key:
			bad = append(bad, fmt.Sprintf("message %d: dead letter altered (body, key or Idemq-Original-* headers)", m.n))
		}
	}
	r.add("DLQ = malformed + conflicts",
		len(bad) == 0 && dupDL == 0 && len(st.deadLetters) == malformed+conflicts && reasons["invalid"] == malformed && reasons["conflict"] == conflicts,
		"%d dead letters = %d malformed (reason invalid) + %d conflicts (reason conflict); %d duplicates not dead-lettered; bodies and headers intact %s",
		len(st.deadLetters), reasons["invalid"], reasons["conflict"], dups, examples(bad))

	// 7. The API answers a retry with the identical response.
	r.add("API retries answered identically", s.responseChanged.Load() == 0,
		"%d retries answered from the stored response, %d differed from the first answer", s.replayed.Load(), s.responseChanged.Load())

	if !drained {
		r.problems = append(r.problems, "the backlog did not drain within -drain; counts above may be incomplete")
	}
	d.cl.mu.Lock()
	r.problems = append(r.problems, d.cl.problems...)
	d.cl.mu.Unlock()
	return r, nil
}

// formatReasons renders reason counts as "12 invalid, 5 conflict".
func formatReasons(m map[string]int) string {
	if len(m) == 0 {
		return "none"
	}
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
		all = append(all[:3], "…")
	}
	return "(" + strings.Join(all, "; ") + ")"
}
