package memstore

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/storekit"
)

// TestTokenText holds putToken and isToken to fmt's %016x.
func TestTokenText(t *testing.T) {
	vals := []uint64{0, 1, 9, 10, 15, 16, 0xabcdef, 0x0123456789abcdef, 0xfedcba9876543210, math.MaxUint64, math.MaxUint32, 1 << 32}
	for range 10_000 {
		vals = append(vals, rand.Uint64())
	}
	for _, v := range vals {
		var b [tokenLen]byte
		putToken(b[:], v)
		want := fmt.Sprintf("%016x", v)
		if string(b[:]) != want {
			t.Fatalf("putToken(%#x) = %q, want %q", v, b[:], want)
		}
		if !isToken(want, v) {
			t.Fatalf("isToken(%q, %#x) = false", want, v)
		}
		for _, other := range []string{fmt.Sprintf("%016X", v|0xa), fmt.Sprintf("%016x", v^1), want[:15], want + "0", " " + want[1:]} {
			if isToken(other, v) {
				t.Fatalf("isToken(%q, %#x) = true", other, v)
			}
		}
	}
}

// TestNextFence holds nextFence to storekit.NextFence.
func TestNextFence(t *testing.T) {
	times := []int64{math.MinInt64, -1_000_001, -1000, -999, -1, 0, 1, 999, 1000, 1001, 1999, 2000, time.Now().UnixNano(), math.MaxInt64}
	for range 1000 {
		times = append(times, rand.Int64(), -rand.Int64())
	}
	for _, tm := range times {
		us := tm / 1000
		for _, prev := range []uint64{0, 1, uint64(max(us, 0)), uint64(max(us, 0)) + 1, uint64(max(us-1, 0)), 1 << 62} {
			if got, want := nextFence(prev, tm), storekit.NextFence(prev, time.Unix(0, tm)); got != want {
				t.Fatalf("nextFence(%d, %d) = %d, storekit.NextFence = %d", prev, tm, got, want)
			}
		}
	}
}

// TestDefaultClock checks the default clock against time.Now: a fence is
// the claim's time in microseconds, and a lease ends by the wall clock.
func TestDefaultClock(t *testing.T) {
	s := New(Config{})
	ctx := t.Context()
	before := time.Now().UnixMicro()
	c, err := s.Claim(ctx, "k", "", 20*time.Millisecond, time.Hour)
	after := time.Now().UnixMicro()
	if err != nil {
		t.Fatal(err)
	}
	// The store's clock is New's wall clock plus monotonic time: it may
	// differ from a later time.Now by the wall clock's slewing since, far
	// less than a millisecond here.
	if f := int64(c.Fence); f < before-1000 || f > after+1000 {
		t.Fatalf("fence %d, want within [%d, %d]", f, before, after)
	}
	if b, _ := s.Claim(ctx, "k", "", time.Second, time.Hour); b.Status != dedupe.Busy {
		t.Fatalf("second claim: %v, want busy", b.Status)
	}
	time.Sleep(30 * time.Millisecond)
	if c2, _ := s.Claim(ctx, "k", "", time.Second, time.Hour); !c2.Takeover || c2.Fence <= c.Fence {
		t.Fatalf("claim after the lease: %+v, want a takeover with a larger fence", c2)
	}
}
