package dedupe_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
)

// Dedupe by a header key: the first delivery runs the handler, a
// redelivery of the same message is answered from the stored result.
func ExampleGuard() {
	ctx := context.Background()
	g := &dedupe.Guard{
		Store:     memstore.New(memstore.Config{}),
		Key:       dedupe.HeaderKey("Idempotency-Key", "Nats-Msg-Id"),
		Namespace: "payments-worker",
	}
	handle := func(in dedupe.Input) {
		t, err := g.Claim(ctx, in)
		if err != nil {
			fmt.Println("error:", err, "invalid input:", dedupe.IsInvalidInput(err))
			return
		}
		switch t.Status {
		case dedupe.Acquired:
			fmt.Println("transfer", string(in.Data))
			if err := g.Complete(ctx, t, dedupe.Result{Data: []byte("transfer done")}); err != nil {
				fmt.Println("complete:", err)
			}
		case dedupe.Duplicate:
			fmt.Printf("duplicate of %s, replay %q\n", t.Key, t.Result.Data)
		case dedupe.Busy:
			fmt.Println("busy, retry in", t.RetryAfter)
		}
	}
	msg := dedupe.Input{
		Header: map[string][]string{"Nats-Msg-Id": {"pay-1"}},
		Data:   []byte(`{"amount":100}`),
	}
	handle(msg)
	handle(msg) // redelivered after a lost ack
	handle(dedupe.Input{Data: []byte(`{"amount":100}`)})
	// Output:
	// transfer {"amount":100}
	// duplicate of payments-worker:pay-1, replay "transfer done"
	// error: dedupe: key from header Idempotency-Key, Nats-Msg-Id: dedupe: missing idempotency key invalid input: true
}

// Fingerprint a payment without its timestamp: a retry that the sender
// re-stamped and re-encoded has the same fingerprint.
func ExampleFingerprinter() {
	f := &dedupe.Fingerprinter{Exclude: []string{"timestamp"}}
	first, _ := f.Fingerprint(dedupe.Input{Data: []byte(
		`{"payment_id":"p-1","amount":100,"currency":"GBP","timestamp":1728468810}`)})
	retry, _ := f.Fingerprint(dedupe.Input{Data: []byte(
		`{"timestamp": 1728468870, "currency": "GBP", "amount": 1e2, "payment_id": "p-1"}`)})
	other, _ := f.Fingerprint(dedupe.Input{Data: []byte(
		`{"payment_id":"p-1","amount":250,"currency":"GBP","timestamp":1728468810}`)})
	fmt.Println("retry matches:", first == retry)
	fmt.Println("other amount matches:", first == other)

	_, err := f.Fingerprint(dedupe.Input{Data: []byte("amount=100")})
	fmt.Println("non-JSON:", errors.Is(err, dedupe.ErrNotJSON))
	// Output:
	// retry matches: true
	// other amount matches: false
	// non-JSON: true
}

// Key and fingerprint together: the same key sent again with a different
// operation is a Conflict — never run, never silently dropped.
func ExampleGuard_conflict() {
	ctx := context.Background()
	g := &dedupe.Guard{
		Store:       memstore.New(memstore.Config{}),
		Key:         dedupe.JSONFieldKey("payment_id"),
		Fingerprint: &dedupe.Fingerprinter{Exclude: []string{"timestamp"}},
	}
	t, _ := g.Claim(ctx, dedupe.Input{Data: []byte(`{"payment_id":"p-7","amount":100,"timestamp":1}`)})
	fmt.Println("first:", t.Status)
	_ = g.Complete(ctx, t, dedupe.Result{Data: []byte("ok")})

	t, _ = g.Claim(ctx, dedupe.Input{Data: []byte(`{"payment_id":"p-7","amount":100,"timestamp":2}`)})
	fmt.Println("retry:", t.Status)

	t, _ = g.Claim(ctx, dedupe.Input{Data: []byte(`{"payment_id":"p-7","amount":500,"timestamp":3}`)})
	fmt.Println("reused key:", t.Status)
	// Output:
	// first: acquired
	// retry: duplicate
	// reused key: conflict
}

func ExampleCanonicalize() {
	c, _ := dedupe.Canonicalize([]byte(`{ "b": [1.50, 1e2], "a": "\u00e9" }`))
	fmt.Println(string(c))
	// Output: {"a":"é","b":[1.5,100]}
}

func ExampleValidateRetention() {
	horizon := dedupe.RedeliveryHorizon(10, 30*time.Second, 5*time.Minute, 24*time.Hour)
	fmt.Println(dedupe.ValidateRetention(24*time.Hour, horizon))
	fmt.Println(dedupe.ValidateRetention(48*time.Hour, horizon))
	// Output:
	// dedupe: retention shorter than the redelivery horizon: retention 24h0m0s < redelivery horizon 24h55m0s (raise the retention to at least 24h55m0s, or shorten the backoff, attempts, ack wait or replay window)
	// <nil>
}
