package chaos

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Names of the examples/payments contract (docs/ARCHITECTURE.md).
const (
	streamPayments = "PAYMENTS"
	subjPayments   = "payments.>"
	subjRequested  = "payments.requested"
	subjCompleted  = "payments.completed"
	subjRejected   = "payments.rejected"
	streamDLQ      = "DLQ"
	subjDLQ        = "dlq.>"
	subjDLQPay     = "dlq.payments"
	durableWorker  = "payments-worker"
	headerKey      = "Idempotency-Key"
	// Dead-letter headers (the wire format in docs/ARCHITECTURE.md).
	headerReason      = "Idemq-Reason"
	headerOrigSubject = "Idemq-Original-Subject"
	headerOrigStream  = "Idemq-Original-Stream"
)

// headerChaosMsg numbers every message the workload publishes; a dead
// letter keeps it, so the checks can tell which message it was.
const headerChaosMsg = "Chaos-Msg"

// kind is what a published message exercises.
type kind int

const (
	// kindPayment is a payment the accounts can usually afford.
	kindPayment kind = iota + 1
	// kindOverdraft is a payment larger than all the money there is: a
	// "402" rejection, recorded once.
	kindOverdraft
	// kindDuplicate republishes a payment with its key and a fresh
	// timestamp (not part of the fingerprint): acknowledged, no effect.
	kindDuplicate
	// kindConflict reuses the key of an applied payment with another
	// amount: dead-lettered as "conflict", never applied.
	kindConflict
	// kindMalformed is a body that is not a payment, or a payment without
	// a key: dead-lettered as "invalid".
	kindMalformed
)

func (k kind) String() string {
	return [...]string{"?", "payment", "overdraft", "duplicate", "conflict", "malformed"}[k]
}

// payment is the body of payments.requested (the contract's shape).
type payment struct {
	PaymentID string `json:"payment_id"`
	From      string `json:"from"`
	To        string `json:"to"`
	Amount    int64  `json:"amount"`
	Currency  string `json:"currency"`
	Timestamp int64  `json:"timestamp"`
}

// sentMsg is one message the workload published (stored once by the
// stream: every publish carries Nats-Msg-Id chaos.<n>, so a publish retried
// after a lost PubAck is dropped by the broker).
type sentMsg struct {
	n      int
	kind   kind
	key    string // "" for the malformed message without a key
	pay    payment
	data   []byte
	reason string // the Idemq-Reason expected in the DLQ; "" when none
}

// malformedBodies are bodies the worker must refuse as "invalid". The one
// with noKey is a valid payment sent without an Idempotency-Key.
var malformedBodies = []struct {
	body  string
	noKey bool
}{
	{body: `not json at all`},
	{body: `null`},
	{body: `{"payment_id":"m","from":"acc-01","to":"acc-02","amount":10,"currency":"GBP"}`},                                  // no timestamp
	{body: `{"payment_id":"m","from":"acc-01","to":"acc-02","amount":0,"currency":"GBP","timestamp":1}`},                     // zero amount
	{body: `{"payment_id":"m","from":"acc-01","to":"acc-01","amount":10,"currency":"GBP","timestamp":1}`},                    // same account
	{body: `{"payment_id":"m","from":"acc-01","to":"acc-02","amount":10,"currency":"gbp","timestamp":1}`},                    // currency
	{body: `{"payment_id":"m","from":"acc-01","to":"acc-02","amount":10,"currency":"GBP","timestamp":1,"note":"x"}`},         // unknown field
	{body: `{"payment_id":"m","from":"acc-01","to":"acc-02","amount":10,"currency":"GBP","timestamp":1}{}`},                  // trailing data
	{body: `{"payment_id":"","from":"acc-01","to":"acc-02","amount":10,"currency":"GBP","timestamp":1}`},                     // empty id
	{body: `{"payment_id":"m","from":"acc-01","to":"acc-02","amount":10.5,"currency":"GBP","timestamp":1}`},                  // fraction
	{body: `{"payment_id":"m","from":"acc-01","to":"acc-02","amount":10,"currency":"GBP","timestamp":-5}`},                   // negative time
	{body: `{"payment_id":"m-nokey","from":"acc-01","to":"acc-02","amount":10,"currency":"GBP","timestamp":1}`, noKey: true}, // no key
}

// Account layout: most accounts are rich, two are poor so that ordinary
// payments from them are sometimes refused ("402") too.
const (
	accountCount = 20
	poorAccounts = 2
	richBalance  = 1_000_000
	poorBalance  = 20_000
	maxAmount    = 5_000
)

// workload publishes the payments workload to payments.requested and
// remembers what it sent.
type workload struct {
	js   jetstream.JetStream
	db   *sql.DB // the workers' database, for the ledger
	seed uint64

	accounts []string
	funded   int64

	rngMu sync.Mutex
	rng   *rand.Rand

	mu        sync.Mutex
	sent      []sentMsg
	originals map[string]int // key → index in sent
	used      map[string]bool
	nextN     int

	publishRetries atomic.Int64 // publishes that failed and were retried
	dupAcks        atomic.Int64 // PubAcks saying "duplicate": a retried publish that had been stored
}

func newWorkload(js jetstream.JetStream, db *sql.DB, seed uint64) *workload {
	return &workload{
		js: js, db: db, seed: seed,
		rng:       rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		originals: map[string]int{},
		used:      map[string]bool{},
	}
}

// fund creates accounts(id, balance) as the contract says the caller
// does, and funds it.
func (w *workload) fund(ctx context.Context) error {
	if _, err := w.db.ExecContext(ctx, `CREATE TABLE IF NOT EXISTS accounts (id text primary key, balance bigint not null)`); err != nil {
		return err
	}
	for i := range accountCount {
		id := fmt.Sprintf("acc-%02d", i+1)
		bal := int64(richBalance)
		if i >= accountCount-poorAccounts {
			bal = poorBalance
		}
		if _, err := w.db.ExecContext(ctx, `INSERT INTO accounts (id, balance) VALUES ($1, $2)`, id, bal); err != nil {
			return err
		}
		w.accounts = append(w.accounts, id)
		w.funded += bal
	}
	return nil
}

func (w *workload) intN(n int) int {
	w.rngMu.Lock()
	defer w.rngMu.Unlock()
	return w.rng.IntN(n)
}

// plan is the order of the main producer's messages: originals (payments
// and overdrafts), near duplicates (of a recent original) and malformed
// bodies, shuffled in.
type planItem struct {
	kind kind
	ref  int // near duplicates: index among the originals
}

// counts of a workload of n payments.
type workloadCounts struct {
	payments, overdrafts, nearDups, lateDups, conflicts, malformed int
}

func countsFor(n int) workloadCounts {
	return workloadCounts{
		payments:   n,
		overdrafts: max(5, n*3/100),
		nearDups:   max(10, n/25),
		lateDups:   max(5, n/50),
		conflicts:  max(10, n/50),
		malformed:  max(len(malformedBodies), n/80),
	}
}

func (w *workload) plan(c workloadCounts) []planItem {
	items := make([]planItem, 0, c.payments+c.nearDups+c.malformed)
	overdraft := map[int]bool{}
	for len(overdraft) < c.overdrafts {
		overdraft[w.intN(c.payments)] = true
	}
	for i := range c.payments {
		k := kindPayment
		if overdraft[i] {
			k = kindOverdraft
		}
		items = append(items, planItem{kind: k, ref: i})
	}
	insert := func(it planItem, after int) {
		pos := after + 1 + w.intN(len(items)-after)
		items = append(items[:pos], append([]planItem{it}, items[pos:]...)...)
	}
	for range c.nearDups {
		// A duplicate of original r, soon after it: the two copies are
		// often handled at the same time by different workers.
		r := w.intN(c.payments)
		at := 0
		for i, it := range items {
			if it.kind != kindDuplicate && it.kind != kindMalformed && it.ref == r {
				at = i
				break
			}
		}
		pos := at + 1 + w.intN(min(8, len(items)-at))
		items = append(items[:pos], append([]planItem{{kind: kindDuplicate, ref: r}}, items[pos:]...)...)
	}
	for range c.malformed {
		insert(planItem{kind: kindMalformed}, -1)
	}
	return items
}

// runMain publishes the plan, paced to take about d (catching up after a
// stall), and closes done when it is through.
func (w *workload) runMain(ctx context.Context, items []planItem, d time.Duration) error {
	gap := d / time.Duration(len(items))
	start := time.Now()
	origIdx := map[int]int{} // plan ref → index in sent
	malformed := 0
	for i, it := range items {
		if wait := time.Until(start.Add(time.Duration(i) * gap)); wait > 0 {
			sleepCtx(ctx, wait)
		}
		var m sentMsg
		switch it.kind {
		case kindPayment, kindOverdraft:
			m = w.newPayment(it.kind)
		case kindDuplicate:
			w.mu.Lock()
			orig := w.sent[origIdx[it.ref]]
			w.mu.Unlock()
			m = sentMsg{kind: kindDuplicate, key: orig.key, pay: orig.pay}
			m.pay.Timestamp = time.Now().Unix() + 1 // a producer retry: a fresh timestamp
			m.data = mustJSON(m.pay)
		case kindMalformed:
			b := malformedBodies[malformed%len(malformedBodies)]
			malformed++
			m = sentMsg{kind: kindMalformed, data: []byte(b.body), reason: "invalid"}
			if !b.noKey {
				m.key = fmt.Sprintf("m-%05d", i)
			}
		}
		idx, err := w.publish(ctx, m)
		if err != nil {
			return err
		}
		if it.kind == kindPayment || it.kind == kindOverdraft {
			origIdx[it.ref] = idx
		}
	}
	return nil
}

// newPayment builds the next original payment.
func (w *workload) newPayment(k kind) sentMsg {
	w.mu.Lock()
	n := len(w.originals)
	w.mu.Unlock()
	from := w.intN(accountCount)
	to := (from + 1 + w.intN(accountCount-1)) % accountCount
	p := payment{
		PaymentID: fmt.Sprintf("pay-%06d", n),
		From:      w.accounts[from],
		To:        w.accounts[to],
		Amount:    1 + int64(w.intN(maxAmount)),
		Currency:  "GBP",
		Timestamp: time.Now().Unix(),
	}
	if k == kindOverdraft {
		p.Amount = w.funded + 1 + int64(w.intN(1000)) // more than all the money there is
	}
	return sentMsg{kind: k, key: fmt.Sprintf("k-%06d", n), pay: p, data: mustJSON(p)}
}

// runLate publishes conflicts and late duplicates of payments the ledger
// shows as applied (so which copy is the conflict is never in doubt),
// spread over d, the rest at once after mainDone closes.
func (w *workload) runLate(ctx context.Context, c workloadCounts, d time.Duration, mainDone <-chan struct{}) error {
	plan := make([]kind, 0, c.conflicts+c.lateDups)
	for range c.conflicts {
		plan = append(plan, kindConflict)
	}
	for range c.lateDups {
		plan = append(plan, kindDuplicate)
	}
	w.rngMu.Lock()
	w.rng.Shuffle(len(plan), func(i, j int) { plan[i], plan[j] = plan[j], plan[i] })
	w.rngMu.Unlock()
	gap := d / time.Duration(len(plan)+1)
	start := time.Now()
	for i, k := range plan {
		if wait := time.Until(start.Add(time.Duration(i+1) * gap)); wait > 0 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-mainDone:
			case <-time.After(wait):
			}
		}
		var key string
		var pay payment
		for key == "" {
			var err error
			if key, pay, err = w.pickApplied(ctx); err != nil {
				return err
			}
			if key == "" {
				sleepCtx(ctx, 200*time.Millisecond)
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
		}
		m := sentMsg{kind: k, key: key, pay: pay}
		m.pay.Timestamp = time.Now().Unix() + 2
		if k == kindConflict {
			m.pay.Amount += 1 + int64(w.intN(97))
			m.reason = "conflict"
		}
		m.data = mustJSON(m.pay)
		if _, err := w.publish(ctx, m); err != nil {
			return err
		}
	}
	return nil
}

// pickApplied returns an original payment with a ledger row that no late
// message used yet, or "" when there is none yet. Database errors (while
// Postgres restarts) are retried.
func (w *workload) pickApplied(ctx context.Context) (string, payment, error) {
	var keys []string
	err := retryFor(ctx, "read the ledger", func(ctx context.Context) error {
		keys = keys[:0]
		rows, err := w.db.QueryContext(ctx, `SELECT idempotency_key FROM transfers WHERE idempotency_key LIKE 'k-%' ORDER BY random() LIMIT 50`)
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var k string
			if err := rows.Scan(&k); err != nil {
				return err
			}
			keys = append(keys, k)
		}
		return rows.Err()
	})
	if err != nil {
		return "", payment{}, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, k := range keys {
		idx, ok := w.originals[k]
		if !ok || w.used[k] {
			continue
		}
		w.used[k] = true
		return k, w.sent[idx].pay, nil
	}
	return "", payment{}, nil
}

// publish numbers m, publishes it with Nats-Msg-Id chaos.<n> until the
// stream acknowledges it (retrying through elections and reconnects),
// records it and returns its index.
func (w *workload) publish(ctx context.Context, m sentMsg) (int, error) {
	w.mu.Lock()
	m.n = w.nextN
	w.nextN++
	w.mu.Unlock()
	msg := nats.NewMsg(subjRequested)
	msg.Data = m.data
	if m.key != "" {
		msg.Header.Set(headerKey, m.key)
	}
	msg.Header.Set(headerChaosMsg, strconv.Itoa(m.n))
	id := "chaos." + strconv.Itoa(m.n)
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		ack, err := w.js.PublishMsg(actx, msg, jetstream.WithMsgID(id))
		cancel()
		if err == nil {
			if ack.Duplicate {
				w.dupAcks.Add(1)
			}
			break
		}
		if ctx.Err() != nil {
			return 0, fmt.Errorf("publish message %d: %w (last: %v)", m.n, ctx.Err(), err)
		}
		w.publishRetries.Add(1)
		sleepCtx(ctx, 100*time.Millisecond)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	w.sent = append(w.sent, m)
	idx := len(w.sent) - 1
	if m.kind == kindPayment || m.kind == kindOverdraft {
		w.originals[m.key] = idx
	}
	return idx, nil
}

// published returns what was published so far.
func (w *workload) published() []sentMsg {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]sentMsg(nil), w.sent...)
}

// count returns how many messages of kind k were published.
func (w *workload) count(k kind) int {
	n := 0
	for _, m := range w.published() {
		if m.kind == k {
			n++
		}
	}
	return n
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
