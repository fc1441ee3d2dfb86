package retry

import (
	"math"
	"math/rand/v2"
	"strconv"
	"time"
)

// Backoff computes the delay before the next try after the attempt-th failure.
//
// Attempts are numbered from 1 (the first try); Delay(1) is the wait between the first and the second
// try. Implementations are pure functions of attempt, apart from injected randomness, so the attempt
// count may come from the broker (JetStream's NumDelivered) and survive a crash. Attempts below 1 are
// treated as 1. Implementations must be safe for concurrent use.
type Backoff interface {
	// Delay returns the wait after the attempt-th failure. It is never negative and never above
	// MaxDelay(attempt).
	Delay(attempt int) time.Duration
	// MaxDelay returns the upper bound of Delay(attempt), used to validate retention against the
	// redelivery horizon (see Policy.Horizon).
	MaxDelay(attempt int) time.Duration
}

// Jitter selects how Exponential randomises its delays. The zero value is JitterFull.
type Jitter int

const (
	// JitterFull draws the delay uniformly from [0, base), where base = min(Max,
	// Initial·Multiplier^(attempt−1)). It spreads retries the most and is the default: when many
	// clients fail together, it de-synchronises them best for the least total wait.
	JitterFull Jitter = iota
	// JitterEqual draws the delay uniformly from [base/2, base): never shorter than half the
	// exponential schedule, still spread.
	JitterEqual
	// JitterDecorrelated draws the delay uniformly from [Initial, min(Max, 3·base)).
	//
	// The classic decorrelated jitter (sleep = min(Max, uniform(Initial, 3·previous sleep))) depends
	// on the previous delay, which a broker-driven consumer does not have: only the attempt count
	// survives a crash. This variant replaces the previous sleep with the deterministic schedule, so
	// it is a pure function of attempt: with Multiplier 3 its upper bound is exactly the envelope
	// Initial·3^attempt of the classic recurrence. Its waits never fall below Initial and average
	// about 1.5·base, longer than JitterFull's base/2.
	JitterDecorrelated
	// JitterNone uses base itself: a deterministic capped exponential schedule.
	JitterNone
)

// String returns the jitter's lower-case name ("full", "equal", "decorrelated", "none").
func (j Jitter) String() string {
	switch j {
	case JitterFull:
		return "full"
	case JitterEqual:
		return "equal"
	case JitterDecorrelated:
		return "decorrelated"
	case JitterNone:
		return "none"
	}
	return "jitter(" + strconv.Itoa(int(j)) + ")"
}

// Default values of Exponential's fields.
const (
	// DefaultInitial is Exponential.Initial when it is zero: 100ms.
	DefaultInitial = 100 * time.Millisecond
	// DefaultMax is Exponential.Max when it is zero: 30s.
	DefaultMax = 30 * time.Second
	// DefaultMultiplier is Exponential.Multiplier when it is below 1: 2.
	DefaultMultiplier = 2.0
)

// Exponential is a capped exponential backoff with jitter. Its zero value is usable: 100ms doubling up
// to 30s with full jitter, drawing from math/rand/v2.
//
// The schedule without jitter is base(attempt) = min(Max, Initial·Multiplier^(attempt−1)); Jitter
// chooses how a delay is drawn around it (see the Jitter constants).
type Exponential struct {
	// Initial is the base delay after the first failure. Zero or negative means DefaultInitial (100ms).
	Initial time.Duration
	// Max caps every delay. Zero or negative means DefaultMax (30s). When Max is below Initial,
	// every delay is at most Max.
	Max time.Duration
	// Multiplier is the growth factor of the schedule per attempt. Values below 1 (including zero)
	// and NaN mean DefaultMultiplier (2); 1 gives a constant base.
	Multiplier float64
	// Jitter selects the randomisation; the zero value is JitterFull.
	Jitter Jitter
	// Rand returns a number in [0, 1); values outside are clamped into it. Nil means
	// math/rand/v2.Float64. It must be safe for concurrent use when Delay is called concurrently.
	Rand func() float64
}

func (e Exponential) params() (initial, maxd time.Duration, mult float64) {
	initial, maxd, mult = e.Initial, e.Max, e.Multiplier
	if initial <= 0 {
		initial = DefaultInitial
	}
	if maxd <= 0 {
		maxd = DefaultMax
	}
	if !(mult >= 1) { // also catches NaN
		mult = DefaultMultiplier
	}
	if initial > maxd {
		initial = maxd
	}
	return initial, maxd, mult
}

// base returns min(maxd, initial·mult^(attempt−1)) without overflowing.
func base(initial, maxd time.Duration, mult float64, attempt int) time.Duration {
	if attempt < 1 {
		attempt = 1
	}
	f := float64(initial) * math.Pow(mult, float64(attempt-1))
	if !(f < float64(maxd)) { // also catches +Inf and NaN
		return maxd
	}
	return time.Duration(f)
}

// window returns the half-open interval [lo, hi) a delay is drawn from.
func (e Exponential) window(attempt int) (lo, hi time.Duration) {
	initial, maxd, mult := e.params()
	b := base(initial, maxd, mult, attempt)
	switch e.Jitter {
	case JitterEqual:
		return b - b/2, b
	case JitterDecorrelated:
		hi = maxd
		if b < maxd/3 {
			hi = 3 * b
		}
		return initial, hi
	case JitterNone:
		return b, b
	default: // JitterFull and unknown values
		return 0, b
	}
}

// Delay returns the delay after the attempt-th failure (attempt ≥ 1; smaller values count as 1),
// drawn according to e.Jitter. The result lies in the interval documented on the Jitter constant and
// never exceeds e.MaxDelay(attempt).
func (e Exponential) Delay(attempt int) time.Duration {
	lo, hi := e.window(attempt)
	if hi <= lo {
		return lo
	}
	r := rand.Float64
	if e.Rand != nil {
		r = e.Rand
	}
	return lo + scale(hi-lo, r())
}

// MaxDelay returns the upper bound of Delay(attempt): the exponential base for JitterFull,
// JitterEqual and JitterNone, and min(Max, 3·base) for JitterDecorrelated.
func (e Exponential) MaxDelay(attempt int) time.Duration {
	_, hi := e.window(attempt)
	return hi
}

// scale returns d·r for r clamped into [0, 1], never exceeding d.
func scale(d time.Duration, r float64) time.Duration {
	if !(r > 0) { // also catches NaN
		return 0
	}
	f := float64(d) * r
	if !(f < float64(d)) {
		return d
	}
	return time.Duration(f)
}

// Constant is a Backoff that always waits the same duration; negative values mean zero.
type Constant time.Duration

// Delay returns c (zero when c is negative), whatever the attempt.
func (c Constant) Delay(attempt int) time.Duration { return max(time.Duration(c), 0) }

// MaxDelay returns c (zero when c is negative), the same as Delay.
func (c Constant) MaxDelay(attempt int) time.Duration { return max(time.Duration(c), 0) }
