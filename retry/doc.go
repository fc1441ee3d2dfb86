// Package retry is idemq's vocabulary for trying again: backoff schedules, attempt limits, error
// classes, a retry budget, and Do for in-process retries.
//
// # Backoff
//
// A Backoff maps an attempt number to a delay. Attempts count from 1 (the first try), and every
// schedule here is a pure function of that number, apart from injectable randomness: a consumer can
// use the broker's delivery count (JetStream's NumDelivered), which survives crashes, instead of state
// kept in memory. Exponential is capped exponential backoff, base = min(Max, Initial·Multiplier^(n−1)),
// with four jitters:
//
//	JitterFull          uniform in [0, base)                 (default; spreads synchronized clients best)
//	JitterEqual         uniform in [base/2, base)
//	JitterDecorrelated  uniform in [Initial, min(Max, 3·base))  (pure-function variant, see its doc)
//	JitterNone          base
//
// Constant waits the same delay every time. MaxDelay gives each schedule's upper bound.
//
// # Policy
//
// Policy adds an attempt limit (MaxAttempts, total tries including the first, default 5) to a
// Backoff (default Exponential{}). A consumer asks, after the n-th failed delivery, Exhausted(n)
// (dead-letter) or else Delay(n) (NakWithDelay). Horizon sums the largest possible delays: the longest
// a message can keep coming back, which a dedupe retention must outlast.
//
// # Error classes
//
// An operation tells the retrier what to do through the error it returns, read with errors.As
// through any wrapping:
//
//	Permanent(err)   never retry (Class Terminal; dead-letter reason "permanent")
//	After(d, err)    retry no sooner than d (Class Deferred), e.g. a Retry-After header
//	anything else    retry with backoff (Class Transient)
//
// Classify returns the class; IsPermanent and AfterDelay read the marks directly.
//
// # Budget
//
// Retries amplify overload: five attempts per request can turn an outage into five times the load.
// A Budget caps retries to a ratio of first attempts plus a small reserve over a sliding window
// (Finagle's retry budget), so NewBudget(0.1, 10) keeps a failing dependency near 1.1× its normal
// load. Call Deposit on every first attempt and TryWithdraw before every retry; when it returns false,
// do not retry now. A nil *Budget allows everything.
//
// # Do
//
// Do runs a call with a Policy and an optional Budget, sleeping between attempts in a select on
// ctx.Done(), stopping at a Permanent error, honouring After, and returning the last error (joined
// with ctx.Err() when the context ended the retries). It is meant for clients, such as one resending a
// payment with the same idempotency key; a message consumer must not sleep while holding a message and
// hands the delay to the broker instead.
//
// Everything here is safe for concurrent use, keeps no global state, and accepts injected randomness
// (Exponential.Rand), clocks (BudgetConfig.Now) and sleepers (DoOptions.Sleep) so tests never sleep.
package retry
