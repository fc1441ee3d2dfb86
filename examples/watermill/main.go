// Command watermill runs Watermill's own dedupe stack and idemq's middleware
// side by side, in one router on one pub/sub, with the same payment handler
// that fails once (a bank timeout) and succeeds when tried again, then sends
// one payment that can never succeed to show idemq's dead letter.
//
// It needs no services: a gochannel pub/sub and idemq's memory store. Run it
// with
//
//	go run ./examples/watermill
//
// Watermill's stack is middleware.Retry on the router and
// middleware.Deduplicator on the handler, keyed by Idempotency-Key. The
// Deduplicator records the key when it first sees it, before the handler
// ran, and never forgets it on a failure; when Retry runs the chain again,
// the Deduplicator answers "duplicate" and the router acks. The payment is
// lost. idemq, under the same Retry, releases its claim on the failure, runs
// the retry as attempt 2, and acks the publisher's duplicate from its
// record.
//
// The exit status is 0 only when idemq's outcome is right: the payment
// applied exactly once, the duplicate acked, and the doomed payment
// dead-lettered with reason "permanent". Watermill's outcome is printed, not
// judged.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/idemq/idemq/consumer"
	idemqwm "github.com/idemq/idemq/consumer/watermill"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/retry"
)

func main() {
	os.Exit(run(os.Stdout))
}

// Topics of the demo.
const (
	watermillTopic = "payments.watermill"
	idemqTopic     = "payments.idemq"
	poisonTopic    = "payments.poison"
)

// ledger counts runs of the handler and applied payments per key.
type ledger struct {
	mu      sync.Mutex
	runs    map[string]int
	applied map[string]int
}

// charge is the payment handler: it fails the first time it sees a key
// (the bank timed out), applies the payment the second time, and refuses
// "pay-doomed" for good.
func (l *ledger) charge(m *message.Message) error {
	key := m.Metadata.Get("Idempotency-Key")
	l.mu.Lock()
	defer l.mu.Unlock()
	l.runs[key]++
	switch {
	case key == "pay-doomed":
		return retry.Permanent(errors.New("card reported stolen"))
	case l.runs[key] == 1:
		return errors.New("bank timed out")
	}
	l.applied[key]++
	return nil
}

func (l *ledger) get(key string) (runs, applied int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.runs[key], l.applied[key]
}

func newLedger() *ledger { return &ledger{runs: map[string]int{}, applied: map[string]int{}} }

// run executes the demo, printing to w, and returns the exit status.
func run(w io.Writer) int {
	fail := func(err error) int { fmt.Fprintln(w, "error:", err); return 1 }
	// Publish returns once the message is acked, so the demo needs no
	// sleeps; Persistent keeps the dead letter for the reader below.
	pubsub := gochannel.NewGoChannel(gochannel.Config{Persistent: true, BlockPublishUntilSubscriberAck: true}, watermill.NopLogger{})
	defer pubsub.Close()

	a, err := idemqwm.New(idemqwm.Config{
		Pipeline: consumer.Config{
			Guard: &dedupe.Guard{
				Store: memstore.New(memstore.Config{}),
				Key:   dedupe.HeaderKey("Idempotency-Key"),
			},
			Retry:  retry.Policy{MaxAttempts: 5, Backoff: retry.Constant(20 * time.Millisecond)},
			Logger: slog.New(slog.DiscardHandler),
		},
		PoisonPublisher: pubsub,
		PoisonTopic:     poisonTopic,
	})
	if err != nil {
		return fail(err)
	}
	repo, err := middleware.NewMapExpiringKeyRepository(time.Hour)
	if err != nil {
		return fail(err)
	}
	dedup := &middleware.Deduplicator{
		KeyFactory: func(m *message.Message) (string, error) { return m.Metadata.Get("Idempotency-Key"), nil },
		Repository: repo,
		Timeout:    time.Second,
	}

	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		return fail(err)
	}
	// Router-wide, as Watermill's documentation sets it up.
	router.AddMiddleware(middleware.Retry{MaxRetries: 3, InitialInterval: 10 * time.Millisecond}.Middleware)
	wm, idemq := newLedger(), newLedger()
	router.AddConsumerHandler("watermill", watermillTopic, pubsub, wm.charge).AddMiddleware(dedup.Middleware)
	router.AddConsumerHandler("idemq", idemqTopic, pubsub, idemq.charge).AddMiddleware(a.Middleware)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	routed := make(chan error, 1)
	go func() { routed <- router.Run(ctx) }()
	defer func() { cancel(); <-routed }()
	select {
	case <-router.Running():
	case err := <-routed:
		routed <- err
		return fail(err)
	}

	publish := func(topic, key string) error {
		m := message.NewMessage(watermill.NewUUID(), []byte(`{"amount":100,"currency":"GBP"}`))
		m.Metadata.Set("Idempotency-Key", key)
		return pubsub.Publish(topic, m)
	}
	for _, topic := range []string{watermillTopic, idemqTopic} {
		for range 2 { // the payment, then the publisher's retry of it
			if err := publish(topic, "pay-1"); err != nil {
				return fail(err)
			}
		}
	}

	fmt.Fprintln(w, "One payment (Idempotency-Key pay-1), sent twice by a retrying publisher; the handler fails once, then succeeds.")
	fmt.Fprintln(w)
	runs, applied := wm.get("pay-1")
	verdict := "LOST: the retry was acked as a duplicate"
	if applied == 1 {
		verdict = "applied once"
	}
	fmt.Fprintf(w, "  Watermill Retry + Deduplicator: handler ran %d time(s), payment applied %d time(s) — %s\n", runs, applied, verdict)
	runs, applied = idemq.get("pay-1")
	ok := runs == 2 && applied == 1 && a.Stats().Duplicates == 1
	verdict = "WRONG"
	if ok {
		verdict = "applied once; the publisher's retry acked from the dedupe record"
	}
	fmt.Fprintf(w, "  idemq middleware:               handler ran %d time(s), payment applied %d time(s) — %s\n", runs, applied, verdict)

	// A payment that can never succeed: idemq dead-letters it to the poison
	// topic with the metadata `idemq dlq` reads.
	if err := publish(idemqTopic, "pay-doomed"); err != nil {
		return fail(err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 10*time.Second)
	defer rcancel()
	letters, err := pubsub.Subscribe(rctx, poisonTopic)
	if err != nil {
		return fail(err)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "A payment that can never succeed (pay-doomed), dead-lettered by idemq to "+poisonTopic+":")
	select {
	case l := <-letters:
		l.Ack()
		for _, k := range []string{"Idempotency-Key", consumer.HeaderReason, consumer.HeaderError, consumer.HeaderOriginalSubject,
			consumer.HeaderConsumer, consumer.HeaderAttempts, consumer.HeaderFailedAt} {
			fmt.Fprintf(w, "  %-23s %s\n", k+":", l.Metadata.Get(k))
		}
		if l.Metadata.Get(consumer.HeaderReason) != "permanent" || l.Metadata.Get("Idempotency-Key") != "pay-doomed" {
			ok = false
		}
	case <-rctx.Done():
		fmt.Fprintln(w, "  no dead letter")
		ok = false
	}
	if !ok {
		fmt.Fprintln(w, "\nidemq's outcome is wrong")
		return 1
	}
	return 0
}
