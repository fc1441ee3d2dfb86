package retry_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/idemq/idemq/retry"
)

// The deterministic schedule behind every jitter: 100ms doubling, capped at 2s.
func ExampleExponential() {
	b := retry.Exponential{Initial: 100 * time.Millisecond, Max: 2 * time.Second, Jitter: retry.JitterNone}
	for attempt := 1; attempt <= 6; attempt++ {
		fmt.Println(attempt, b.Delay(attempt))
	}
	// Output:
	// 1 100ms
	// 2 200ms
	// 3 400ms
	// 4 800ms
	// 5 1.6s
	// 6 2s
}

// Each jitter draws from its own interval; an injected Rand makes the draw reproducible.
func ExampleJitter() {
	for _, j := range []retry.Jitter{retry.JitterFull, retry.JitterEqual, retry.JitterDecorrelated, retry.JitterNone} {
		b := retry.Exponential{Initial: time.Second, Jitter: j, Rand: func() float64 { return 0.5 }}
		fmt.Printf("%-12s Delay(3)=%-4v MaxDelay(3)=%v\n", j, b.Delay(3), b.MaxDelay(3))
	}
	// Output:
	// full         Delay(3)=2s   MaxDelay(3)=4s
	// equal        Delay(3)=3s   MaxDelay(3)=4s
	// decorrelated Delay(3)=6.5s MaxDelay(3)=12s
	// none         Delay(3)=4s   MaxDelay(3)=4s
}

// A consumer feeds the broker's delivery count to the policy: retry with a delay, or dead-letter.
func ExamplePolicy() {
	p := retry.Policy{MaxAttempts: 4, Backoff: retry.Exponential{Initial: time.Second, Jitter: retry.JitterNone}}
	for delivered := 1; delivered <= 4; delivered++ {
		if p.Exhausted(delivered) {
			fmt.Printf("delivery %d failed: dead-letter (exhausted)\n", delivered)
			continue
		}
		fmt.Printf("delivery %d failed: redeliver in %v\n", delivered, p.Delay(delivered))
	}
	// Output:
	// delivery 1 failed: redeliver in 1s
	// delivery 2 failed: redeliver in 2s
	// delivery 3 failed: redeliver in 4s
	// delivery 4 failed: dead-letter (exhausted)
}

// Horizon bounds how long a message keeps coming back; a dedupe retention must outlast it.
func ExamplePolicy_Horizon() {
	p := retry.Policy{MaxAttempts: 5, Backoff: retry.Exponential{Initial: time.Second, Max: 5 * time.Second}}
	fmt.Println(p.Horizon()) // 1s + 2s + 4s + 5s
	// Output: 12s
}

// Errors tell the retrier what to do, through any wrapping.
func ExampleClassify() {
	errDeclined := errors.New("card declined")
	errUnavailable := errors.New("503 service unavailable")
	for _, err := range []error{
		nil,
		errUnavailable,
		fmt.Errorf("charge: %w", retry.Permanent(errDeclined)),
		fmt.Errorf("charge: %w", retry.After(30*time.Second, errUnavailable)),
	} {
		fmt.Println(retry.Classify(err))
	}
	d, _ := retry.AfterDelay(fmt.Errorf("charge: %w", retry.After(30*time.Second, errUnavailable)))
	fmt.Println(d)
	// Output:
	// success
	// transient
	// terminal
	// deferred
	// 30s
}

// A budget lets retries add at most ratio × first attempts (+ reserve) of load.
func ExampleBudget() {
	b := retry.NewBudget(0.1, 0)
	calls := 0
	for range 100 { // 100 requests against a dependency that always fails, 5 attempts each
		b.Deposit()
		calls++
		for attempt := 1; attempt < 5 && b.TryWithdraw(); attempt++ {
			calls++
		}
	}
	fmt.Println(calls, "calls for 100 requests")
	// Output: 110 calls for 100 requests
}

// Do retries a call in process, here a client resending a payment with the same idempotency key.
func ExampleDo() {
	errTimeout := errors.New("timeout")
	attempts := 0
	send := func(ctx context.Context) error {
		attempts++
		if attempts < 3 {
			return errTimeout // the response was lost; resending with the same key is safe
		}
		return nil
	}
	err := retry.Do(context.Background(), send, &retry.DoOptions{
		Policy: retry.Policy{MaxAttempts: 5, Backoff: retry.Constant(200 * time.Millisecond)},
		OnRetry: func(attempt int, delay time.Duration, err error) {
			fmt.Printf("attempt %d: %v; retrying in %v\n", attempt, err, delay)
		},
		Sleep: func(ctx context.Context, d time.Duration) error { return ctx.Err() }, // keep the example instant
	})
	fmt.Println("err:", err, "after", attempts, "attempts")
	// Output:
	// attempt 1: timeout; retrying in 200ms
	// attempt 2: timeout; retrying in 200ms
	// err: <nil> after 3 attempts
}

// A Permanent error ends Do at once.
func ExamplePermanent() {
	errDeclined := errors.New("402 card declined")
	attempts := 0
	err := retry.Do(context.Background(), func(ctx context.Context) error {
		attempts++
		return retry.Permanent(errDeclined)
	}, nil)
	fmt.Println(attempts, errors.Is(err, errDeclined), retry.IsPermanent(err))
	// Output: 1 true true
}
