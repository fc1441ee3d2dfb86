package retry

import (
	"math"
	"sync"
	"time"
)

// DefaultBudgetWindow is BudgetOptions.Window when it is zero or negative: 10s.
const DefaultBudgetWindow = 10 * time.Second

// MaxBudgetRatio is the largest ratio a Budget honours; larger ratios are lowered to it.
const MaxBudgetRatio = 1000

const (
	budgetSlots = 10        // the window is kept as this many rotating slots
	tokenScale  = 1_000_000 // one retry token in fixed-point units, so ratios add up exactly
	maxReserve  = 1 << 30   // reserve cap, keeps fixed-point sums far from overflow
)

// BudgetConfig configures a Budget built by NewBudgetConfig. With a zero Ratio and Reserve the
// budget allows no retry at all: set at least one of them.
type BudgetConfig struct {
	// Ratio is how many retries each first attempt funds. Negative or NaN means zero; above
	// MaxBudgetRatio means MaxBudgetRatio.
	Ratio float64
	// Reserve is how many retries are always available per window. Negative means zero.
	Reserve int
	// Window is how long a deposit or withdrawal counts, kept in ten slots, so an entry expires
	// between 0.9·Window and Window after it was made. Zero or negative means DefaultBudgetWindow
	// (10s).
	Window time.Duration
	// Now is the clock. Nil means time.Now. Tests inject a fake clock to move through windows
	// without sleeping.
	Now func() time.Time
}

// Budget caps retries to a fraction of first attempts, so a failing dependency sees about
// (1+ratio)× its normal load instead of MaxAttempts×. A nil *Budget allows every retry.
//
// It is a Finagle-style retry budget: every first attempt deposits ratio tokens, every retry
// withdraws one, and reserve tokens are always available on top, so that a client with little
// traffic can still retry. Deposits and withdrawals expire after the window, so old traffic neither
// funds a retry storm now nor blocks retries forever. Within one window, under a 100% failure rate,
//
//	retries ≤ ratio·first attempts + reserve, so calls ≤ (1+ratio)·first attempts + reserve.
//
// This was chosen over gRPC's retry throttling (a token bucket filled by successes and drained by
// failures, retrying only above half full) because it ties retries directly to request volume, which
// is the quantity a consumer knows cheaply (JetStream's delivery count 1 is a first attempt) and the
// bound an operator wants to state ("at most 10% extra load"); gRPC's scheme needs every outcome
// reported and bounds retries only indirectly.
//
// Budget is safe for concurrent use; share one per dependency, not one per message.
type Budget struct {
	deposit int64 // fixed-point tokens added per Deposit
	reserve int64 // fixed-point tokens always available
	slot    time.Duration
	now     func() time.Time
	start   time.Time

	mu   sync.Mutex
	last int64 // most recent slot index seen, so a clock stepping back cannot revive expired slots
	ids  [budgetSlots]int64
	vals [budgetSlots]int64
}

// NewBudget returns a Budget letting retries reach ratio times the first attempts, plus reserve
// retries, per DefaultBudgetWindow (10s), on the real clock. Negative or NaN ratio and negative
// reserve mean zero; ratio above MaxBudgetRatio means MaxBudgetRatio. NewBudget(0.1, 10) keeps a
// failing dependency at about 1.1× load while letting a quiet client retry 10 times per window.
func NewBudget(ratio float64, reserve int) *Budget {
	return NewBudgetConfig(BudgetConfig{Ratio: ratio, Reserve: reserve})
}

// NewBudgetConfig is NewBudget with every setting: a window and a clock besides the ratio and
// the reserve. Zero fields mean the defaults.
func NewBudgetConfig(cfg BudgetConfig) *Budget {
	ratio, reserve := cfg.Ratio, cfg.Reserve
	if !(ratio > 0) { // also catches NaN
		ratio = 0
	}
	ratio = min(ratio, MaxBudgetRatio)
	reserve = min(max(reserve, 0), maxReserve)
	window, now := DefaultBudgetWindow, time.Now
	if cfg.Window > 0 {
		window = cfg.Window
	}
	if cfg.Now != nil {
		now = cfg.Now
	}
	return &Budget{
		// Rounding the deposit down keeps the bound exact whatever the ratio's binary expansion.
		deposit: int64(math.Floor(ratio * tokenScale)),
		reserve: int64(reserve) * tokenScale,
		slot:    max(window/budgetSlots, 1),
		now:     now,
		start:   now(),
	}
}

// current returns the ring position of the current slot, clearing it when it held an older slot.
// b.mu must be held.
func (b *Budget) current() (idx int64, pos int) {
	idx = int64(b.now().Sub(b.start) / b.slot)
	if idx < b.last {
		idx = b.last
	}
	b.last = idx
	pos = int(idx % budgetSlots)
	if b.ids[pos] != idx {
		b.ids[pos], b.vals[pos] = idx, 0
	}
	return idx, pos
}

// balance returns the fixed-point tokens available at slot idx. b.mu must be held.
func (b *Budget) balance(idx int64) int64 {
	sum := b.reserve
	for i, id := range b.ids {
		if id > idx-budgetSlots && id <= idx {
			sum += b.vals[i]
		}
	}
	return sum
}

// Deposit records a first attempt, adding ratio tokens. Call it once per operation or message, on
// its first attempt only; a nil Budget ignores it.
func (b *Budget) Deposit() {
	if b == nil {
		return
	}
	b.mu.Lock()
	_, pos := b.current()
	b.vals[pos] += b.deposit
	b.mu.Unlock()
}

// TryWithdraw takes one token for a retry and reports whether it could. Call it before each retry;
// false means the budget is empty: do not retry now (a consumer hands the message back to the broker
// with a long delay instead). A nil Budget always returns true.
func (b *Budget) TryWithdraw() bool {
	if b == nil {
		return true
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	idx, pos := b.current()
	if b.balance(idx) < tokenScale {
		return false
	}
	b.vals[pos] -= tokenScale
	return true
}

// Available returns how many retries the budget would allow now (fractional tokens included), for
// metrics; never negative. A nil Budget returns +Inf.
func (b *Budget) Available() float64 {
	if b == nil {
		return math.Inf(1)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	idx, _ := b.current()
	return max(float64(b.balance(idx))/tokenScale, 0)
}
