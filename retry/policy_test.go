package retry

import (
	"math"
	"testing"
	"time"
)

func TestPolicyAttemptsAndExhausted(t *testing.T) {
	tests := []struct {
		max       int
		attempts  int
		exhausted int // first attempt number for which Exhausted is true
	}{
		{0, 5, 5},
		{-3, 5, 5},
		{1, 1, 1},
		{3, 3, 3},
	}
	for _, tt := range tests {
		p := Policy{MaxAttempts: tt.max}
		if got := p.Attempts(); got != tt.attempts {
			t.Errorf("MaxAttempts %d: Attempts() = %d, want %d", tt.max, got, tt.attempts)
		}
		for a := 1; a <= tt.attempts+1; a++ {
			if got, want := p.Exhausted(a), a >= tt.exhausted; got != want {
				t.Errorf("MaxAttempts %d: Exhausted(%d) = %v, want %v", tt.max, a, got, want)
			}
		}
	}
}

func TestPolicyDelay(t *testing.T) {
	if got := (Policy{Backoff: Constant(time.Second)}).Delay(3); got != time.Second {
		t.Errorf("Constant policy Delay = %v, want 1s", got)
	}
	// The zero Policy uses Exponential{}: full jitter below the default schedule.
	var p Policy
	for a := 1; a <= 12; a++ {
		if d, m := p.Delay(a), (Exponential{}).MaxDelay(a); d < 0 || d > m {
			t.Errorf("zero Policy Delay(%d) = %v, want in [0, %v]", a, d, m)
		}
	}
}

func TestPolicyHorizon(t *testing.T) {
	tests := []struct {
		name string
		p    Policy
		want time.Duration
	}{
		{"zero policy: 4 retries of the default schedule", Policy{}, 100*time.Millisecond + 200*time.Millisecond + 400*time.Millisecond + 800*time.Millisecond},
		{"single attempt never waits", Policy{MaxAttempts: 1}, 0},
		{"constant", Policy{MaxAttempts: 4, Backoff: Constant(time.Minute)}, 3 * time.Minute},
		{"capped", Policy{MaxAttempts: 6, Backoff: Exponential{Initial: time.Second, Max: 5 * time.Second, Jitter: JitterEqual}},
			1*time.Second + 2*time.Second + 4*time.Second + 5*time.Second + 5*time.Second},
		{"decorrelated uses its larger bound", Policy{MaxAttempts: 3, Backoff: Exponential{Initial: time.Second, Jitter: JitterDecorrelated}},
			3*time.Second + 6*time.Second},
		{"saturates", Policy{MaxAttempts: 4, Backoff: Constant(math.MaxInt64 / 2)}, math.MaxInt64},
		{"negative constant counts as zero", Policy{MaxAttempts: 4, Backoff: Constant(-time.Second)}, 0},
		{"huge attempt limit, capped schedule", Policy{MaxAttempts: 1 << 30, Backoff: Exponential{Initial: time.Second, Max: 4 * time.Second}},
			time.Second + 2*time.Second + ((1<<30)-3)*4*time.Second},
		{"huge attempt limit, constant multiplier", Policy{MaxAttempts: 1 << 30, Backoff: Exponential{Initial: time.Second, Multiplier: 1, Jitter: JitterEqual}},
			((1 << 30) - 1) * time.Second},
		{"huge attempt limit saturates", Policy{MaxAttempts: math.MaxInt, Backoff: Exponential{}}, math.MaxInt64},
		{"custom backoff is summed attempt by attempt", Policy{MaxAttempts: 4, Backoff: linear(time.Second)}, 6 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.p.Horizon(); got != tt.want {
				t.Errorf("Horizon() = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestPolicyHorizonBoundsEveryDelay(t *testing.T) {
	p := Policy{MaxAttempts: 8, Backoff: Exponential{Jitter: JitterDecorrelated, Rand: seeded(3)}}
	for range 1000 {
		var sum time.Duration
		for a := 1; !p.Exhausted(a); a++ {
			sum += p.Delay(a)
		}
		if sum > p.Horizon() {
			t.Fatalf("schedule total %v above Horizon %v", sum, p.Horizon())
		}
	}
}

// linear is a Backoff this package does not know: attempt × step.
type linear time.Duration

func (l linear) Delay(attempt int) time.Duration    { return time.Duration(attempt) * time.Duration(l) }
func (l linear) MaxDelay(attempt int) time.Duration { return l.Delay(attempt) }
