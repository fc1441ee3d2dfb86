package dedupe_test

import (
	"context"
	"fmt"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
)

// ledger is a downstream system that knows nothing of the dedupe store: it
// keeps the largest fence it accepted per key and refuses writes with a
// smaller one.
type ledger struct {
	fence map[string]uint64
	value map[string]string
}

func (l *ledger) write(key string, fence uint64, v string) error {
	if fence <= l.fence[key] {
		return fmt.Errorf("refused %q: fence %d is not above %d", v, fence, l.fence[key])
	}
	l.fence[key], l.value[key] = fence, v
	return nil
}

// A holder stalls past its lease, another attempt takes over, and the
// stalled holder wakes up: its late write carries the older fence and is
// refused downstream, so the successor's effect stands.
func ExampleClaim_fence() {
	ctx := context.Background()
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	store := memstore.New(memstore.Config{Now: func() time.Time { return now }})
	l := &ledger{fence: map[string]uint64{}, value: map[string]string{}}

	var first, second dedupe.Claim
	first, _ = store.Claim(ctx, "pay-1", "", 10*time.Second, time.Hour)
	now = now.Add(11 * time.Second) // the first holder stalls past its lease
	second, _ = store.Claim(ctx, "pay-1", "", 10*time.Second, time.Hour)
	fmt.Println("takeover:", second.Takeover, "fences grow:", second.Fence > first.Fence)

	fmt.Println(l.write("pay-1", second.Fence, "written by the second attempt"))
	fmt.Println(l.write("pay-1", first.Fence, "written by the stalled first") != nil)
	fmt.Println(l.value["pay-1"])
	// Output:
	// takeover: true fences grow: true
	// <nil>
	// true
	// written by the second attempt
}
