package retry

import (
	"context"
	"errors"
	"time"
)

// DoOptions tunes Do. A nil *DoOptions means the zero value: Policy{} (5 attempts, Exponential{}
// with full jitter), no budget, no callback, the real clock.
type DoOptions struct {
	// Policy is the attempt limit and backoff; its zero value is usable.
	Policy Policy
	// Budget, when not nil, is charged a deposit for the first attempt and a withdrawal before every
	// retry; an empty budget ends Do with the last error joined with ErrBudgetExhausted.
	Budget *Budget
	// OnRetry, when not nil, is called before each wait with the attempt that just failed (from 1),
	// the delay about to be slept and that attempt's error. It runs on Do's goroutine.
	OnRetry func(attempt int, delay time.Duration, err error)
	// Sleep waits d or until ctx is done, returning ctx.Err() in the latter case. Nil means a timer
	// that selects on ctx.Done(). Tests inject a sleeper that records d and returns at once.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Do calls op until it succeeds, returns an error marked Permanent, runs out of attempts or budget,
// or ctx is done. It is for in-process retries of a call, such as a client resending a request with
// the same idempotency key; a message consumer hands delays to the broker instead.
//
// Between attempts Do waits Policy.Delay(attempt), or the delay of an After error, in a sleep that
// selects on ctx.Done(). It returns nil on success; the Permanent error as returned by op (IsPermanent
// stays true); the last error when attempts run out; the last error joined with ErrBudgetExhausted
// when the budget refuses a retry; and the last error joined with ctx.Err() when ctx is done before
// or between attempts (just ctx.Err() when op was never called). op receives ctx and should honour it.
func Do(ctx context.Context, op func(ctx context.Context) error, opts *DoOptions) error {
	var o DoOptions
	if opts != nil {
		o = *opts
	}
	sleep := o.Sleep
	if sleep == nil {
		sleep = sleepCtx
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	o.Budget.Deposit()
	for attempt := 1; ; attempt++ {
		err := op(ctx)
		if err == nil {
			return nil
		}
		if IsPermanent(err) {
			return err
		}
		if cerr := ctx.Err(); cerr != nil {
			return joinCtx(err, cerr)
		}
		if o.Policy.Exhausted(attempt) {
			return err
		}
		delay, ok := AfterDelay(err)
		if !ok {
			delay = o.Policy.Delay(attempt)
		}
		if !o.Budget.TryWithdraw() {
			return errors.Join(err, ErrBudgetExhausted)
		}
		if o.OnRetry != nil {
			o.OnRetry(attempt, delay, err)
		}
		if serr := sleep(ctx, delay); serr != nil {
			return joinCtx(err, serr)
		}
		if cerr := ctx.Err(); cerr != nil {
			return joinCtx(err, cerr)
		}
	}
}

// joinCtx joins the operation's last error with the context's, unless the former already wraps it.
func joinCtx(last, cerr error) error {
	if errors.Is(last, cerr) {
		return last
	}
	return errors.Join(last, cerr)
}

// sleepCtx waits d or until ctx is done, whichever comes first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
