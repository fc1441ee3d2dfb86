package retry

import (
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a manually advanced clock, safe for concurrent use.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) Now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) Advance(d time.Duration) { c.ns.Add(int64(d)) }

func newFakeBudget(ratio float64, reserve int, window time.Duration) (*Budget, *fakeClock) {
	c := &fakeClock{}
	c.ns.Store(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano())
	return NewBudgetConfig(BudgetConfig{Ratio: ratio, Reserve: reserve, Window: window, Now: c.Now}), c
}

// failingClient simulates requests against a dependency that always fails, retrying up to maxAttempts
// while the budget allows, and returns how many calls reached the dependency.
func failingClient(b *Budget, requests, maxAttempts int) (calls int) {
	for range requests {
		b.Deposit()
		calls++ // the first attempt always runs
		for a := 1; a < maxAttempts && b.TryWithdraw(); a++ {
			calls++
		}
	}
	return calls
}

func TestBudgetUnderTotalFailure(t *testing.T) {
	tests := []struct {
		ratio   float64
		reserve int
	}{
		{0, 0}, {0, 10}, {0.1, 0}, {0.1, 10}, {0.2, 100}, {1.0 / 3, 5}, {1, 0}, {2.5, 3},
	}
	const requests, maxAttempts = 1000, 5
	for _, tt := range tests {
		b, _ := newFakeBudget(tt.ratio, tt.reserve, 0)
		calls := failingClient(b, requests, maxAttempts)
		bound := (1+tt.ratio)*requests + float64(tt.reserve)
		if float64(calls) > bound {
			t.Errorf("ratio %v reserve %d: %d calls, above (1+ratio)·first+reserve = %v", tt.ratio, tt.reserve, calls, bound)
		}
		// The budget must also be usable: it grants what it promises, up to one token of rounding, as
		// long as the attempt limit does not bind first.
		if limit := float64(requests * maxAttempts); bound < limit && float64(calls) < bound-1 {
			t.Errorf("ratio %v reserve %d: only %d calls, budget allowed %v", tt.ratio, tt.reserve, calls, bound)
		}
	}
}

func TestBudgetUnderTotalFailureConcurrent(t *testing.T) {
	const ratio, reserve, workers, requests = 0.1, 10, 8, 500
	b, _ := newFakeBudget(ratio, reserve, 0)
	var total atomic.Int64
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() { total.Add(int64(failingClient(b, requests, 5))) })
	}
	wg.Wait()
	first := workers * requests
	if bound := (1+ratio)*float64(first) + reserve; float64(total.Load()) > bound {
		t.Fatalf("%d calls, above %v", total.Load(), bound)
	}
	if total.Load() <= int64(first) {
		t.Fatalf("%d calls for %d first attempts: no retry was allowed", total.Load(), first)
	}
}

func TestBudgetWindow(t *testing.T) {
	const window = 10 * time.Second
	b, clock := newFakeBudget(0.1, 2, window)
	if got := b.Available(); got != 2 {
		t.Fatalf("fresh budget: Available() = %v, want the reserve 2", got)
	}
	for range 100 {
		b.Deposit()
	}
	if got := b.Available(); math.Abs(got-12) > 1e-9 {
		t.Fatalf("after 100 deposits: Available() = %v, want 12", got)
	}
	for i := range 12 {
		if !b.TryWithdraw() {
			t.Fatalf("withdrawal %d refused with tokens left", i+1)
		}
	}
	if b.TryWithdraw() {
		t.Fatal("withdrawal allowed from an empty budget")
	}

	// A clock stepping back must not revive anything.
	clock.Advance(-time.Hour)
	if b.TryWithdraw() {
		t.Fatal("withdrawal allowed after the clock stepped back")
	}
	clock.Advance(time.Hour)

	// Once the window has passed, deposits and withdrawals expire: only the reserve is left.
	clock.Advance(window)
	if got := b.Available(); got != 2 {
		t.Fatalf("after the window: Available() = %v, want the reserve 2", got)
	}
	// Deposits made in part of the window expire with their slot, not before.
	for range 10 {
		b.Deposit()
	}
	clock.Advance(window / 2)
	if got := b.Available(); math.Abs(got-3) > 1e-9 {
		t.Fatalf("half a window later: Available() = %v, want 3", got)
	}
	clock.Advance(window / 2)
	if got := b.Available(); got != 2 {
		t.Fatalf("a window later: Available() = %v, want 2", got)
	}
}

func TestBudgetSpentDepositsLeaveNoDebtAfterWindow(t *testing.T) {
	// Retries that spent old deposits can drive the balance below the reserve when those deposits
	// expire first; both expire within one more window.
	const window = 10 * time.Second
	b, clock := newFakeBudget(1, 0, window)
	b.Deposit()
	clock.Advance(window / 2)
	if !b.TryWithdraw() {
		t.Fatal("withdrawal refused with a token deposited")
	}
	clock.Advance(window / 2)
	if got := b.Available(); got != 0 {
		t.Fatalf("Available() = %v while the deposit expired before its withdrawal, want 0", got)
	}
	b.Deposit()
	if b.TryWithdraw() {
		t.Fatal("withdrawal allowed while the expired deposit's spending still counts")
	}
	clock.Advance(window)
	b.Deposit()
	if !b.TryWithdraw() {
		t.Fatal("withdrawal refused after everything old expired")
	}
}

func TestBudgetArguments(t *testing.T) {
	tests := []struct {
		name    string
		ratio   float64
		reserve int
		want    float64 // Available after one deposit
	}{
		{"negative ratio", -1, 0, 0},
		{"NaN ratio", math.NaN(), 0, 0},
		{"negative reserve", 0.5, -4, 0.5},
		{"huge ratio is capped", math.Inf(1), 0, MaxBudgetRatio},
	}
	for _, tt := range tests {
		b, _ := newFakeBudget(tt.ratio, tt.reserve, 0)
		b.Deposit()
		if got := b.Available(); got != tt.want {
			t.Errorf("%s: Available() = %v, want %v", tt.name, got, tt.want)
		}
	}
	if b := NewBudget(0.1, 1); !b.TryWithdraw() || b.TryWithdraw() {
		t.Error("NewBudget on the real clock: want exactly the reserve of 1 retry")
	}
}

func TestNilBudgetAllowsEverything(t *testing.T) {
	var b *Budget
	b.Deposit()
	for range 1000 {
		if !b.TryWithdraw() {
			t.Fatal("nil Budget refused a retry")
		}
	}
	if !math.IsInf(b.Available(), 1) {
		t.Errorf("nil Budget Available() = %v, want +Inf", b.Available())
	}
}
