package memstore

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/storetest"
)

// TestPendingBatches claims many new keys, so that records are indexed in
// batches, and checks between claims that every key is found, pending or
// indexed, and that Complete, Delete and a sweep (which index pending
// records early and move records) keep the index whole.
func TestPendingBatches(t *testing.T) {
	var clock storetest.Clock
	s := newStore(Config{Now: clock.Now, Shards: 4, MaxKeys: 20_000}, 1024)
	ctx := context.Background()
	const n = 3000
	key := func(i int) string { return fmt.Sprintf("key-%d", i) }
	tokens := make([]string, n)
	flushes := 0
	for i := range n {
		c, err := s.Claim(ctx, key(i), "fp", time.Minute, time.Hour)
		if err != nil || c.Status != dedupe.Acquired {
			t.Fatalf("claim %d: %v %v", i, c.Status, err)
		}
		tokens[i] = c.Token
		sh, _ := s.shard(key(i))
		if sh.indexed == sh.recs.len() {
			flushes++
		}
		// A key claimed a while ago (indexed by now, or still pending) is
		// Busy, and found by its Complete below.
		if j := i - i%7*5; j >= 0 {
			if b, err := s.Claim(ctx, key(j), "fp", time.Minute, time.Hour); err != nil || b.Status != dedupe.Busy {
				t.Fatalf("claim %d again after %d: %v %v", j, i, b.Status, err)
			}
		}
		if i%97 == 0 {
			checkInvariants(t, s, i)
		}
	}
	if flushes < n/pendBatch/2 {
		t.Fatalf("%d batches indexed, want about %d", flushes, n/pendBatch)
	}
	for i := 0; i < n; i += 3 {
		if err := s.Complete(ctx, key(i), tokens[i], dedupe.Result{Data: []byte("ok")}, time.Hour); err != nil {
			t.Fatalf("complete %d: %v", i, err)
		}
	}
	for i := 1; i < n; i += 3 {
		if err := s.Delete(ctx, key(i), tokens[i]); err != nil {
			t.Fatalf("delete %d: %v", i, err)
		}
		if i%101 == 1 {
			checkInvariants(t, s, n+i)
		}
	}
	checkInvariants(t, s, 2*n)
	clock.Advance(2 * time.Hour)
	for i := range n {
		want := dedupe.Acquired
		c, err := s.Claim(ctx, key(i), "fp", time.Minute, time.Hour)
		if err != nil || c.Status != want {
			t.Fatalf("claim %d after retention: %v %v", i, c.Status, err)
		}
	}
	s.sweepEvery(clock.Now().UnixNano())
	checkInvariants(t, s, 3*n)
	if got := s.Len(); got != n {
		t.Fatalf("Len = %d, want %d", got, n)
	}
}
