package retry

import (
	"math"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

func seeded(seed uint64) func() float64 {
	return rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)).Float64
}

func constRand(r float64) func() float64 { return func() float64 { return r } }

func TestExponentialScheduleWithoutJitter(t *testing.T) {
	tests := []struct {
		name string
		e    Exponential
		want []time.Duration // Delay(1), Delay(2), ...
	}{
		{"defaults", Exponential{Jitter: JitterNone}, []time.Duration{
			100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond,
			1600 * time.Millisecond, 3200 * time.Millisecond, 6400 * time.Millisecond, 12800 * time.Millisecond,
			25600 * time.Millisecond, 30 * time.Second, 30 * time.Second,
		}},
		{"custom", Exponential{Initial: time.Second, Max: 10 * time.Second, Multiplier: 3, Jitter: JitterNone},
			[]time.Duration{time.Second, 3 * time.Second, 9 * time.Second, 10 * time.Second, 10 * time.Second}},
		{"multiplier one is constant", Exponential{Initial: time.Second, Multiplier: 1, Jitter: JitterNone},
			[]time.Duration{time.Second, time.Second, time.Second}},
		{"multiplier below one means default", Exponential{Initial: time.Second, Multiplier: 0.5, Jitter: JitterNone},
			[]time.Duration{time.Second, 2 * time.Second, 4 * time.Second}},
		{"NaN multiplier means default", Exponential{Initial: time.Second, Multiplier: math.NaN(), Jitter: JitterNone},
			[]time.Duration{time.Second, 2 * time.Second}},
		{"negative fields mean defaults", Exponential{Initial: -1, Max: -1, Multiplier: -3, Jitter: JitterNone},
			[]time.Duration{100 * time.Millisecond, 200 * time.Millisecond}},
		{"max below initial caps everything", Exponential{Initial: time.Minute, Max: time.Second, Jitter: JitterNone},
			[]time.Duration{time.Second, time.Second}},
		{"fractional multiplier", Exponential{Initial: time.Second, Multiplier: 1.5, Jitter: JitterNone},
			[]time.Duration{time.Second, 1500 * time.Millisecond, 2250 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i, want := range tt.want {
				attempt := i + 1
				if got := tt.e.Delay(attempt); got != want {
					t.Errorf("Delay(%d) = %v, want %v", attempt, got, want)
				}
				if got := tt.e.MaxDelay(attempt); got != want {
					t.Errorf("MaxDelay(%d) = %v, want %v", attempt, got, want)
				}
			}
		})
	}
}

func TestExponentialAttemptBelowOneCountsAsOne(t *testing.T) {
	e := Exponential{Jitter: JitterNone}
	for _, a := range []int{0, -1, math.MinInt} {
		if got := e.Delay(a); got != DefaultInitial {
			t.Errorf("Delay(%d) = %v, want %v", a, got, DefaultInitial)
		}
	}
}

func TestExponentialNeverOverflows(t *testing.T) {
	for _, j := range []Jitter{JitterFull, JitterEqual, JitterDecorrelated, JitterNone} {
		for _, maxd := range []time.Duration{time.Hour, math.MaxInt64} {
			e := Exponential{Initial: time.Second, Max: maxd, Multiplier: 1e9, Jitter: j, Rand: constRand(math.Nextafter(1, 0))}
			for _, a := range []int{1, 2, 3, 50, 1000, math.MaxInt} {
				d, m := e.Delay(a), e.MaxDelay(a)
				if d < 0 || d > m || m > maxd {
					t.Errorf("%v max=%v attempt %d: Delay %v MaxDelay %v", j, maxd, a, d, m)
				}
				if a >= 3 && m != maxd {
					t.Errorf("%v max=%v attempt %d: MaxDelay %v, want the cap", j, maxd, a, m)
				}
			}
		}
	}
}

// TestJitterWindows pins each jitter's interval with the extreme random values, and checks that
// out-of-range random values are clamped.
func TestJitterWindows(t *testing.T) {
	const initial, maxd = 100 * time.Millisecond, 30 * time.Second
	almostOne := math.Nextafter(1, 0)
	tests := []struct {
		j      Jitter
		a      int
		lo, hi time.Duration // Delay with r=0, MaxDelay
	}{
		{JitterFull, 1, 0, 100 * time.Millisecond},
		{JitterFull, 4, 0, 800 * time.Millisecond},
		{JitterFull, 20, 0, maxd},
		{JitterEqual, 1, 50 * time.Millisecond, 100 * time.Millisecond},
		{JitterEqual, 4, 400 * time.Millisecond, 800 * time.Millisecond},
		{JitterEqual, 20, 15 * time.Second, maxd},
		{JitterDecorrelated, 1, initial, 300 * time.Millisecond},
		{JitterDecorrelated, 4, initial, 2400 * time.Millisecond},
		{JitterDecorrelated, 9, initial, maxd}, // 3·25.6s is over the cap
		{JitterDecorrelated, 20, initial, maxd},
		{JitterNone, 3, 400 * time.Millisecond, 400 * time.Millisecond},
	}
	for _, tt := range tests {
		e := Exponential{Jitter: tt.j}
		if got := e.MaxDelay(tt.a); got != tt.hi {
			t.Errorf("%v MaxDelay(%d) = %v, want %v", tt.j, tt.a, got, tt.hi)
		}
		for _, r := range []float64{0, -1, math.NaN(), math.Inf(-1)} {
			e.Rand = constRand(r)
			if got := e.Delay(tt.a); got != tt.lo {
				t.Errorf("%v Delay(%d) with r=%v = %v, want %v", tt.j, tt.a, r, got, tt.lo)
			}
		}
		e.Rand = constRand(almostOne)
		if got := e.Delay(tt.a); got > tt.hi || tt.hi-got > time.Microsecond {
			t.Errorf("%v Delay(%d) with r→1 = %v, want just under %v", tt.j, tt.a, got, tt.hi)
		}
		for _, r := range []float64{1, 7, math.Inf(1)} {
			e.Rand = constRand(r)
			if got := e.Delay(tt.a); got != tt.hi {
				t.Errorf("%v Delay(%d) with r=%v = %v, want clamped to %v", tt.j, tt.a, r, got, tt.hi)
			}
		}
	}
}

// TestJitterDistribution draws seeded samples from each jitter and checks the bounds, the mean (within
// five standard errors of the uniform's mean) and the shape (Kolmogorov–Smirnov against the uniform
// distribution on the documented interval, at the 0.1% level).
func TestJitterDistribution(t *testing.T) {
	const n = 20000
	e := Exponential{Initial: 100 * time.Millisecond, Max: 10 * time.Second}
	for ji, j := range []Jitter{JitterFull, JitterEqual, JitterDecorrelated} {
		for _, attempt := range []int{1, 3, 6, 12} {
			e.Jitter = j
			e.Rand = seeded(uint64(100*ji + attempt))
			var lo time.Duration
			b := base(e.Initial, e.Max, 2, attempt)
			hi := b
			switch j {
			case JitterEqual:
				lo = b - b/2
			case JitterDecorrelated:
				lo, hi = e.Initial, min(e.Max, 3*b)
			}
			if got := e.MaxDelay(attempt); got != hi {
				t.Fatalf("%v attempt %d: MaxDelay %v, want %v", j, attempt, got, hi)
			}
			xs := make([]float64, n)
			var sum float64
			for i := range xs {
				d := e.Delay(attempt)
				if d < lo || d > hi {
					t.Fatalf("%v attempt %d: Delay %v outside [%v, %v]", j, attempt, d, lo, hi)
				}
				x := float64(d-lo) / float64(hi-lo) // uniform on [0,1) when the jitter is right
				xs[i] = x
				sum += x
			}
			mean := sum / n
			if se := 1 / math.Sqrt(12*n); math.Abs(mean-0.5) > 5*se {
				t.Errorf("%v attempt %d: normalised mean %.4f, want 0.5±%.4f", j, attempt, mean, 5*se)
			}
			slices.Sort(xs)
			var ks float64
			for i, x := range xs {
				ks = max(ks, math.Abs(float64(i+1)/n-x), math.Abs(x-float64(i)/n))
			}
			if crit := 1.95 / math.Sqrt(n); ks > crit {
				t.Errorf("%v attempt %d: KS statistic %.4f above %.4f: not uniform on [%v, %v]", j, attempt, ks, crit, lo, hi)
			}
		}
	}
}

func TestJitterDistributionCatchesWrongInterval(t *testing.T) {
	// The KS check above must be able to fail: samples from JitterEqual normalised against JitterFull's
	// interval are far from uniform.
	const n = 2000
	e := Exponential{Jitter: JitterEqual, Rand: seeded(7)}
	xs := make([]float64, n)
	for i := range xs {
		xs[i] = float64(e.Delay(3)) / float64(e.MaxDelay(3))
	}
	slices.Sort(xs)
	var ks float64
	for i, x := range xs {
		ks = max(ks, math.Abs(float64(i+1)/n-x))
	}
	if ks < 1.95/math.Sqrt(n) {
		t.Fatalf("KS statistic %.4f did not reject a wrong interval", ks)
	}
}

func TestExponentialDefaultRandConcurrent(t *testing.T) {
	e := Exponential{}
	done := make(chan struct{})
	for range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for a := 1; a < 200; a++ {
				if d := e.Delay(a % 20); d < 0 || d > e.MaxDelay(a%20) {
					t.Errorf("Delay(%d) = %v out of bounds", a%20, d)
				}
			}
		}()
	}
	for range 4 {
		<-done
	}
}

func TestConstant(t *testing.T) {
	tests := []struct {
		c    Constant
		want time.Duration
	}{
		{Constant(time.Second), time.Second},
		{Constant(0), 0},
		{Constant(-time.Second), 0},
	}
	for _, tt := range tests {
		for _, a := range []int{0, 1, 100} {
			if got := tt.c.Delay(a); got != tt.want {
				t.Errorf("%v.Delay(%d) = %v, want %v", time.Duration(tt.c), a, got, tt.want)
			}
			if got := tt.c.MaxDelay(a); got != tt.want {
				t.Errorf("%v.MaxDelay(%d) = %v, want %v", time.Duration(tt.c), a, got, tt.want)
			}
		}
	}
}

func TestJitterString(t *testing.T) {
	for j, want := range map[Jitter]string{JitterFull: "full", JitterEqual: "equal", JitterDecorrelated: "decorrelated", JitterNone: "none", 9: "jitter(9)"} {
		if got := j.String(); got != want {
			t.Errorf("Jitter(%d).String() = %q, want %q", int(j), got, want)
		}
	}
}
