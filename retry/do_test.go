package retry

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"
)

// recorder is an injected sleeper: it records each requested delay and returns at once, or runs hook
// first when set (to cancel a context mid-wait, say).
type recorder struct {
	delays []time.Duration
	hook   func(n int)
}

func (r *recorder) Sleep(ctx context.Context, d time.Duration) error {
	r.delays = append(r.delays, d)
	if r.hook != nil {
		r.hook(len(r.delays))
	}
	return ctx.Err()
}

// script returns an op that returns errs in turn (nil once they run out) and counts its calls.
func script(calls *int, errs ...error) func(context.Context) error {
	return func(context.Context) error {
		*calls++
		if *calls <= len(errs) {
			return errs[*calls-1]
		}
		return nil
	}
}

var errBoom = errors.New("boom")

func noJitter(maxAttempts int) Policy {
	return Policy{MaxAttempts: maxAttempts, Backoff: Exponential{Initial: time.Second, Jitter: JitterNone}}
}

func TestDo(t *testing.T) {
	tests := []struct {
		name       string
		errs       []error
		policy     Policy
		wantCalls  int
		wantDelays []time.Duration
		wantErr    error // matched with errors.Is; nil means success
		permanent  bool
	}{
		{"success first", nil, noJitter(3), 1, nil, nil, false},
		{"transient then success", []error{errBoom, errBoom}, noJitter(5), 3, []time.Duration{time.Second, 2 * time.Second}, nil, false},
		{"exhausted returns last error", []error{io.EOF, io.EOF, errBoom}, noJitter(3), 3, []time.Duration{time.Second, 2 * time.Second}, errBoom, false},
		{"single attempt", []error{errBoom}, noJitter(1), 1, nil, errBoom, false},
		{"permanent stops", []error{errBoom, Permanent(io.EOF)}, noJitter(5), 2, []time.Duration{time.Second}, io.EOF, true},
		{"after overrides backoff", []error{After(7*time.Second, errBoom), errBoom}, noJitter(5), 3, []time.Duration{7 * time.Second, 2 * time.Second}, nil, false},
		{"after without error", []error{After(time.Minute, nil)}, noJitter(5), 2, []time.Duration{time.Minute}, nil, false},
		{"after counts as an attempt", []error{After(time.Millisecond, io.EOF), After(time.Millisecond, errBoom)}, noJitter(2), 2, []time.Duration{time.Millisecond}, errBoom, false},
		{"default policy: 5 attempts", []error{errBoom, errBoom, errBoom, errBoom, errBoom, errBoom}, Policy{}, 5, nil, errBoom, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls int
			var rec recorder
			err := Do(t.Context(), script(&calls, tt.errs...), &DoOptions{Policy: tt.policy, Sleep: rec.Sleep})
			if calls != tt.wantCalls {
				t.Errorf("%d calls, want %d", calls, tt.wantCalls)
			}
			if tt.wantErr == nil && err != nil {
				t.Errorf("Do = %v, want nil", err)
			}
			if tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
				t.Errorf("Do = %v, want an error matching %v", err, tt.wantErr)
			}
			if IsPermanent(err) != tt.permanent {
				t.Errorf("IsPermanent(%v) = %v, want %v", err, IsPermanent(err), tt.permanent)
			}
			if tt.wantDelays != nil && !equalDurations(rec.delays, tt.wantDelays) {
				t.Errorf("slept %v, want %v", rec.delays, tt.wantDelays)
			}
			if tt.wantDelays == nil && len(rec.delays) != max(calls-1, 0) {
				t.Errorf("slept %d times for %d calls", len(rec.delays), calls)
			}
		})
	}
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestDoCancelledDuringSleep(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var calls int
	rec := recorder{hook: func(n int) {
		if n == 2 {
			cancel()
		}
	}}
	err := Do(ctx, script(&calls, io.EOF, errBoom, errBoom), &DoOptions{Policy: noJitter(10), Sleep: rec.Sleep})
	if calls != 2 {
		t.Errorf("%d calls, want 2", calls)
	}
	if !errors.Is(err, errBoom) || !errors.Is(err, context.Canceled) {
		t.Errorf("Do = %v, want the last error joined with context.Canceled", err)
	}
	if errors.Is(err, io.EOF) {
		t.Errorf("Do = %v: carries an earlier attempt's error, want only the last", err)
	}
}

func TestDoCancelledDuringOp(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var rec recorder
	calls := 0
	err := Do(ctx, func(ctx context.Context) error {
		calls++
		cancel()
		return errBoom
	}, &DoOptions{Policy: noJitter(10), Sleep: rec.Sleep})
	if calls != 1 || len(rec.delays) != 0 {
		t.Errorf("%d calls and %d sleeps after cancellation, want 1 and 0", calls, len(rec.delays))
	}
	if !errors.Is(err, errBoom) || !errors.Is(err, context.Canceled) {
		t.Errorf("Do = %v, want boom joined with context.Canceled", err)
	}
}

func TestDoDoesNotRepeatTheContextError(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	err := Do(ctx, func(ctx context.Context) error {
		cancel()
		return ctx.Err()
	}, &DoOptions{Sleep: (&recorder{}).Sleep})
	if err != context.Canceled {
		t.Errorf("Do = %#v, want context.Canceled itself", err)
	}
}

func TestDoContextDoneBeforeStart(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	b, _ := newFakeBudget(0, 0, 0)
	calls := 0
	err := Do(ctx, script(&calls, errBoom), &DoOptions{Budget: b})
	if calls != 0 || err != context.Canceled {
		t.Errorf("Do = %v after %d calls, want context.Canceled and no call", err, calls)
	}
}

func TestDoBudget(t *testing.T) {
	b, _ := newFakeBudget(0, 2, 0) // two retries in all
	var rec recorder
	calls := 0
	err := Do(t.Context(), func(context.Context) error { calls++; return errBoom }, &DoOptions{Policy: noJitter(10), Budget: b, Sleep: rec.Sleep})
	if calls != 3 {
		t.Errorf("%d calls, want 1 + the reserve of 2", calls)
	}
	if !errors.Is(err, ErrBudgetExhausted) || !errors.Is(err, errBoom) {
		t.Errorf("Do = %v, want boom joined with ErrBudgetExhausted", err)
	}

	// Do deposits for its first attempt: with ratio 1 and no reserve, each Do earns one retry.
	b, _ = newFakeBudget(1, 0, 0)
	calls = 0
	err = Do(t.Context(), script(&calls, errBoom, errBoom), &DoOptions{Policy: noJitter(10), Budget: b, Sleep: rec.Sleep})
	if calls != 2 || !errors.Is(err, ErrBudgetExhausted) {
		t.Errorf("ratio 1: Do = %v after %d calls, want ErrBudgetExhausted after 2", err, calls)
	}
}

func TestDoOnRetry(t *testing.T) {
	type call struct {
		attempt int
		delay   time.Duration
		err     error
	}
	var got []call
	var calls int
	err := Do(t.Context(), script(&calls, io.EOF, errBoom, errBoom), &DoOptions{
		Policy:  noJitter(3),
		Sleep:   (&recorder{}).Sleep,
		OnRetry: func(a int, d time.Duration, err error) { got = append(got, call{a, d, err}) },
	})
	want := []call{{1, time.Second, io.EOF}, {2, 2 * time.Second, errBoom}}
	if !errors.Is(err, errBoom) || len(got) != len(want) {
		t.Fatalf("Do = %v with OnRetry calls %v, want boom and %v", err, got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("OnRetry call %d = %v, want %v", i, got[i], want[i])
		}
	}
}

func TestDoNilOptions(t *testing.T) {
	calls := 0
	if err := Do(t.Context(), script(&calls), nil); err != nil || calls != 1 {
		t.Errorf("Do(nil opts) = %v after %d calls, want nil after 1", err, calls)
	}
}

func TestDefaultSleepHonoursContext(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	// A cancelled context ends an hour-long wait at once.
	if err := sleepCtx(ctx, time.Hour); err != context.Canceled {
		t.Errorf("sleepCtx(cancelled, 1h) = %v, want context.Canceled", err)
	}
	if err := sleepCtx(ctx, 0); err != context.Canceled {
		t.Errorf("sleepCtx(cancelled, 0) = %v, want context.Canceled", err)
	}
	if err := sleepCtx(t.Context(), -time.Second); err != nil {
		t.Errorf("sleepCtx(live, negative) = %v, want nil", err)
	}
	if err := sleepCtx(t.Context(), time.Nanosecond); err != nil {
		t.Errorf("sleepCtx(live, 1ns) = %v, want nil", err)
	}
	// Through Do with the default sleeper: cancelled as the hour-long wait begins.
	ctx, cancel = context.WithCancel(t.Context())
	calls := 0
	err := Do(ctx, func(context.Context) error {
		calls++
		return errBoom
	}, &DoOptions{
		Policy:  Policy{Backoff: Constant(time.Hour)},
		OnRetry: func(int, time.Duration, error) { cancel() },
	})
	if calls != 1 || !errors.Is(err, context.Canceled) {
		t.Errorf("Do = %v after %d calls, want context.Canceled after 1", err, calls)
	}
}
