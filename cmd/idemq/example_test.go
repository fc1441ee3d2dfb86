package main

import (
	"context"
	"fmt"
	"io"
	"slices"

	"github.com/nats-io/nats.go"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
)

// The command line entry point: run returns the exit status, 2 for a usage
// error (found before any connection is made), 0 for -h.
func Example() {
	a := newApp(io.Discard, io.Discard)
	ctx := context.Background()
	fmt.Println(a.run(ctx, []string{"dlq", "replay", "-seq", "1", "-all"}))
	fmt.Println(a.run(ctx, []string{"outbox", "retry", "-db", "sqlite:app.db"}))
	fmt.Println(a.run(ctx, []string{"dlq", "list", "-h"}))
	// Output:
	// 2
	// 2
	// 0
}

// What replay publishes for a dead letter: the dead-letter headers and the
// DLQ's Nats-Msg-Id are gone, the original headers stay, and the replay is
// marked and given a stable message id.
func Example_replayMsg() {
	dl := &natsjs.DeadLetterer{Subject: "dlq.payments", Host: "worker-1"}
	dead := dl.Msg(natsjs.Letter{
		Subject:  "payments.requested",
		Header:   nats.Header{"Idempotency-Key": {"pay-42"}, "Nats-Msg-Id": {"req-42"}},
		Data:     []byte(`{"payment_id":"p-42"}`),
		Stream:   "PAYMENTS",
		Sequence: 7,
		Attempts: 5,
		Reason:   consumer.ReasonExhausted,
	})
	m := replayMsg("DLQ", letter{Seq: 3, Header: dead.Header, Data: dead.Data}, false)
	fmt.Println("subject:", m.Subject)
	keys := make([]string, 0, len(m.Header))
	for k := range m.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Printf("%s: %s\n", k, m.Header.Get(k))
	}
	fmt.Println(string(m.Data))
	// Output:
	// subject: payments.requested
	// Idempotency-Key: pay-42
	// Idemq-Replayed-From: DLQ:3
	// Nats-Msg-Id: replay.DLQ.3
	// {"payment_id":"p-42"}
}
