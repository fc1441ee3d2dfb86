package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/retry"
)

// A pipeline with dedupe: the second delivery of the same key is a
// duplicate and replays the stored result; a refusal is stored too.
func ExamplePipeline_Process() {
	g := &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.HeaderKey("Idempotency-Key")}
	p, err := consumer.NewPipeline(consumer.Config{Guard: g, Retry: retry.Policy{MaxAttempts: 3}},
		func(ctx context.Context, m *consumer.Message) error {
			if string(m.Data) == "broke" {
				return consumer.Reject([]byte("402 No Money!"), errors.New("insufficient funds"))
			}
			m.SetResult([]byte("paid"))
			return nil
		})
	if err != nil {
		panic(err)
	}
	for _, d := range []struct{ key, body string }{{"k1", "ok"}, {"k1", "ok"}, {"k2", "broke"}, {"k2", "broke"}} {
		out := p.Process(context.Background(), &consumer.Message{
			Header: map[string][]string{"Idempotency-Key": {d.key}}, Data: []byte(d.body), Attempt: 1,
		})
		switch {
		case out.Replay != nil:
			fmt.Printf("%s: %v, replayed %q (failed=%v)\n", d.key, out.Action, out.Replay.Data, out.Replay.Failed)
		default:
			fmt.Printf("%s: %v, ran: %q (failed=%v)\n", d.key, out.Action, out.Result.Data, out.Result.Failed)
		}
	}
	// Output:
	// k1: ack, ran: "paid" (failed=false)
	// k1: ack, replayed "paid" (failed=false)
	// k2: ack, ran: "402 No Money!" (failed=true)
	// k2: ack, replayed "402 No Money!" (failed=true)
}

// An Observer that counts outcomes by claim result: the pipeline reports
// every delivery's account to it.
func ExampleOutcomeFunc() {
	counts := map[string]int{}
	obs := consumer.OutcomeFunc(func(m *consumer.Message, d consumer.Delivery) {
		counts[d.Outcome.Action.String()+"/"+d.Claim.String()]++
	})
	g := &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.HeaderKey("Idempotency-Key")}
	p, err := consumer.NewPipeline(consumer.Config{Guard: g, Observer: obs},
		func(ctx context.Context, m *consumer.Message) error { return nil })
	if err != nil {
		panic(err)
	}
	for _, key := range []string{"k1", "k1", "k2"} {
		p.Process(context.Background(), &consumer.Message{Header: map[string][]string{"Idempotency-Key": {key}}, Data: []byte("{}"), Attempt: 1})
	}
	fmt.Println(counts["ack/acquired"], counts["ack/duplicate"])
	// Output: 2 1
}

// A handler that is not ready yet snoozes: the message comes back after the
// delay, and the snoozes use none of the retry policy's attempts.
func ExampleSnooze() {
	g := &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.HeaderKey("Idempotency-Key")}
	ready := 0
	p, _ := consumer.NewPipeline(consumer.Config{Guard: g, Retry: retry.Policy{MaxAttempts: 2}},
		func(ctx context.Context, m *consumer.Message) error {
			if ready++; ready < 4 {
				return consumer.Snooze(10 * time.Minute) // the account is not open yet
			}
			return nil
		})
	for d := 1; d <= 4; d++ {
		out := p.Process(context.Background(), &consumer.Message{
			Header: map[string][]string{"Idempotency-Key": {"k1"}}, Data: []byte("{}"), Attempt: d,
		})
		fmt.Printf("delivery %d: %v after %v, attempt %d, snoozed %v\n", d, out.Action, out.Delay, out.Attempt, out.Snoozed)
	}
	// Output:
	// delivery 1: retry after 10m0s, attempt 1, snoozed true
	// delivery 2: retry after 10m0s, attempt 1, snoozed true
	// delivery 3: retry after 10m0s, attempt 1, snoozed true
	// delivery 4: ack after 0s, attempt 1, snoozed false
}
