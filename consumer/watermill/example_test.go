package idemqwm_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"

	"github.com/idemq/idemq/consumer"
	idemqwm "github.com/idemq/idemq/consumer/watermill"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/outbox"
	"github.com/idemq/idemq/retry"
)

// run starts r and returns a function that stops it.
func run(r *message.Router) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	<-r.Running()
	return func() { cancel(); <-done }
}

// The middleware on a router: a handler that fails once is retried and
// applied once, and a publisher's retry of the same Idempotency-Key is
// acked as a duplicate.
func ExampleAdapter_Middleware() {
	pubsub := gochannel.NewGoChannel(gochannel.Config{BlockPublishUntilSubscriberAck: true}, watermill.NopLogger{})
	a, err := idemqwm.New(idemqwm.Config{
		Pipeline: consumer.Config{
			Guard:  &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.HeaderKey("Idempotency-Key")},
			Retry:  retry.Policy{MaxAttempts: 5, Backoff: retry.Constant(10 * time.Millisecond)},
			Logger: slog.New(slog.DiscardHandler),
		},
		PoisonPublisher: pubsub,
		PoisonTopic:     "payments.poison",
	})
	if err != nil {
		panic(err)
	}
	router, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		panic(err)
	}
	router.AddMiddleware(a.Middleware)
	runs, applied := 0, 0
	router.AddConsumerHandler("charge", "payments", pubsub, func(m *message.Message) error {
		runs++
		if runs == 1 {
			return errors.New("bank timed out")
		}
		applied++
		return nil
	})
	stop := run(router)
	for range 2 { // the publisher retries: two messages, one key
		m := message.NewMessage(watermill.NewUUID(), []byte(`{"amount":100}`))
		m.Metadata.Set("Idempotency-Key", "pay-1")
		if err := pubsub.Publish("payments", m); err != nil { // returns once acked
			panic(err)
		}
	}
	stop()
	s := a.Stats()
	fmt.Printf("handler ran %d times, applied %d time; %d retry, %d duplicate acked\n", runs, applied, s.Retried, s.Duplicates)
	// Output:
	// handler ran 2 times, applied 1 time; 1 retry, 1 duplicate acked
}

// The dead letter of a message: the original UUID, payload and metadata,
// plus idemq's dead-letter metadata.
func ExampleAdapter_PoisonMessage() {
	a, err := idemqwm.New(idemqwm.Config{
		Pipeline:        consumer.Config{Guard: &dedupe.Guard{Store: memstore.New(memstore.Config{})}},
		PoisonPublisher: gochannel.NewGoChannel(gochannel.Config{}, watermill.NopLogger{}),
		PoisonTopic:     "payments.poison",
		Hostname:        "worker-1",
		Now:             func() time.Time { return time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC) },
	})
	if err != nil {
		panic(err)
	}
	m := message.NewMessage("6c1b2f0e-0000-4000-8000-000000000001", []byte(`{"amount":100}`))
	m.Metadata.Set("Idempotency-Key", "pay-1")
	p := a.PoisonMessage(m, consumer.DeadLetterInfo{Reason: consumer.ReasonPermanent, Err: errors.New("card refused"), Attempts: 1})
	fmt.Println(p.UUID, string(p.Payload))
	keys := make([]string, 0, len(p.Metadata))
	for k := range p.Metadata {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Printf("%s: %q\n", k, p.Metadata[k])
	}
	// Output:
	// 6c1b2f0e-0000-4000-8000-000000000001 {"amount":100}
	// Idempotency-Key: "pay-1"
	// Idemq-Attempts: "1"
	// Idemq-Consumer: ""
	// Idemq-Error: "card refused"
	// Idemq-Failed-At: "2026-03-01T12:00:00Z"
	// Idemq-Host: "worker-1"
	// Idemq-Original-Sequence: ""
	// Idemq-Original-Stream: ""
	// Idemq-Original-Subject: ""
	// Idemq-Reason: "permanent"
}

// The outbox relay publishing through a Watermill publisher: UUID = the row
// id, metadata = the row's headers.
func ExampleNewOutboxPublisher() {
	dir, err := os.MkdirTemp("", "idemqwm-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "app.db")+"?_pragma=busy_timeout(10000)")
	if err != nil {
		panic(err)
	}
	defer db.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	pubsub := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, watermill.NopLogger{})
	defer pubsub.Close()
	received, err := pubsub.Subscribe(ctx, "payments.completed")
	if err != nil {
		panic(err)
	}

	ob, err := outbox.New(ctx, db, outbox.Config{})
	if err != nil {
		panic(err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		panic(err)
	}
	// ... the handler's own writes on tx, then the message they cause:
	if err := ob.AddTx(ctx, tx, outbox.Message{
		ID: "completed.pay-1", Subject: "payments.completed",
		Header: map[string][]string{"Idempotency-Key": {"completed.pay-1"}}, Data: []byte(`{"ok":true}`),
	}); err != nil {
		panic(err)
	}
	if err := tx.Commit(); err != nil {
		panic(err)
	}

	pub, err := idemqwm.NewOutboxPublisher(pubsub, idemqwm.OutboxConfig{})
	if err != nil {
		panic(err)
	}
	relay, err := outbox.NewRelay(db, pub, outbox.RelayConfig{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		panic(err)
	}
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()

	m := <-received
	m.Ack()
	fmt.Println(m.UUID, m.Metadata.Get("Idempotency-Key"), string(m.Payload))
	cancel()
	<-done
	// Output:
	// completed.pay-1 completed.pay-1 {"ok":true}
}
