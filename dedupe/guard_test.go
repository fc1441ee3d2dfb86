package dedupe_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
)

// clock is a fake clock for memstore.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func payment(key, body string) dedupe.Input {
	return dedupe.Input{Header: map[string][]string{"Idempotency-Key": {key}}, Data: []byte(body)}
}

func newGuard(clk *clock) *dedupe.Guard {
	return &dedupe.Guard{
		Store:       memstore.New(memstore.Config{Now: clk.Now}),
		Key:         dedupe.HeaderKey("Idempotency-Key"),
		Fingerprint: &dedupe.Fingerprinter{Exclude: []string{"timestamp"}},
		Namespace:   "payments",
		Lease:       10 * time.Second,
		Retention:   time.Hour,
	}
}

func mustClaim(t *testing.T, g *dedupe.Guard, in dedupe.Input, want dedupe.Status) dedupe.Ticket {
	t.Helper()
	tk, err := g.Claim(context.Background(), in)
	if err != nil {
		t.Fatalf("Claim: %v", err)
	}
	if tk.Status != want {
		t.Fatalf("Claim status = %v, want %v (ticket %+v)", tk.Status, want, tk)
	}
	return tk
}

func TestGuardStateMachine(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	g := newGuard(clk)
	first := payment("k1", `{"amount":100,"timestamp":1}`)
	retry := payment("k1", `{"timestamp":2, "amount":100.0}`)
	other := payment("k1", `{"amount":999,"timestamp":3}`)

	t1 := mustClaim(t, g, first, dedupe.Acquired)
	if t1.Key != "payments:k1" || t1.Token == "" || t1.Takeover || t1.Fingerprint == "" {
		t.Fatalf("ticket = %+v", t1)
	}

	clk.Advance(4 * time.Second)
	busy := mustClaim(t, g, retry, dedupe.Busy)
	if busy.RetryAfter != 6*time.Second {
		t.Fatalf("RetryAfter = %v, want 6s", busy.RetryAfter)
	}

	// Extend at 4s: the lease now ends at 14s.
	if err := g.Extend(ctx, t1); err != nil {
		t.Fatal(err)
	}
	clk.Advance(8 * time.Second)
	if b := mustClaim(t, g, retry, dedupe.Busy); b.RetryAfter != 2*time.Second {
		t.Fatalf("RetryAfter after Extend = %v, want 2s", b.RetryAfter)
	}

	if err := g.Complete(ctx, t1, dedupe.Result{Data: []byte("paid")}); err != nil {
		t.Fatal(err)
	}
	dup := mustClaim(t, g, retry, dedupe.Duplicate)
	if string(dup.Result.Data) != "paid" || dup.Result.Failed {
		t.Fatalf("replayed %+v", dup.Result)
	}
	conflict := mustClaim(t, g, other, dedupe.Conflict)
	if conflict.Claim.Fingerprint != t1.Fingerprint || conflict.Fingerprint == t1.Fingerprint {
		t.Fatalf("conflict ticket = %+v", conflict)
	}
	// A stale ticket cannot complete or release again.
	if err := g.Complete(ctx, t1, dedupe.Result{}); !errors.Is(err, dedupe.ErrLeaseLost) {
		t.Fatalf("second Complete: %v, want ErrLeaseLost", err)
	}
	if err := g.Release(ctx, t1); !errors.Is(err, dedupe.ErrLeaseLost) {
		t.Fatalf("Release after Complete: %v, want ErrLeaseLost", err)
	}

	// Retention over: the key is new again.
	clk.Advance(time.Hour)
	mustClaim(t, g, other, dedupe.Acquired)
}

func TestGuardReleaseLetsRedeliveryRun(t *testing.T) {
	ctx := context.Background()
	g := newGuard(newClock())
	in := payment("k2", `{"amount":1}`)
	t1 := mustClaim(t, g, in, dedupe.Acquired)
	if err := g.Release(ctx, t1); err != nil {
		t.Fatal(err)
	}
	t2 := mustClaim(t, g, in, dedupe.Acquired)
	if t2.Token == t1.Token || t2.Takeover {
		t.Fatalf("after Release: %+v", t2)
	}
}

func TestGuardTakeoverFencesOldToken(t *testing.T) {
	ctx := context.Background()
	clk := newClock()
	g := newGuard(clk)
	in := payment("k3", `{"amount":1}`)
	t1 := mustClaim(t, g, in, dedupe.Acquired)
	clk.Advance(g.LeaseDuration())
	t2 := mustClaim(t, g, in, dedupe.Acquired)
	if !t2.Takeover || t2.Token == t1.Token {
		t.Fatalf("takeover ticket = %+v", t2)
	}
	for name, err := range map[string]error{
		"Complete": g.Complete(ctx, t1, dedupe.Result{Data: []byte("late")}),
		"Extend":   g.Extend(ctx, t1),
		"Release":  g.Release(ctx, t1),
	} {
		if !errors.Is(err, dedupe.ErrLeaseLost) {
			t.Errorf("stale %s: %v, want ErrLeaseLost", name, err)
		}
	}
	if err := g.Complete(ctx, t2, dedupe.Result{Data: []byte("new")}); err != nil {
		t.Fatal(err)
	}
	if d := mustClaim(t, g, in, dedupe.Duplicate); string(d.Result.Data) != "new" {
		t.Fatalf("replayed %q", d.Result.Data)
	}
}

func TestGuardReplaysStoredFailure(t *testing.T) {
	ctx := context.Background()
	g := newGuard(newClock())
	in := payment("k4", `{"amount":1000000}`)
	t1 := mustClaim(t, g, in, dedupe.Acquired)
	if err := g.Complete(ctx, t1, dedupe.Result{Failed: true, Data: []byte("402 No Money!")}); err != nil {
		t.Fatal(err)
	}
	d := mustClaim(t, g, in, dedupe.Duplicate)
	if !d.Result.Failed || string(d.Result.Data) != "402 No Money!" {
		t.Fatalf("replayed %+v", d.Result)
	}
}

func TestGuardKeys(t *testing.T) {
	clk := newClock()
	body := `{"amount":1,"timestamp":1}`
	t.Run("missing key is invalid input", func(t *testing.T) {
		g := newGuard(clk)
		_, err := g.Claim(context.Background(), data(body))
		var ke *dedupe.KeyError
		if !errors.Is(err, dedupe.ErrMissingKey) || !errors.As(err, &ke) || !dedupe.IsInvalidInput(err) {
			t.Fatalf("Claim without key: %v", err)
		}
	})
	t.Run("fallback to fingerprint", func(t *testing.T) {
		g := newGuard(clk)
		g.FallbackToFingerprint = true
		t1 := mustClaim(t, g, data(body), dedupe.Acquired)
		if t1.Key != "payments:fp:"+t1.Fingerprint {
			t.Fatalf("fallback key = %q, fingerprint %q", t1.Key, t1.Fingerprint)
		}
		// Same operation, different timestamp: the same key, busy.
		mustClaim(t, g, data(`{"timestamp":9,"amount":1}`), dedupe.Busy)
		// Invalid keys do not fall back.
		if _, err := g.Claim(context.Background(), payment("bad\x00", body)); !errors.Is(err, dedupe.ErrInvalidKey) {
			t.Fatalf("invalid key with fallback: %v", err)
		}
	})
	t.Run("fingerprint as key", func(t *testing.T) {
		g := &dedupe.Guard{Store: memstore.New(memstore.Config{Now: clk.Now})}
		t1 := mustClaim(t, g, data(`{"a":1}`), dedupe.Acquired)
		if t1.Key != "fp:"+t1.Fingerprint || t1.Fingerprint == "" {
			t.Fatalf("ticket = %+v, want the key fp:<fingerprint>", t1)
		}
		mustClaim(t, g, data(`{ "a" : 1.0 }`), dedupe.Busy)
		mustClaim(t, g, data(`{"a":2}`), dedupe.Acquired)
		mustClaim(t, g, data(`raw bytes`), dedupe.Acquired)
	})
	t.Run("no fingerprinter fingerprints the whole payload", func(t *testing.T) {
		g := newGuard(clk)
		g.Fingerprint = nil
		t1 := mustClaim(t, g, payment("k5", `{"amount":1,"to":"b"}`), dedupe.Acquired)
		if err := g.Complete(context.Background(), t1, dedupe.Result{}); err != nil {
			t.Fatal(err)
		}
		// The same document re-encoded is the same operation.
		mustClaim(t, g, payment("k5", `{ "to" : "b", "amount" : 1.0 }`), dedupe.Duplicate)
		// Another payload under the key is a conflict, by default.
		mustClaim(t, g, payment("k5", `{"amount":2,"to":"b"}`), dedupe.Conflict)
		// So is another non-JSON payload.
		t2 := mustClaim(t, g, payment("k5-raw", `raw one`), dedupe.Acquired)
		if err := g.Complete(context.Background(), t2, dedupe.Result{}); err != nil {
			t.Fatal(err)
		}
		mustClaim(t, g, payment("k5-raw", `raw one`), dedupe.Duplicate)
		mustClaim(t, g, payment("k5-raw", `raw two`), dedupe.Conflict)
	})
	t.Run("NoFingerprint never conflicts", func(t *testing.T) {
		g := newGuard(clk)
		g.Fingerprint = nil
		g.NoFingerprint = true
		t1 := mustClaim(t, g, payment("k7", `{"amount":1}`), dedupe.Acquired)
		if t1.Fingerprint != "" {
			t.Fatalf("NoFingerprint stored fingerprint %q", t1.Fingerprint)
		}
		if err := g.Complete(context.Background(), t1, dedupe.Result{}); err != nil {
			t.Fatal(err)
		}
		mustClaim(t, g, payment("k7", `{"amount":2}`), dedupe.Duplicate)
	})
	t.Run("namespaces separate keys", func(t *testing.T) {
		a, b := newGuard(clk), newGuard(clk)
		b.Store = a.Store
		b.Namespace = "refunds"
		mustClaim(t, a, payment("k6", body), dedupe.Acquired)
		mustClaim(t, b, payment("k6", body), dedupe.Acquired)
		mustClaim(t, a, payment("k6", body), dedupe.Busy)
	})
	t.Run("long keys hashed", func(t *testing.T) {
		g := newGuard(clk)
		long := strings.Repeat("x", 1000)
		t1 := mustClaim(t, g, payment(long, body), dedupe.Acquired)
		if len(t1.Key) > dedupe.DefaultMaxKeyLen || !strings.HasPrefix(t1.Key, "payments:sha256:") {
			t.Fatalf("long key stored as %q", t1.Key)
		}
		mustClaim(t, g, payment(long, body), dedupe.Busy)
		mustClaim(t, g, payment(long[:999]+"y", body), dedupe.Acquired)
	})
	t.Run("fingerprint error", func(t *testing.T) {
		g := newGuard(clk)
		_, err := g.Claim(context.Background(), payment("k7", "not json"))
		if !errors.Is(err, dedupe.ErrNotJSON) || !dedupe.IsInvalidInput(err) {
			t.Fatalf("Claim of non-JSON with Exclude: %v", err)
		}
	})
	t.Run("key func validated", func(t *testing.T) {
		g := newGuard(clk)
		g.Key = dedupe.KeyFunc(func(dedupe.Input) (string, error) { return "a\nb", nil })
		if _, err := g.Claim(context.Background(), data(body)); !errors.Is(err, dedupe.ErrInvalidKey) {
			t.Fatalf("Claim with invalid KeyFunc key: %v", err)
		}
	})
}

func TestGuardErrors(t *testing.T) {
	ctx := context.Background()
	var g dedupe.Guard
	if _, err := g.Claim(ctx, data(`{}`)); !errors.Is(err, dedupe.ErrNoStore) {
		t.Fatalf("Claim without store: %v", err)
	}
	for _, err := range []error{g.Complete(ctx, dedupe.Ticket{}, dedupe.Result{}), g.Release(ctx, dedupe.Ticket{}), g.Extend(ctx, dedupe.Ticket{})} {
		if !errors.Is(err, dedupe.ErrNoStore) {
			t.Fatalf("without store: %v", err)
		}
	}
	bad := newGuard(newClock())
	bad.Retention = time.Second // shorter than the lease
	_, err := bad.Claim(ctx, payment("k", `{}`))
	if !errors.Is(err, dedupe.ErrInvalidLease) || dedupe.IsInvalidInput(err) {
		t.Fatalf("retention < lease: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := newGuard(newClock()).Claim(cctx, payment("k", `{}`)); !errors.Is(err, context.Canceled) || dedupe.IsInvalidInput(err) {
		t.Fatalf("cancelled ctx: %v", err)
	}
}

func TestGuardDefaults(t *testing.T) {
	var g dedupe.Guard
	if g.LeaseDuration() != 30*time.Second || g.RetentionDuration() != 24*time.Hour {
		t.Fatalf("defaults: lease %v retention %v", g.LeaseDuration(), g.RetentionDuration())
	}
	g.Lease, g.Retention = time.Minute, 2*time.Hour
	if g.LeaseDuration() != time.Minute || g.RetentionDuration() != 2*time.Hour {
		t.Fatalf("set: lease %v retention %v", g.LeaseDuration(), g.RetentionDuration())
	}
}

func TestGuardConcurrentClaims(t *testing.T) {
	g := newGuard(newClock())
	var wg sync.WaitGroup
	var mu sync.Mutex
	acquired := 0
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tk, err := g.Claim(context.Background(), payment("same", `{"amount":1}`))
			if err != nil {
				t.Error(err)
				return
			}
			if tk.Status == dedupe.Acquired {
				mu.Lock()
				acquired++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if acquired != 1 {
		t.Fatalf("%d goroutines acquired the key, want 1", acquired)
	}
}

func TestValidateRetention(t *testing.T) {
	if err := dedupe.ValidateRetention(24*time.Hour, 2*time.Hour); err != nil {
		t.Fatal(err)
	}
	if err := dedupe.ValidateRetention(time.Hour, time.Hour); err != nil {
		t.Fatalf("equal: %v", err)
	}
	err := dedupe.ValidateRetention(time.Hour, 90*time.Minute)
	if !errors.Is(err, dedupe.ErrRetentionTooShort) {
		t.Fatalf("err = %v", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "1h0m0s") || !strings.Contains(msg, "1h30m0s") {
		t.Fatalf("error %q does not name both durations", msg)
	}
	h := dedupe.RedeliveryHorizon(5, 30*time.Second, time.Minute, 24*time.Hour)
	if want := 5*90*time.Second + 24*time.Hour; h != want {
		t.Fatalf("RedeliveryHorizon = %v, want %v", h, want)
	}
	if h := dedupe.RedeliveryHorizon(-1, -time.Second, -time.Second, -time.Second); h != 0 {
		t.Fatalf("negative inputs: %v", h)
	}
}
