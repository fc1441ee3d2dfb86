package retry

import (
	"math/rand/v2"
	"testing"
	"time"
)

var sinkDuration time.Duration

// BenchmarkDelay measures one delay computation per jitter with the default random source.
// "baseline" is one math/rand/v2 draw, the floor every jittered delay pays.
func BenchmarkDelay(b *testing.B) {
	b.Run("baseline", func(b *testing.B) {
		var f float64
		for b.Loop() {
			f += rand.Float64()
		}
		sinkDuration = time.Duration(f)
	})
	for _, j := range []Jitter{JitterNone, JitterFull, JitterEqual, JitterDecorrelated} {
		e := Exponential{Jitter: j}
		b.Run(j.String(), func(b *testing.B) {
			a := 0
			for b.Loop() {
				a = a%16 + 1
				sinkDuration = e.Delay(a)
			}
		})
	}
}

// BenchmarkDelayParallel measures Delay under contention for the default random source.
func BenchmarkDelayParallel(b *testing.B) {
	e := Exponential{}
	b.RunParallel(func(pb *testing.PB) {
		var d time.Duration
		a := 0
		for pb.Next() {
			a = a%16 + 1
			d += e.Delay(a)
		}
		_ = d
	})
}

// BenchmarkBudget measures a Deposit followed by a TryWithdraw on the real clock.
func BenchmarkBudget(b *testing.B) {
	bud := NewBudget(0.1, 10)
	for b.Loop() {
		bud.Deposit()
		bud.TryWithdraw()
	}
}
