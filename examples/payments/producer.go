package main

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// directKind is what a message published straight to JetStream exercises.
type directKind int

const (
	// directMalformed is a body that is not a valid payment (or has no
	// idempotency key): the worker dead-letters it with reason "invalid".
	directMalformed directKind = iota + 1
	// directConflict reuses the key of a payment already applied, with a
	// different amount: the worker dead-letters it with reason "conflict"
	// and never applies it.
	directConflict
	// directDuplicate republishes an applied payment with the same key and a
	// fresh timestamp, as a producer retry would: the timestamp is not part
	// of the fingerprint, so the worker acks it as a duplicate.
	directDuplicate
)

// directMsg is one message the misbehaving producer published.
type directMsg struct {
	n      int
	kind   directKind
	key    string
	data   []byte
	reason string // expected Idemq-Reason in the DLQ; "" when none
}

// producer publishes what a misbehaving producer would, straight to
// payments.requested, bypassing the API: malformed bodies, conflicting
// reuses of applied keys and duplicates with fresh timestamps. Conflicts and
// duplicates are only built from payments the ledger shows as applied, so
// which message of a pair is the conflict is never in doubt: the original was
// applied, the conflicting one must be dead-lettered.
type producer struct {
	d          *demo
	malformed  int
	conflicts  int
	duplicates int

	mu   sync.Mutex
	sent []directMsg
	used map[string]bool
}

func newProducer(d *demo) *producer {
	n := d.cfg.Payments
	return &producer{
		d:          d,
		malformed:  max(len(malformedBodies), n/120),
		conflicts:  max(4, n/200),
		duplicates: max(4, n/150),
		used:       map[string]bool{},
	}
}

// published returns the messages sent so far.
func (p *producer) published() []directMsg {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]directMsg(nil), p.sent...)
}

// count returns how many messages of kind were published.
func (p *producer) count(kind directKind) int {
	n := 0
	for _, m := range p.published() {
		if m.kind == kind {
			n++
		}
	}
	return n
}

// malformedBodies are the bodies the producer sends that are not payments.
// An entry with noKey is sent without an Idempotency-Key header.
var malformedBodies = []struct {
	body  string
	noKey bool
}{
	{body: `this is not JSON`},
	{body: `{"payment_id":"x","from":"acc-1","to":"acc-2","amount":100`},
	{body: `{"payment_id":"x","from":"acc-1","to":"acc-2","currency":"GBP","timestamp":1728468810}`},
	{body: `{"payment_id":"x","from":"acc-1","to":"acc-2","amount":-100,"currency":"GBP","timestamp":1728468810}`},
	{body: `{"payment_id":"x","from":"acc-1","to":"acc-2","amount":"100","currency":"GBP","timestamp":1728468810}`},
	{body: `{"payment_id":"x","from":"acc-1","to":"acc-1","amount":100,"currency":"GBP","timestamp":1728468810}`},
	{body: `{"payment_id":"x","from":"acc-1","to":"acc-2","amount":100,"currency":"pounds","timestamp":1728468810}`},
	{body: `{"payment_id":"x","from":"acc-1","to":"acc-2","amount":1.5,"currency":"GBP","timestamp":1728468810}`},
	{body: `{"payment_id":"x","from":"acc-1","to":"acc-2","amount":100,"currency":"GBP","timestamp":1728468810,"memo":"hi"}`},
	{body: ``},
	{body: `[1,2,3]`},
	{body: `{"payment_id":"x","from":"acc-1","to":"acc-2","amount":100,"currency":"GBP","timestamp":1728468810}`, noKey: true},
}

// run publishes the producer's messages spread over the load, and the
// remaining ones once the client is done (done closed), waiting for applied
// payments where it needs them.
func (p *producer) run(ctx context.Context, done <-chan struct{}) error {
	total := p.malformed + p.conflicts + p.duplicates
	plan := make([]directKind, 0, total)
	for i := 0; i < total; i++ {
		switch {
		case i%3 == 0 && countKind(plan, directMalformed) < p.malformed:
			plan = append(plan, directMalformed)
		case i%3 == 1 && countKind(plan, directConflict) < p.conflicts:
			plan = append(plan, directConflict)
		case countKind(plan, directDuplicate) < p.duplicates:
			plan = append(plan, directDuplicate)
		case countKind(plan, directMalformed) < p.malformed:
			plan = append(plan, directMalformed)
		default:
			plan = append(plan, directConflict)
		}
	}
	// Spread the messages over the expected sending time.
	gap := 120 * time.Millisecond
	for i, kind := range plan {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-done:
		case <-time.After(gap):
		}
		var err error
		switch kind {
		case directMalformed:
			err = p.publishMalformed(ctx, i)
		case directConflict, directDuplicate:
			err = p.publishFromApplied(ctx, i, kind)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func countKind(plan []directKind, k directKind) int {
	n := 0
	for _, x := range plan {
		if x == k {
			n++
		}
	}
	return n
}

func (p *producer) publishMalformed(ctx context.Context, n int) error {
	m := malformedBodies[p.count(directMalformed)%len(malformedBodies)]
	key := fmt.Sprintf("%s-m%04d", p.d.run, n)
	if m.noKey {
		key = ""
	}
	return p.publish(ctx, directMsg{n: n, kind: directMalformed, key: key, data: []byte(m.body), reason: "invalid"})
}

// publishFromApplied picks a payment the ledger shows as completed and not
// used by the producer before, and publishes a conflicting or duplicate copy.
func (p *producer) publishFromApplied(ctx context.Context, n int, kind directKind) error {
	for {
		pay, key, err := p.pickApplied(ctx)
		if err != nil {
			return err
		}
		if key == "" {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
			continue
		}
		pay.Timestamp = time.Now().Unix() // a producer retry has a fresh timestamp
		m := directMsg{n: n, kind: kind, key: key}
		if kind == directConflict {
			pay.Amount += 1 + int64(n%97)
			m.reason = "conflict"
		}
		m.data = mustJSON(pay)
		return p.publish(ctx, m)
	}
}

// pickApplied returns a random completed payment of this run that the
// producer has not used yet, or an empty key when there is none yet.
func (p *producer) pickApplied(ctx context.Context) (payment, string, error) {
	db := p.d.db
	rows, err := db.QueryContext(ctx, db.q(`SELECT idempotency_key, payment_id, from_account, to_account, amount, currency
		FROM transfers WHERE idempotency_key LIKE ? AND outcome = ? ORDER BY random() LIMIT 20`), p.d.run+"-p%", outcomeCompleted)
	if err != nil {
		return payment{}, "", err
	}
	defer rows.Close()
	for rows.Next() {
		var key string
		var pay payment
		if err := rows.Scan(&key, &pay.PaymentID, &pay.From, &pay.To, &pay.Amount, &pay.Currency); err != nil {
			return payment{}, "", err
		}
		p.mu.Lock()
		used := p.used[key]
		if !used {
			p.used[key] = true
		}
		p.mu.Unlock()
		if !used {
			return pay, key, nil
		}
	}
	return payment{}, "", rows.Err()
}

// publish sends m to payments.requested without Nats-Msg-Id, so the broker
// does not dedupe it: only the worker's inbox stands between it and a second
// transfer.
func (p *producer) publish(ctx context.Context, m directMsg) error {
	msg := nats.NewMsg(p.d.nm.requested())
	msg.Data = m.data
	if m.key != "" {
		msg.Header.Set(headerKey, m.key)
	}
	msg.Header.Set(headerDemoRun, p.d.run)
	msg.Header.Set(headerDemoMsg, strconv.Itoa(m.n))
	if _, err := p.d.js.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("producer: publish: %w", err)
	}
	p.mu.Lock()
	p.sent = append(p.sent, m)
	p.mu.Unlock()
	return nil
}
