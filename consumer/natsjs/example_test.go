package natsjs_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/retry"
)

// A JetStream consumer with dedupe by Idempotency-Key, retries with backoff
// and a dead-letter queue. The publisher's retry of pay-1 is suppressed; the
// body that is not a payment is dead-lettered.
func Example() {
	nc, stop := exampleServer() // an embedded NATS server with JetStream
	defer stop()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithCancel(context.Background())
	_, _ = js.CreateStream(ctx, jetstream.StreamConfig{Name: "PAYMENTS", Subjects: []string{"payments.>"}})

	c, err := natsjs.New(js, natsjs.Config{
		Stream: "PAYMENTS", Durable: "worker", Concurrency: 1,
		DeadLetter: natsjs.DeadLetterConfig{Subject: "dlq.payments"}, // stream "DLQ"
		Pipeline: consumer.Config{
			Guard:  &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.HeaderKey("Idempotency-Key")},
			Retry:  retry.Policy{MaxAttempts: 5, Backoff: retry.Exponential{Initial: time.Second}},
			Logger: slog.New(slog.DiscardHandler),
		},
	}, func(ctx context.Context, m *consumer.Message) error {
		if string(m.Data) == "garbage" {
			return retry.Permanent(errors.New("not a payment"))
		}
		fmt.Println("processed", m.Header["Idempotency-Key"][0])
		return nil
	})
	if err != nil {
		panic(err)
	}
	dlq, _ := nc.SubscribeSync("dlq.payments") // watch the dead letters
	for _, p := range [][2]string{{"pay-1", "100 GBP"}, {"pay-1", "100 GBP"}, {"pay-2", "garbage"}} {
		msg := &nats.Msg{Subject: "payments.requested", Header: nats.Header{"Idempotency-Key": {p[0]}}, Data: []byte(p[1])}
		_, _ = js.PublishMsg(ctx, msg)
	}
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()

	dl, _ := dlq.NextMsg(10 * time.Second)
	fmt.Println("dead letter:", dl.Header.Get(consumer.HeaderReason), dl.Header.Get(consumer.HeaderError), string(dl.Data))
	cancel()
	fmt.Println("stopped:", <-done)
	// Output:
	// processed pay-1
	// dead letter: permanent not a payment garbage
	// stopped: <nil>
}

// The common case with defaults only: dedupe by Idempotency-Key (else
// Nats-Msg-Id) with a conflict check on the whole payload, five attempts
// with jittered backoff, dead letters on "dlq.payments" in stream DLQ
// (created), the server never giving up on a message. Swap memstore for
// redisstore.New(rdb, redisstore.Config{}) to share the records between
// processes.
func Example_defaults() {
	nc, stop := exampleServer()
	defer stop()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithCancel(context.Background())
	_, _ = js.CreateStream(ctx, jetstream.StreamConfig{Name: "PAYMENTS", Subjects: []string{"payments.>"}})
	for _, key := range []string{"pay-1", "pay-1", "pay-2"} {
		_, _ = js.PublishMsg(ctx, &nats.Msg{Subject: "payments.requested", Header: nats.Header{"Idempotency-Key": {key}}, Data: []byte(`{"amount":100}`)})
	}

	processed := make(chan string)
	c, err := natsjs.New(js, natsjs.Config{
		Stream:  "PAYMENTS",
		Durable: "worker",
		Store:   memstore.New(memstore.Config{}),
	}, func(ctx context.Context, m *consumer.Message) error {
		processed <- m.Header["Idempotency-Key"][0] // charge the card here
		return nil
	})
	if err != nil {
		panic(err)
	}
	done := make(chan error)
	go func() { done <- c.Run(ctx) }()
	a, b := <-processed, <-processed // pay-1's duplicate never runs
	fmt.Println(min(a, b), max(a, b))
	cancel()
	fmt.Println("stopped:", <-done, "dead letters to", c.Config().DeadLetter.Subject)
	// Output:
	// pay-1 pay-2
	// stopped: <nil> dead letters to dlq.payments
}

// exampleServer starts an embedded NATS server with JetStream in a temporary
// directory and connects to it; stop closes both.
func exampleServer() (*nats.Conn, func()) {
	dir, err := os.MkdirTemp("", "natsjs-example-")
	if err != nil {
		panic(err)
	}
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		panic(err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		panic("nats-server not ready")
	}
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		panic(err)
	}
	return nc, func() {
		nc.Close()
		srv.Shutdown()
		srv.WaitForShutdown()
		_ = os.RemoveAll(dir)
	}
}
