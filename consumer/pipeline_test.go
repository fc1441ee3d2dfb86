package consumer_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/retry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var errBoom = errors.New("boom")

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// policy: 3 attempts, constant 100ms.
var policy = retry.Policy{MaxAttempts: 3, Backoff: retry.Constant(100 * time.Millisecond)}

func newPipeline(t *testing.T, cfg consumer.Config, h consumer.Handler) *consumer.Pipeline {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quiet()
	}
	if cfg.Retry == (retry.Policy{}) {
		cfg.Retry = policy
	}
	p, err := consumer.NewPipeline(cfg, h)
	if err != nil {
		t.Fatalf("NewPipeline: %v", err)
	}
	return p
}

func msg(key string, attempt int) *consumer.Message {
	return &consumer.Message{
		ID:      "S:1",
		Subject: "orders.created",
		Header:  map[string][]string{"Idempotency-Key": {key}},
		Data:    []byte(`{"order":"o-1","amount":100,"timestamp":1}`),
		Attempt: attempt,
	}
}

func TestOutcomesWithoutGuard(t *testing.T) {
	tests := []struct {
		name    string
		attempt int
		err     error
		panic   any
		want    consumer.Outcome
		wantErr error
	}{
		{name: "success", attempt: 1, want: consumer.Outcome{Action: consumer.Ack}},
		{name: "transient first attempt", attempt: 1, err: errBoom,
			want: consumer.Outcome{Action: consumer.Retry, Delay: 100 * time.Millisecond}, wantErr: errBoom},
		{name: "transient last attempt", attempt: 3, err: errBoom,
			want: consumer.Outcome{Action: consumer.DeadLetter, Reason: consumer.ReasonExhausted}, wantErr: errBoom},
		{name: "after", attempt: 1, err: retry.After(7*time.Second, errBoom),
			want: consumer.Outcome{Action: consumer.Retry, Delay: 7 * time.Second}, wantErr: errBoom},
		{name: "after on last attempt", attempt: 3, err: retry.After(7*time.Second, errBoom),
			want: consumer.Outcome{Action: consumer.DeadLetter, Reason: consumer.ReasonExhausted}, wantErr: errBoom},
		{name: "permanent", attempt: 1, err: retry.Permanent(errBoom),
			want: consumer.Outcome{Action: consumer.DeadLetter, Reason: consumer.ReasonPermanent}, wantErr: errBoom},
		{name: "conflict", attempt: 1, err: consumer.ErrConflict,
			want: consumer.Outcome{Action: consumer.DeadLetter, Reason: consumer.ReasonConflict}, wantErr: consumer.ErrConflict},
		{name: "permanent wrapping conflict", attempt: 1, err: retry.Permanent(fmt.Errorf("inbox: %w", consumer.ErrConflict)),
			want: consumer.Outcome{Action: consumer.DeadLetter, Reason: consumer.ReasonConflict}, wantErr: consumer.ErrConflict},
		{name: "invalid", attempt: 1, err: consumer.Invalid(errBoom),
			want: consumer.Outcome{Action: consumer.DeadLetter, Reason: consumer.ReasonInvalid}, wantErr: errBoom},
		{name: "invalid nil", attempt: 2, err: consumer.Invalid(nil),
			want: consumer.Outcome{Action: consumer.DeadLetter, Reason: consumer.ReasonInvalid}, wantErr: consumer.ErrInvalid},
		{name: "invalid on last attempt", attempt: 3, err: consumer.Invalid(errBoom),
			want: consumer.Outcome{Action: consumer.DeadLetter, Reason: consumer.ReasonInvalid}, wantErr: consumer.ErrInvalid},
		{name: "permanent wrapping invalid", attempt: 1, err: retry.Permanent(consumer.Invalid(errBoom)),
			want: consumer.Outcome{Action: consumer.DeadLetter, Reason: consumer.ReasonInvalid}, wantErr: errBoom},
		{name: "dedupe invalid input", attempt: 1, err: fmt.Errorf("decode: %w", dedupe.ErrNotJSON),
			want: consumer.Outcome{Action: consumer.DeadLetter, Reason: consumer.ReasonInvalid}, wantErr: dedupe.ErrNotJSON},
		{name: "permanent wrapping key error", attempt: 1, err: retry.Permanent(&dedupe.KeyError{Source: "body", Err: errBoom}),
			want: consumer.Outcome{Action: consumer.DeadLetter, Reason: consumer.ReasonInvalid}, wantErr: errBoom},
		{name: "reject", attempt: 1, err: consumer.Reject([]byte("402"), errBoom),
			want: consumer.Outcome{Action: consumer.Ack}, wantErr: errBoom},
		{name: "reject on last attempt", attempt: 3, err: consumer.Reject(nil, nil),
			want: consumer.Outcome{Action: consumer.Ack}, wantErr: consumer.ErrRejected},
		{name: "panic", attempt: 1, panic: "kaboom",
			want: consumer.Outcome{Action: consumer.Retry, Delay: 100 * time.Millisecond}, wantErr: consumer.ErrPanic},
		{name: "panic with permanent error stays transient", attempt: 2, panic: retry.Permanent(errBoom),
			want: consumer.Outcome{Action: consumer.Retry, Delay: 100 * time.Millisecond}, wantErr: consumer.ErrPanic},
		{name: "attempt zero counts as one", attempt: 0, err: errBoom,
			want: consumer.Outcome{Action: consumer.Retry, Delay: 100 * time.Millisecond}, wantErr: errBoom},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			p := newPipeline(t, consumer.Config{}, func(ctx context.Context, m *consumer.Message) error {
				calls++
				if tc.panic != nil {
					panic(tc.panic)
				}
				return tc.err
			})
			got := p.Process(context.Background(), msg("k", tc.attempt))
			if calls != 1 {
				t.Fatalf("handler ran %d times, want 1", calls)
			}
			if got.Action != tc.want.Action || got.Delay != tc.want.Delay || got.Reason != tc.want.Reason {
				t.Fatalf("outcome = %v delay %v reason %q, want %v delay %v reason %q",
					got.Action, got.Delay, got.Reason, tc.want.Action, tc.want.Delay, tc.want.Reason)
			}
			if tc.wantErr == nil && got.Err != nil {
				t.Fatalf("Err = %v, want nil", got.Err)
			}
			if tc.wantErr != nil && !errors.Is(got.Err, tc.wantErr) {
				t.Fatalf("Err = %v, want %v", got.Err, tc.wantErr)
			}
			if got.Claim != 0 || got.Replay != nil || got.Interrupted || got.Shed {
				t.Fatalf("unexpected outcome fields %+v", got)
			}
		})
	}
}

func TestPanicErrorCarriesStack(t *testing.T) {
	p := newPipeline(t, consumer.Config{}, func(ctx context.Context, m *consumer.Message) error { panic("kaboom") })
	out := p.Process(context.Background(), msg("k", 1))
	var pe *consumer.PanicError
	if !errors.As(out.Err, &pe) {
		t.Fatalf("Err = %v, want *PanicError", out.Err)
	}
	if pe.Value != "kaboom" || len(pe.Stack) == 0 || pe.Error() != "consumer: handler panicked: kaboom" {
		t.Fatalf("PanicError = %q value %v stack %d bytes", pe.Error(), pe.Value, len(pe.Stack))
	}
	if retry.IsPermanent(out.Err) {
		t.Fatal("a panic must not be permanent")
	}
}

func TestSuccessReportsResult(t *testing.T) {
	p := newPipeline(t, consumer.Config{}, func(ctx context.Context, m *consumer.Message) error {
		m.SetResult([]byte("first"))
		m.SetResult([]byte("ok"))
		return nil
	})
	out := p.Process(context.Background(), msg("k", 1))
	if out.Action != consumer.Ack || out.Result == nil || string(out.Result.Data) != "ok" || out.Result.Failed {
		t.Fatalf("outcome %+v, want Ack with result ok", out)
	}
}

func TestRejectReportsFailedResult(t *testing.T) {
	p := newPipeline(t, consumer.Config{}, func(ctx context.Context, m *consumer.Message) error {
		return consumer.Reject([]byte("402 No Money!"), errBoom)
	})
	out := p.Process(context.Background(), msg("k", 1))
	var rej *consumer.RejectError
	if out.Action != consumer.Ack || out.Result == nil || !out.Result.Failed || string(out.Result.Data) != "402 No Money!" || !errors.As(out.Err, &rej) {
		t.Fatalf("outcome %+v, want Ack with a failed result", out)
	}
}

func TestDeliveryPastAttemptsIsDeadLetteredWithoutRunning(t *testing.T) {
	// Without a guard, attempts are deliveries.
	calls := 0
	p := newPipeline(t, consumer.Config{}, func(ctx context.Context, m *consumer.Message) error { calls++; return nil })
	out := p.Process(context.Background(), msg("k", 4))
	if out.Action != consumer.DeadLetter || out.Reason != consumer.ReasonExhausted || !errors.Is(out.Err, consumer.ErrExhausted) || calls != 0 {
		t.Fatalf("outcome %+v, handler ran %d times; want DeadLetter exhausted without running", out, calls)
	}
	// With a guard, a delivery count past the attempts means nothing by
	// itself: the handler has not run yet.
	g := &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.HeaderKey("Idempotency-Key")}
	p = newPipeline(t, consumer.Config{Guard: g}, func(ctx context.Context, m *consumer.Message) error { calls++; return nil })
	out = p.Process(context.Background(), msg("k", 40))
	if out.Action != consumer.Ack || out.Attempt != 1 || calls != 1 {
		t.Fatalf("guarded, delivery 40: outcome %+v, handler ran %d times; want Ack at attempt 1", out, calls)
	}
}

// TestGuardCountsHandlerRunsNotDeliveries: deliveries that do not run the
// handler (store down, Busy) never use up attempts; runs do, across
// deliveries, and the last allowed run's failure is dead-lettered.
func TestGuardCountsHandlerRunsNotDeliveries(t *testing.T) {
	store := &faultyStore{Store: memstore.New(memstore.Config{}), claimErr: errBoom}
	var runs []int
	p := newPipeline(t, consumer.Config{Guard: guard(store)}, func(ctx context.Context, m *consumer.Message) error {
		runs = append(runs, m.Attempt)
		return errBoom
	})
	delivery := 0
	next := func() consumer.Outcome { delivery++; return p.Process(context.Background(), msg("k", delivery)) }
	for range 20 { // an outage: twenty deliveries, none runs
		if out := next(); out.Action != consumer.Retry || out.Unavailable != consumer.StoreUnavailable || out.Attempt != 0 {
			t.Fatalf("store down: outcome %+v, want Retry marked store-unavailable", out)
		}
	}
	store.claimErr = nil
	for attempt := 1; attempt <= policy.Attempts(); attempt++ {
		out := next()
		if out.Attempt != attempt {
			t.Fatalf("run %d: outcome attempt %d", attempt, out.Attempt)
		}
		if attempt < policy.Attempts() && (out.Action != consumer.Retry || out.Unavailable != 0) {
			t.Fatalf("run %d: outcome %+v, want a transient Retry", attempt, out)
		}
		if attempt == policy.Attempts() && (out.Action != consumer.DeadLetter || out.Reason != consumer.ReasonExhausted) {
			t.Fatalf("last run: outcome %+v, want DeadLetter exhausted", out)
		}
	}
	if len(runs) != policy.Attempts() {
		t.Fatalf("handler ran %d times over %d deliveries, want %d", len(runs), delivery, policy.Attempts())
	}
}

func TestDeadLetterPublishedByThePipeline(t *testing.T) {
	var dlqDown bool
	var published []consumer.Reason
	calls := 0
	cfg := consumer.Config{
		Guard: guard(memstore.New(memstore.Config{})),
		DeadLetter: func(ctx context.Context, m *consumer.Message, l consumer.DeadLetterInfo) error {
			if dlqDown {
				return errors.New("no responders")
			}
			published = append(published, l.Reason)
			if want := len(published) * 2 % 3; l.Attempts != want { // 2 runs, then 1 for the replay
				t.Errorf("dead letter %d after %d runs, want %d", len(published), l.Attempts, want)
			}
			return nil
		},
	}
	p := newPipeline(t, cfg, func(ctx context.Context, m *consumer.Message) error {
		calls++
		return retry.Permanent(errBoom)
	})
	dlqDown = true
	out := p.Process(context.Background(), msg("k", 1))
	if out.Action != consumer.Retry || out.Unavailable != consumer.DeadLetterUnavailable || out.Reason != consumer.ReasonPermanent || calls != 1 {
		t.Fatalf("DLQ down: outcome %+v (handler ran %d times), want Retry marked dead-letter-unavailable", out, calls)
	}
	dlqDown = false
	out = p.Process(context.Background(), msg("k", 2))
	if out.Action != consumer.DeadLetter || !out.DeadLettered || out.Reason != consumer.ReasonPermanent || out.Attempt != 2 {
		t.Fatalf("DLQ back: outcome %+v, want DeadLetter published at attempt 2", out)
	}
	if len(published) != 1 || published[0] != consumer.ReasonPermanent {
		t.Fatalf("published %v", published)
	}
	// The dead letter's claim was deleted: a replay starts at attempt 1.
	out = p.Process(context.Background(), msg("k", 1))
	if out.Attempt != 1 {
		t.Fatalf("replay: outcome %+v, want attempt 1", out)
	}
}

func TestExhaustedAfterFailedDeadLetterDoesNotRunAgain(t *testing.T) {
	dlqDown := true
	cfg := consumer.Config{
		Guard: guard(memstore.New(memstore.Config{})),
		DeadLetter: func(context.Context, *consumer.Message, consumer.DeadLetterInfo) error {
			if dlqDown {
				return errors.New("timeout")
			}
			return nil
		},
	}
	calls := 0
	p := newPipeline(t, cfg, func(ctx context.Context, m *consumer.Message) error { calls++; return errBoom })
	for d := 1; d <= policy.Attempts(); d++ {
		p.Process(context.Background(), msg("k", d))
	}
	if calls != policy.Attempts() {
		t.Fatalf("handler ran %d times, want %d", calls, policy.Attempts())
	}
	for d := 0; d < 5; d++ { // the DLQ stays down: nothing runs again
		out := p.Process(context.Background(), msg("k", 10+d))
		if out.Unavailable != consumer.DeadLetterUnavailable || out.Reason != consumer.ReasonExhausted {
			t.Fatalf("DLQ down: outcome %+v", out)
		}
	}
	dlqDown = false
	out := p.Process(context.Background(), msg("k", 20))
	if out.Action != consumer.DeadLetter || !out.DeadLettered || out.Reason != consumer.ReasonExhausted || calls != policy.Attempts() {
		t.Fatalf("DLQ back: outcome %+v, handler ran %d times", out, calls)
	}
}

func TestDeliveryCap(t *testing.T) {
	calls := 0
	p := newPipeline(t, consumer.Config{Guard: guard(memstore.New(memstore.Config{})), MaxDeliveries: 50}, func(ctx context.Context, m *consumer.Message) error {
		calls++
		return nil
	})
	out := p.Process(context.Background(), msg("k", 51))
	if out.Action != consumer.DeadLetter || out.Reason != consumer.ReasonExhausted || calls != 0 {
		t.Fatalf("delivery 51 of 50: outcome %+v, handler ran %d times", out, calls)
	}
}

func TestBusyWaitsForALocalOriginal(t *testing.T) {
	started, finish := make(chan struct{}), make(chan struct{})
	p := newPipeline(t, consumer.Config{Guard: guard(memstore.New(memstore.Config{}))}, func(ctx context.Context, m *consumer.Message) error {
		close(started)
		<-finish
		return nil
	})
	orig := make(chan consumer.Outcome, 1)
	go func() { orig <- p.Process(context.Background(), msg("k", 1)) }()
	<-started
	dup := p.Process(context.Background(), msg("k", 1))
	if dup.Action != consumer.Retry || dup.Claim != dedupe.Busy || dup.Wait == nil {
		t.Fatalf("duplicate while the original runs: %+v, want Busy with a Wait channel", dup)
	}
	select {
	case <-dup.Wait:
		t.Fatal("Wait closed while the original runs")
	default:
	}
	close(finish)
	<-dup.Wait
	if out := <-orig; out.Action != consumer.Ack {
		t.Fatalf("original: %+v", out)
	}
	// Woken, the duplicate finds the result.
	if out := p.Process(context.Background(), msg("k", 2)); out.Action != consumer.Ack || out.Claim != dedupe.Duplicate {
		t.Fatalf("duplicate after the original: %+v, want a Duplicate Ack", out)
	}
}

func TestInterruptedIsRetriedNotDeadLettered(t *testing.T) {
	g := &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.HeaderKey("Idempotency-Key")}
	ctx, cancel := context.WithCancel(context.Background())
	calls := 0
	p := newPipeline(t, consumer.Config{Guard: g}, func(hctx context.Context, m *consumer.Message) error {
		calls++
		if calls == 1 {
			cancel()
			<-hctx.Done()
			return hctx.Err()
		}
		return nil
	})
	out := p.Process(ctx, msg("k", 3)) // last attempt
	if out.Action != consumer.Retry || !out.Interrupted || out.Delay != 0 || !errors.Is(out.Err, context.Canceled) {
		t.Fatalf("outcome %+v, want an interrupted Retry", out)
	}
	// The claim was released even though ctx had ended.
	out = p.Process(context.Background(), msg("k", 3))
	if out.Action != consumer.Ack || calls != 2 {
		t.Fatalf("after interruption: outcome %+v, handler ran %d times", out, calls)
	}
}

func TestBudgetEmptyShedsLoad(t *testing.T) {
	budget := retry.NewBudget(0, 1) // one retry, then empty
	p := newPipeline(t, consumer.Config{Budget: budget, BudgetDelay: 42 * time.Second},
		func(ctx context.Context, m *consumer.Message) error { return errBoom })
	first := p.Process(context.Background(), msg("k", 1))
	if first.Action != consumer.Retry || first.Shed || first.Delay != 100*time.Millisecond {
		t.Fatalf("first retry %+v, want a normal retry", first)
	}
	second := p.Process(context.Background(), msg("k", 2))
	if second.Action != consumer.Retry || !second.Shed || second.Delay != 42*time.Second {
		t.Fatalf("second retry %+v, want a shed retry after 42s", second)
	}
	// An After longer than BudgetDelay is kept.
	p = newPipeline(t, consumer.Config{Budget: budget, BudgetDelay: time.Second},
		func(ctx context.Context, m *consumer.Message) error { return retry.After(time.Hour, errBoom) })
	if out := p.Process(context.Background(), msg("k", 2)); !out.Shed || out.Delay != time.Hour {
		t.Fatalf("after with empty budget %+v, want shed with 1h", out)
	}
}

func TestDefaultBudgetDelay(t *testing.T) {
	p := newPipeline(t, consumer.Config{Budget: retry.NewBudget(0, 0)},
		func(ctx context.Context, m *consumer.Message) error { return errBoom })
	if out := p.Process(context.Background(), msg("k", 1)); out.Delay != consumer.DefaultBudgetDelay || !out.Shed {
		t.Fatalf("outcome %+v, want a shed retry after %v", out, consumer.DefaultBudgetDelay)
	}
}

func guard(store dedupe.Store) *dedupe.Guard {
	return &dedupe.Guard{
		Store:       store,
		Key:         dedupe.HeaderKey("Idempotency-Key"),
		Fingerprint: &dedupe.Fingerprinter{Exclude: []string{"timestamp"}},
		Lease:       time.Minute,
		Retention:   time.Hour,
	}
}

func TestGuardSuccessThenDuplicateReplays(t *testing.T) {
	calls := 0
	p := newPipeline(t, consumer.Config{Guard: guard(memstore.New(memstore.Config{}))}, func(ctx context.Context, m *consumer.Message) error {
		calls++
		m.SetResult([]byte("paid"))
		return nil
	})
	out := p.Process(context.Background(), msg("k", 1))
	if out.Action != consumer.Ack || out.Claim != dedupe.Acquired || out.Replay != nil {
		t.Fatalf("first: %+v", out)
	}
	dup := msg("k", 1)
	dup.Data = []byte(`{"order":"o-1","amount":100,"timestamp":2}`) // timestamp excluded
	out = p.Process(context.Background(), dup)
	if out.Action != consumer.Ack || out.Claim != dedupe.Duplicate || out.Replay == nil || string(out.Replay.Data) != "paid" || out.Replay.Failed {
		t.Fatalf("duplicate: %+v", out)
	}
	if calls != 1 {
		t.Fatalf("handler ran %d times, want 1", calls)
	}
}

func TestGuardRejectIsStoredAndReplayed(t *testing.T) {
	calls := 0
	p := newPipeline(t, consumer.Config{Guard: guard(memstore.New(memstore.Config{}))}, func(ctx context.Context, m *consumer.Message) error {
		calls++
		return consumer.Reject([]byte("402 No Money!"), errBoom)
	})
	if out := p.Process(context.Background(), msg("k", 1)); out.Action != consumer.Ack {
		t.Fatalf("first: %+v", out)
	}
	out := p.Process(context.Background(), msg("k", 2))
	if out.Action != consumer.Ack || out.Claim != dedupe.Duplicate || !out.Replay.Failed || string(out.Replay.Data) != "402 No Money!" || calls != 1 {
		t.Fatalf("duplicate of a rejection: %+v (handler ran %d times)", out, calls)
	}
}

func TestGuardFailuresReleaseTheClaim(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want consumer.Action
	}{
		{"transient", errBoom, consumer.Retry},
		{"permanent", retry.Permanent(errBoom), consumer.DeadLetter},
		{"conflict", retry.Permanent(consumer.ErrConflict), consumer.DeadLetter},
		{"invalid", consumer.Invalid(errBoom), consumer.DeadLetter},
	} {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			p := newPipeline(t, consumer.Config{Guard: guard(memstore.New(memstore.Config{}))}, func(ctx context.Context, m *consumer.Message) error {
				calls++
				if calls == 1 {
					return tc.err
				}
				return nil
			})
			if out := p.Process(context.Background(), msg("k", 1)); out.Action != tc.want {
				t.Fatalf("first: %+v, want %v", out, tc.want)
			}
			// The redelivery (or the DLQ replay) runs the handler again
			// instead of being swallowed as a duplicate.
			if out := p.Process(context.Background(), msg("k", 2)); out.Action != consumer.Ack || out.Claim != dedupe.Acquired || calls != 2 {
				t.Fatalf("redelivery: %+v (handler ran %d times)", out, calls)
			}
		})
	}
}

func TestGuardConflictIsDeadLettered(t *testing.T) {
	calls := 0
	p := newPipeline(t, consumer.Config{Guard: guard(memstore.New(memstore.Config{}))}, func(ctx context.Context, m *consumer.Message) error {
		calls++
		return nil
	})
	p.Process(context.Background(), msg("k", 1))
	other := msg("k", 1)
	other.Data = []byte(`{"order":"o-1","amount":999,"timestamp":1}`)
	out := p.Process(context.Background(), other)
	if out.Action != consumer.DeadLetter || out.Reason != consumer.ReasonConflict || !errors.Is(out.Err, consumer.ErrConflict) || out.Claim != dedupe.Conflict || calls != 1 {
		t.Fatalf("conflict: %+v (handler ran %d times)", out, calls)
	}
}

func TestGuardInvalidInputIsDeadLettered(t *testing.T) {
	tests := []struct {
		name  string
		guard *dedupe.Guard
		msg   *consumer.Message
	}{
		{"missing header", &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.HeaderKey("Idempotency-Key")},
			&consumer.Message{Data: []byte(`{}`), Attempt: 1}},
		{"poison JSON", &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.JSONFieldKey("order")},
			&consumer.Message{Data: []byte(`{"order":`), Attempt: 1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			calls := 0
			p := newPipeline(t, consumer.Config{Guard: tc.guard}, func(ctx context.Context, m *consumer.Message) error { calls++; return nil })
			out := p.Process(context.Background(), tc.msg)
			if out.Action != consumer.DeadLetter || out.Reason != consumer.ReasonInvalid || !dedupe.IsInvalidInput(out.Err) || calls != 0 {
				t.Fatalf("outcome %+v (handler ran %d times), want DeadLetter invalid", out, calls)
			}
		})
	}
}

func TestGuardBusyRetriesAfterLeaseRemainder(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	clock := func() time.Time { return now }
	g := guard(memstore.New(memstore.Config{Now: clock}))
	g.Lease = 10 * time.Second
	if _, err := g.Claim(context.Background(), dedupe.Input{Header: msg("k", 1).Header, Data: msg("k", 1).Data}); err != nil {
		t.Fatal(err)
	}
	now = now.Add(4 * time.Second)
	calls := 0
	p := newPipeline(t, consumer.Config{Guard: g, BusyRecheck: time.Hour}, func(ctx context.Context, m *consumer.Message) error { calls++; return nil })
	out := p.Process(context.Background(), msg("k", 1))
	if out.Action != consumer.Retry || out.Claim != dedupe.Busy || out.Delay != 6*time.Second+consumer.BusyMargin || out.Wait != nil || calls != 0 {
		t.Fatalf("busy: %+v (handler ran %d times)", out, calls)
	}
	// By default a Busy message held elsewhere is checked again within
	// DefaultBusyRecheck, not only after the whole remainder.
	p = newPipeline(t, consumer.Config{Guard: g}, func(ctx context.Context, m *consumer.Message) error { calls++; return nil })
	if out := p.Process(context.Background(), msg("k", 1)); out.Claim != dedupe.Busy || out.Delay != consumer.DefaultBusyRecheck {
		t.Fatalf("busy with the default recheck: %+v", out)
	}
}

// faultyStore wraps a store and injects errors.
type faultyStore struct {
	dedupe.Store
	claimErr, completeErr, extendErr error
	completes, extends               atomic.Int32
}

func (s *faultyStore) Claim(ctx context.Context, key, fp string, lease, retention time.Duration) (dedupe.Claim, error) {
	if s.claimErr != nil {
		return dedupe.Claim{}, s.claimErr
	}
	return s.Store.Claim(ctx, key, fp, lease, retention)
}

func (s *faultyStore) Complete(ctx context.Context, key, token string, res dedupe.Result, retention time.Duration) error {
	s.completes.Add(1)
	if s.completeErr != nil {
		return s.completeErr
	}
	return s.Store.Complete(ctx, key, token, res, retention)
}

func (s *faultyStore) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	s.extends.Add(1)
	if s.extendErr != nil {
		return s.extendErr
	}
	return s.Store.Extend(ctx, key, token, lease)
}

func TestGuardStoreErrorRetriesWithoutRunning(t *testing.T) {
	store := &faultyStore{Store: memstore.New(memstore.Config{}), claimErr: errBoom}
	calls := 0
	p := newPipeline(t, consumer.Config{Guard: guard(store)}, func(ctx context.Context, m *consumer.Message) error { calls++; return nil })
	out := p.Process(context.Background(), msg("k", 3)) // even on the last attempt
	if out.Action != consumer.Retry || out.Delay != consumer.DefaultUnavailableDelay || out.Unavailable != consumer.StoreUnavailable ||
		!errors.Is(out.Err, errBoom) || calls != 0 {
		t.Fatalf("outcome %+v (handler ran %d times), want Retry marked store-unavailable without running", out, calls)
	}
}

func TestGuardCompleteFailureStillAcks(t *testing.T) {
	for _, tc := range []struct {
		name      string
		err       error
		completes int32
	}{
		{"lease lost", dedupe.ErrLeaseLost, 1},
		{"store down", errBoom, 3},
		{"not durable", fmt.Errorf("replicas: %w", dedupe.ErrNotDurable), 1}, // written: retrying would answer lease lost
	} {
		t.Run(tc.name, func(t *testing.T) {
			store := &faultyStore{Store: memstore.New(memstore.Config{}), completeErr: tc.err}
			p := newPipeline(t, consumer.Config{Guard: guard(store)}, func(ctx context.Context, m *consumer.Message) error { return nil })
			out := p.Process(context.Background(), msg("k", 1))
			if out.Action != consumer.Ack {
				t.Fatalf("outcome %+v, want Ack: the work is done", out)
			}
			if got := store.completes.Load(); got != tc.completes {
				t.Fatalf("Complete called %d times, want %d", got, tc.completes)
			}
		})
	}
}

func TestHeartbeatKeepsAliveAndExtends(t *testing.T) {
	store := &faultyStore{Store: memstore.New(memstore.Config{})}
	g := guard(store)
	var keepAlives atomic.Int32
	p := newPipeline(t, consumer.Config{Guard: g, HeartbeatInterval: 5 * time.Millisecond}, func(ctx context.Context, m *consumer.Message) error {
		for keepAlives.Load() < 3 || store.extends.Load() < 3 {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Millisecond):
			}
		}
		return nil
	})
	m := msg("k", 1)
	m.KeepAlive = func(ctx context.Context) error { keepAlives.Add(1); return nil }
	if out := p.Process(context.Background(), m); out.Action != consumer.Ack {
		t.Fatalf("outcome %+v", out)
	}
}

func TestHeartbeatLeaseLostCancelsHandler(t *testing.T) {
	store := &faultyStore{Store: memstore.New(memstore.Config{}), extendErr: dedupe.ErrLeaseLost}
	var cause error
	p := newPipeline(t, consumer.Config{Guard: guard(store), HeartbeatInterval: 5 * time.Millisecond}, func(ctx context.Context, m *consumer.Message) error {
		<-ctx.Done()
		cause = context.Cause(ctx)
		return ctx.Err()
	})
	out := p.Process(context.Background(), msg("k", 3)) // last attempt: still not dead-lettered
	if !errors.Is(cause, dedupe.ErrLeaseLost) {
		t.Fatalf("handler context cause = %v, want ErrLeaseLost", cause)
	}
	if out.Action != consumer.Retry || out.Delay != time.Minute || !errors.Is(out.Err, dedupe.ErrLeaseLost) || out.Interrupted {
		t.Fatalf("outcome %+v, want Retry after a lease", out)
	}
}

// TestHeartbeatBeatsOnlyItsOwnRun: heartbeats are reused from call to call;
// a beat must never reach a message whose handler already returned (its
// KeepAlive or its claim's Extend), whatever the interleaving.
func TestHeartbeatBeatsOnlyItsOwnRun(t *testing.T) {
	store := &faultyStore{Store: memstore.New(memstore.Config{})}
	var stale atomic.Int32
	p := newPipeline(t, consumer.Config{Guard: guard(store), HeartbeatInterval: time.Millisecond}, func(ctx context.Context, m *consumer.Message) error {
		if m.Header["Slow"] != nil {
			time.Sleep(3 * time.Millisecond) // several beats
		}
		return nil
	})
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := range 200 {
				m := msg(fmt.Sprintf("k-%d-%d", w, i), 1)
				if i%4 == 0 {
					m.Header["Slow"] = []string{"1"}
				}
				var done atomic.Bool
				m.KeepAlive = func(context.Context) error {
					if done.Load() {
						stale.Add(1)
					}
					return nil
				}
				if out := p.Process(context.Background(), m); out.Action != consumer.Ack {
					t.Errorf("outcome %+v", out)
				}
				done.Store(true)
			}
		})
	}
	wg.Wait()
	if n := stale.Load(); n != 0 {
		t.Fatalf("%d keep-alives reached a message after its handler returned", n)
	}
}

func TestConcurrentProcessRunsOnce(t *testing.T) {
	var calls atomic.Int32
	p := newPipeline(t, consumer.Config{Guard: guard(memstore.New(memstore.Config{}))}, func(ctx context.Context, m *consumer.Message) error {
		calls.Add(1)
		return nil
	})
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for {
				out := p.Process(context.Background(), msg("k", 1))
				if out.Action == consumer.Ack {
					return
				}
				if out.Claim != dedupe.Busy {
					t.Errorf("unexpected outcome %+v", out)
					return
				}
				time.Sleep(time.Millisecond)
			}
		})
	}
	wg.Wait()
	if calls.Load() != 1 {
		t.Fatalf("handler ran %d times, want 1", calls.Load())
	}
}

func TestNewPipelineValidates(t *testing.T) {
	if _, err := consumer.NewPipeline(consumer.Config{}, nil); !errors.Is(err, consumer.ErrInvalidConfig) {
		t.Fatalf("nil handler: %v", err)
	}
	h := func(ctx context.Context, m *consumer.Message) error { return nil }
	if _, err := consumer.NewPipeline(consumer.Config{Guard: &dedupe.Guard{}}, h); !errors.Is(err, consumer.ErrInvalidConfig) {
		t.Fatalf("guard without store: %v", err)
	}
	g := &dedupe.Guard{Store: memstore.New(memstore.Config{}), Lease: time.Second}
	if _, err := consumer.NewPipeline(consumer.Config{Guard: g, HeartbeatInterval: time.Second}, h); !errors.Is(err, consumer.ErrInvalidConfig) {
		t.Fatalf("heartbeat >= lease: %v", err)
	}
	p, err := consumer.NewPipeline(consumer.Config{Guard: g}, h)
	if err != nil || p.HeartbeatInterval() != time.Second/3 {
		t.Fatalf("default heartbeat: %v, %v", p.HeartbeatInterval(), err)
	}
}

func TestReasonWireValues(t *testing.T) {
	for r, s := range map[consumer.Reason]string{
		consumer.ReasonPermanent: "permanent",
		consumer.ReasonExhausted: "exhausted",
		consumer.ReasonConflict:  "conflict",
		consumer.ReasonInvalid:   "invalid",
	} {
		if r.String() != s {
			t.Errorf("%d.String() = %q, want %q", r, r.String(), s)
		}
		if got, err := consumer.ParseReason(s); err != nil || got != r {
			t.Errorf("ParseReason(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := consumer.ParseReason("nope"); !errors.Is(err, consumer.ErrUnknownReason) {
		t.Errorf("ParseReason(nope) = %v", err)
	}
	for a, s := range map[consumer.Action]string{consumer.Ack: "ack", consumer.Retry: "retry", consumer.DeadLetter: "dead_letter"} {
		if a.String() != s {
			t.Errorf("Action %d = %q, want %q", a, a.String(), s)
		}
	}
}

func TestInvalidError(t *testing.T) {
	err := consumer.Invalid(errBoom)
	var ie *consumer.InvalidError
	if !errors.As(err, &ie) || ie.Err != errBoom || !errors.Is(err, consumer.ErrInvalid) || !errors.Is(err, errBoom) {
		t.Fatalf("Invalid(errBoom) = %#v", err)
	}
	if got, want := err.Error(), "consumer: invalid message: boom"; got != want {
		t.Fatalf("Error() = %q, want %q", got, want)
	}
	if got, want := consumer.Invalid(nil).Error(), "consumer: invalid message"; got != want {
		t.Fatalf("Invalid(nil).Error() = %q, want %q", got, want)
	}
	if errors.Is(errBoom, consumer.ErrInvalid) || retry.IsPermanent(err) {
		t.Fatal("ErrInvalid matched an unrelated error, or Invalid is marked permanent")
	}
}

// TestAttemptsHeaderCountsRuns: a dead letter whose publish failed several
// times reports the handler's runs, not the claims that did not run it.
func TestAttemptsHeaderCountsRuns(t *testing.T) {
	fails := 3
	var got consumer.DeadLetterInfo
	cfg := consumer.Config{
		Guard: guard(memstore.New(memstore.Config{})),
		DeadLetter: func(_ context.Context, _ *consumer.Message, l consumer.DeadLetterInfo) error {
			if fails > 0 {
				fails--
				return errors.New("down")
			}
			got = l
			return nil
		},
	}
	p := newPipeline(t, cfg, func(ctx context.Context, m *consumer.Message) error { return errBoom })
	for d := 1; got.Reason == 0 && d < 20; d++ {
		p.Process(context.Background(), msg("k", d))
	}
	if got.Reason != consumer.ReasonExhausted || got.Attempts != policy.Attempts() {
		t.Fatalf("dead letter %+v, want exhausted after %d runs", got, policy.Attempts())
	}
}

func TestHandlerSeesGrowingFences(t *testing.T) {
	var fences []uint64
	p := newPipeline(t, consumer.Config{Guard: guard(memstore.New(memstore.Config{}))}, func(ctx context.Context, m *consumer.Message) error {
		fences = append(fences, m.Fence)
		if len(fences) < 3 {
			return errBoom
		}
		return nil
	})
	for d := 1; d <= 3; d++ {
		p.Process(context.Background(), msg("k", d))
	}
	if len(fences) != 3 || fences[0] == 0 || fences[1] <= fences[0] || fences[2] <= fences[1] {
		t.Fatalf("fences seen by the handler %v, want three growing non-zero ones", fences)
	}
	p = newPipeline(t, consumer.Config{}, func(ctx context.Context, m *consumer.Message) error {
		if m.Fence != 0 {
			t.Errorf("fence %d without a guard, want 0", m.Fence)
		}
		return nil
	})
	p.Process(context.Background(), msg("k", 1))
}

func TestSnoozeUsesNoAttempt(t *testing.T) {
	var attempts []int
	runs := 0
	p := newPipeline(t, consumer.Config{Guard: guard(memstore.New(memstore.Config{}))}, func(ctx context.Context, m *consumer.Message) error {
		runs++
		if runs <= 10 {
			return consumer.Snooze(10 * time.Minute)
		}
		return errBoom
	})
	for d := 1; d <= 20; d++ {
		out := p.Process(context.Background(), msg("k", d))
		attempts = append(attempts, out.Attempt)
		if d <= 10 && (out.Action != consumer.Retry || !out.Snoozed || out.Delay != 10*time.Minute) {
			t.Fatalf("delivery %d: %+v, want a snoozed Retry after 10m", d, out)
		}
		if out.Action == consumer.DeadLetter {
			break
		}
	}
	// Ten snoozes at attempt 1, then the policy's attempts of failures.
	if runs != 10+policy.Attempts() || attempts[9] != 1 || attempts[len(attempts)-1] != policy.Attempts() {
		t.Fatalf("runs %d, attempts %v: want 10 snoozes at attempt 1, then %d failing attempts", runs, attempts, policy.Attempts())
	}
}
