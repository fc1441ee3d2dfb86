package memstore_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/dedupe/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T, now func() time.Time) dedupe.Store {
		return memstore.New(memstore.Config{Now: now})
	})
}

func TestConformanceOneShard(t *testing.T) {
	storetest.Run(t, func(t *testing.T, now func() time.Time) dedupe.Store {
		return memstore.New(memstore.Config{Now: now, Shards: 1, MaxKeys: 100_000})
	})
}

func TestFullNeverForgetsLiveRecords(t *testing.T) {
	var clock storetest.Clock
	s := memstore.New(memstore.Config{Now: clock.Now, Shards: 1, MaxKeys: 10})
	ctx := context.Background()
	for i := range 10 {
		if c, err := s.Claim(ctx, fmt.Sprint(i), "", time.Second, time.Minute); err != nil || c.Status != dedupe.Acquired {
			t.Fatalf("claim %d: %v %v", i, c.Status, err)
		}
	}
	_, err := s.Claim(ctx, "one-too-many", "", time.Second, time.Minute)
	if !errors.Is(err, memstore.ErrFull) {
		t.Fatalf("claim beyond MaxKeys: %v, want ErrFull", err)
	}
	// Every live record is still there.
	for i := range 10 {
		if c, err := s.Claim(ctx, fmt.Sprint(i), "", time.Second, time.Minute); err != nil || c.Status != dedupe.Busy {
			t.Fatalf("claim %d again: %v %v, want busy", i, c.Status, err)
		}
	}
	// Once their retention is over they make room.
	clock.Advance(time.Minute)
	if c, err := s.Claim(ctx, "one-too-many", "", time.Second, time.Minute); err != nil || c.Status != dedupe.Acquired {
		t.Fatalf("claim after retention: %v %v, want acquired", c.Status, err)
	}
	if n := s.Len(); n != 1 {
		t.Errorf("Len after the sweep = %d, want 1", n)
	}
}

// TestHoldsMaxKeysWhateverTheSpread checks that the bound is global: with
// many shards, keys that spread unevenly still fill the store to MaxKeys.
func TestHoldsMaxKeysWhateverTheSpread(t *testing.T) {
	s := memstore.New(memstore.Config{Shards: 64, MaxKeys: 1000})
	ctx := context.Background()
	for i := range 1000 {
		if _, err := s.Claim(ctx, fmt.Sprint("key-", i), "", time.Second, time.Minute); err != nil {
			t.Fatalf("claim %d of MaxKeys 1000: %v", i, err)
		}
	}
	if _, err := s.Claim(ctx, "key-1000", "", time.Second, time.Minute); !errors.Is(err, memstore.ErrFull) {
		t.Fatalf("claim 1001 of MaxKeys 1000: %v, want ErrFull", err)
	}
}

// TestFullSweepsOtherShards checks that expired records in other shards do
// not make a full store refuse a key.
func TestFullSweepsOtherShards(t *testing.T) {
	var clock storetest.Clock
	s := memstore.New(memstore.Config{Now: clock.Now, Shards: 64, MaxKeys: 100})
	ctx := context.Background()
	for i := range 100 {
		if _, err := s.Claim(ctx, fmt.Sprint("old-", i), "", time.Second, time.Second); err != nil {
			t.Fatal(err)
		}
	}
	clock.Advance(time.Second)
	for i := range 100 {
		if _, err := s.Claim(ctx, fmt.Sprint("new-", i), "", time.Second, time.Minute); err != nil {
			t.Fatalf("claim %d after the old records expired: %v", i, err)
		}
	}
	if n := s.Len(); n != 100 {
		t.Errorf("Len = %d, want 100", n)
	}
}

func TestEvictsExpiredRecordsAsItGoes(t *testing.T) {
	var clock storetest.Clock
	s := memstore.New(memstore.Config{Now: clock.Now, Shards: 4, MaxKeys: 400})
	ctx := context.Background()
	// Many generations of short-lived keys never fill the store.
	for gen := range 50 {
		for i := range 100 {
			key := fmt.Sprintf("g%d-%d", gen, i)
			c, err := s.Claim(ctx, key, "", time.Second, time.Second)
			if err != nil {
				t.Fatalf("generation %d key %d: %v", gen, i, err)
			}
			if err := s.Complete(ctx, key, c.Token, dedupe.Result{}, time.Second); err != nil {
				t.Fatal(err)
			}
		}
		clock.Advance(time.Second)
	}
	if n := s.Len(); n > 400 {
		t.Errorf("Len = %d, want at most MaxKeys 400", n)
	}
}

// Example shows the claim / complete cycle and a duplicate's replay.
func Example() {
	ctx := context.Background()
	s := memstore.New(memstore.Config{})

	c, _ := s.Claim(ctx, "payment-42", "fp-1", 30*time.Second, 24*time.Hour)
	fmt.Println(c.Status)
	_ = s.Complete(ctx, "payment-42", c.Token, dedupe.Result{Data: []byte("202 accepted")}, 24*time.Hour)

	again, _ := s.Claim(ctx, "payment-42", "fp-1", 30*time.Second, 24*time.Hour)
	fmt.Println(again.Status, string(again.Result.Data))

	reused, _ := s.Claim(ctx, "payment-42", "fp-2", 30*time.Second, 24*time.Hour)
	fmt.Println(reused.Status)
	// Output:
	// acquired
	// duplicate 202 accepted
	// conflict
}
