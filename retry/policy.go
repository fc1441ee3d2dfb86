package retry

import (
	"math"
	"time"
)

// DefaultMaxAttempts is Policy.MaxAttempts when it is zero or negative: 5 tries in total.
const DefaultMaxAttempts = 5

// Policy combines an attempt limit with a backoff schedule. Its zero value is usable: 5 attempts in
// total with Exponential{} (100ms doubling to 30s, full jitter) between them.
//
// Attempts are counted from 1, the first try, so a consumer can pass the broker's delivery count
// directly: after the attempt-th delivery failed, retry after Delay(attempt) unless
// Exhausted(attempt).
type Policy struct {
	// MaxAttempts is the total number of attempts including the first; 1 disables retries. Zero or
	// negative means DefaultMaxAttempts (5).
	MaxAttempts int
	// Backoff computes the delays between attempts. Nil means Exponential{}.
	Backoff Backoff
}

func (p Policy) backoff() Backoff {
	if p.Backoff == nil {
		return Exponential{}
	}
	return p.Backoff
}

// Attempts returns MaxAttempts with the default applied: the total number of attempts, at least 1.
func (p Policy) Attempts() int {
	if p.MaxAttempts <= 0 {
		return DefaultMaxAttempts
	}
	return p.MaxAttempts
}

// Exhausted reports whether no attempt is left after the attempt-th one failed, that is
// attempt >= Attempts(). A consumer dead-letters the message (reason "exhausted") when it is true.
func (p Policy) Exhausted(attempt int) bool { return attempt >= p.Attempts() }

// Delay returns the backoff delay after the attempt-th failure (attempt ≥ 1). It does not look at the
// attempt limit: call Exhausted first.
func (p Policy) Delay(attempt int) time.Duration { return p.backoff().Delay(attempt) }

// Horizon returns the sum of MaxDelay over every retry, attempts 1 to Attempts()−1: the longest time a
// message can keep being redelivered because of this policy's backoff. It saturates at the largest
// time.Duration instead of overflowing. Delays requested with After are not part of it, nor are the
// broker's ack wait and handler run time; callers validating a dedupe retention add those.
func (p Policy) Horizon() time.Duration {
	b := p.backoff()
	retries := p.Attempts() - 1
	var sum time.Duration
	for a := 1; a <= retries; a++ {
		d := max(b.MaxDelay(a), 0)
		if steady(b, a) {
			// Every remaining retry waits at most d: add them at once, so a huge MaxAttempts
			// does not cost a loop per attempt.
			n := time.Duration(retries - a + 1)
			if d > 0 && n > (math.MaxInt64-sum)/d {
				return math.MaxInt64
			}
			return sum + n*d
		}
		if sum > math.MaxInt64-d {
			return math.MaxInt64
		}
		sum += d
	}
	return sum
}

// steady reports whether b's MaxDelay is the same for attempt and every later attempt. It knows the
// backoffs of this package; for any other it returns false.
func steady(b Backoff, attempt int) bool {
	switch b := b.(type) {
	case Constant:
		return true
	case Exponential:
		_, maxd, mult := b.params()
		return mult == 1 || b.MaxDelay(attempt) == maxd
	}
	return false
}
