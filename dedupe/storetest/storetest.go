package storetest

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
)

// Epoch is the instant a zero Clock starts at: 2030-01-01T00:00:00Z. It is a
// whole millisecond, well inside the range of Unix nanoseconds.
var Epoch = time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)

// Clock is a fake clock for tests. The zero value reads Epoch until advanced.
// It is safe for concurrent use.
type Clock struct {
	mu  sync.Mutex
	off time.Duration
}

// Now returns Epoch plus the total of all Advance calls.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return Epoch.Add(c.off)
}

// Advance moves the clock forward by d (backward when d is negative).
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.off += d
}

// Factory returns a fresh, isolated store that reads time from now. Run calls
// it once per subtest, with the subtest's t; register cleanups on that t.
type Factory func(t *testing.T, now func() time.Time) dedupe.Store

// ConcurrentClaimers is how many goroutines race for one key in the
// concurrency subtests: 32.
const ConcurrentClaimers = 32

// ManyKeys is how many independent keys the many-keys subtest uses: 2,000.
const ManyKeys = 2000

// LargeResult is the size of the result the large-result subtest stores and
// replays: 1 MiB.
const LargeResult = 1 << 20

// retryAfterSlack is how far Busy.RetryAfter may stray from the exact lease
// remainder: less than a millisecond, for stores with millisecond precision.
const retryAfterSlack = time.Millisecond

// opTimeout bounds each store call the suite makes.
const opTimeout = 30 * time.Second

// env is one subtest's store and clock.
type env struct {
	t     *testing.T
	s     dedupe.Store
	clock *Clock
}

func newEnv(t *testing.T, f Factory) *env {
	t.Helper()
	c := &Clock{}
	s := f(t, c.Now)
	if s == nil {
		t.Fatal("storetest: factory returned a nil store")
	}
	return &env{t: t, s: s, clock: c}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), opTimeout)
	t.Cleanup(cancel)
	return c
}

func (e *env) claim(key, fp string, lease, retention time.Duration) dedupe.Claim {
	e.t.Helper()
	c, err := e.s.Claim(ctx(e.t), key, fp, lease, retention)
	if err != nil {
		e.t.Fatalf("Claim(%q, %q, %v, %v): %v", key, fp, lease, retention, err)
	}
	return c
}

func (e *env) acquire(key, fp string, lease, retention time.Duration) string {
	e.t.Helper()
	c := e.claim(key, fp, lease, retention)
	if c.Status != dedupe.Acquired {
		e.t.Fatalf("Claim(%q): status %v, want acquired (claim %+v)", key, c.Status, brief(c))
	}
	if c.Token == "" {
		e.t.Fatalf("Claim(%q): acquired with an empty token", key)
	}
	return c.Token
}

func (e *env) complete(key, token string, res dedupe.Result, retention time.Duration) {
	e.t.Helper()
	if err := e.s.Complete(ctx(e.t), key, token, res, retention); err != nil {
		e.t.Fatalf("Complete(%q): %v", key, err)
	}
}

func (e *env) wantBusy(key, fp string, lease, retention, retryAfter time.Duration) {
	e.t.Helper()
	c := e.claim(key, fp, lease, retention)
	if c.Status != dedupe.Busy {
		e.t.Fatalf("Claim(%q): status %v, want busy (claim %+v)", key, c.Status, brief(c))
	}
	if c.Token != "" {
		e.t.Errorf("Claim(%q): busy with token %q, want none", key, c.Token)
	}
	if d := c.RetryAfter - retryAfter; d <= -retryAfterSlack || d >= retryAfterSlack {
		e.t.Errorf("Claim(%q): busy RetryAfter %v, want %v (the lease remainder)", key, c.RetryAfter, retryAfter)
	}
}

func (e *env) wantDuplicate(key, fp string, want dedupe.Result) dedupe.Claim {
	e.t.Helper()
	c := e.claim(key, fp, time.Minute, time.Hour)
	if c.Status != dedupe.Duplicate {
		e.t.Fatalf("Claim(%q, %q): status %v, want duplicate (claim %+v)", key, fp, c.Status, brief(c))
	}
	if c.Token != "" {
		e.t.Errorf("Claim(%q): duplicate with token %q, want none", key, c.Token)
	}
	if c.Result.Failed != want.Failed {
		e.t.Errorf("Claim(%q): duplicate Result.Failed = %v, want %v", key, c.Result.Failed, want.Failed)
	}
	if !bytes.Equal(c.Result.Data, want.Data) {
		e.t.Errorf("Claim(%q): duplicate Result.Data differs: got %d bytes %.40q, want %d bytes %.40q",
			key, len(c.Result.Data), c.Result.Data, len(want.Data), want.Data)
	}
	return c
}

func (e *env) wantLeaseLost(op string, err error) {
	e.t.Helper()
	if !errors.Is(err, dedupe.ErrLeaseLost) {
		e.t.Errorf("%s: error %v, want dedupe.ErrLeaseLost", op, err)
	}
}

// brief formats a claim without a possibly huge result.
func brief(c dedupe.Claim) string {
	return fmt.Sprintf("{Status:%v Token:%q Fence:%d Attempt:%d Takeover:%v RetryAfter:%v Failed:%v Data:%d bytes Fingerprint:%q}",
		c.Status, c.Token, c.Fence, c.Attempt, c.Takeover, c.RetryAfter, c.Result.Failed, len(c.Result.Data), c.Fingerprint)
}

// Run runs the conformance suite against stores made by newStore, one fresh
// store per subtest. Subtests run one after another.
func Run(t *testing.T, newStore Factory) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(*env)
	}{
		{"ClaimAbsent", testClaimAbsent},
		{"Busy", testBusy},
		{"ConcurrentClaim", testConcurrentClaim},
		{"ConcurrentTakeover", testConcurrentTakeover},
		{"TakeoverAfterLeaseExpiry", testTakeover},
		{"StaleTokenRejected", testStaleToken},
		{"CompleteAfterLeaseExpiryWithoutTakeover", testCompleteAfterExpiry},
		{"CompleteThenDuplicate", testCompleteDuplicate},
		{"FailedResultReplayed", testFailedReplay},
		{"ConcurrentComplete", testConcurrentComplete},
		{"Conflict", testConflict},
		{"EmptyFingerprintNeverConflicts", testEmptyFingerprint},
		{"ReleaseThenAcquired", testRelease},
		{"AttemptsCountRuns", testAttempts},
		{"DeleteResetsAttempts", testDelete},
		{"SnoozeKeepsTheAttempt", testSnooze},
		{"FencesGrow", testFencesGrow},
		{"FencesGrowUnderConcurrentTakeover", testFenceConcurrentTakeover},
		{"FencesGrowAcrossResets", testFenceResets},
		{"Extend", testExtend},
		{"RetentionExpiry", testRetention},
		{"RetentionFromCompletion", testRetentionFromCompletion},
		{"InProgressRetentionExpiry", testInProgressRetention},
		{"LargeResult", testLargeResult},
		{"BinaryResultsAndAwkwardKeys", testAwkward},
		{"CancelledContext", testCancelled},
		{"InvalidLease", testInvalidLease},
		{"ManyKeys", testManyKeys},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(newEnv(t, newStore))
		})
	}
}

func testClaimAbsent(e *env) {
	c := e.claim("k", "fp", 10*time.Second, time.Hour)
	if c.Status != dedupe.Acquired || c.Token == "" || c.Takeover || c.RetryAfter != 0 {
		e.t.Fatalf("first claim: %s, want acquired with a token, no takeover", brief(c))
	}
	// Another key is independent.
	c2 := e.claim("k2", "fp", 10*time.Second, time.Hour)
	if c2.Status != dedupe.Acquired || c2.Token == c.Token {
		e.t.Fatalf("claim of another key: %s, want acquired with its own token", brief(c2))
	}
}

func testBusy(e *env) {
	e.acquire("k", "fp", 10*time.Second, time.Hour)
	e.wantBusy("k", "fp", 10*time.Second, time.Hour, 10*time.Second)
	e.clock.Advance(3 * time.Second)
	e.wantBusy("k", "fp", 10*time.Second, time.Hour, 7*time.Second)
	// A different fingerprint while in progress is Busy, not Conflict: only
	// a completed record can be compared.
	e.wantBusy("k", "other", 10*time.Second, time.Hour, 7*time.Second)
	// The lease is the first claimer's, not the asker's.
	e.wantBusy("k", "fp", time.Hour, 2*time.Hour, 7*time.Second)
	e.clock.Advance(7*time.Second - time.Millisecond)
	e.wantBusy("k", "fp", 10*time.Second, time.Hour, time.Millisecond)
}

// race runs n calls of fn at once, released together, and returns their
// results in call order.
func race[T any](n int, fn func(i int) T) []T {
	out := make([]T, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			out[i] = fn(i)
		}()
	}
	close(start)
	wg.Wait()
	return out
}

type claimErr struct {
	c   dedupe.Claim
	err error
}

func (e *env) raceClaims(key string) (winner dedupe.Claim) {
	e.t.Helper()
	c := ctx(e.t)
	res := race(ConcurrentClaimers, func(i int) claimErr {
		cl, err := e.s.Claim(c, key, "fp", 10*time.Second, time.Hour)
		return claimErr{cl, err}
	})
	acquired := 0
	for i, r := range res {
		if r.err != nil {
			e.t.Fatalf("claimer %d: %v", i, r.err)
		}
		switch r.c.Status {
		case dedupe.Acquired:
			acquired++
			winner = r.c
		case dedupe.Busy:
		default:
			e.t.Errorf("claimer %d: %s, want acquired or busy", i, brief(r.c))
		}
	}
	if acquired != 1 {
		e.t.Fatalf("%d of %d concurrent claimers acquired %q, want exactly 1", acquired, ConcurrentClaimers, key)
	}
	return winner
}

func testConcurrentClaim(e *env) {
	for round := range 3 {
		key := fmt.Sprintf("race-%d", round)
		w := e.raceClaims(key)
		if w.Takeover {
			e.t.Errorf("round %d: winner reports a takeover of an absent key", round)
		}
		e.complete(key, w.Token, dedupe.Result{Data: []byte("ok")}, time.Hour)
		e.wantDuplicate(key, "fp", dedupe.Result{Data: []byte("ok")})
	}
}

func testConcurrentTakeover(e *env) {
	old := e.acquire("k", "fp", 10*time.Second, time.Hour)
	e.clock.Advance(10 * time.Second)
	w := e.raceClaims("k")
	if !w.Takeover || w.Token == old {
		e.t.Fatalf("winner after lease expiry: %s, want a takeover with a new token", brief(w))
	}
	e.wantLeaseLost("Complete with the taken-over token", e.s.Complete(ctx(e.t), "k", old, dedupe.Result{}, time.Hour))
	e.complete("k", w.Token, dedupe.Result{Data: []byte("second")}, time.Hour)
	e.wantDuplicate("k", "fp", dedupe.Result{Data: []byte("second")})
}

func testTakeover(e *env) {
	old := e.acquire("k", "fp-a", 5*time.Second, time.Hour)
	e.clock.Advance(5*time.Second - time.Millisecond)
	e.wantBusy("k", "fp-a", 5*time.Second, time.Hour, time.Millisecond)
	e.clock.Advance(time.Millisecond) // the lease ends exactly now
	c := e.claim("k", "fp-b", 5*time.Second, time.Hour)
	if c.Status != dedupe.Acquired || !c.Takeover || c.Token == "" || c.Token == old || c.Attempt != 2 {
		e.t.Fatalf("claim at lease expiry: %s, want acquired, takeover, a new token, attempt 2", brief(c))
	}
	// The new lease runs from the takeover.
	e.clock.Advance(time.Second)
	e.wantBusy("k", "fp-b", 5*time.Second, time.Hour, 4*time.Second)
	// The taker's fingerprint is the record's now.
	e.complete("k", c.Token, dedupe.Result{Data: []byte("b")}, time.Hour)
	e.wantDuplicate("k", "fp-b", dedupe.Result{Data: []byte("b")})
	if got := e.claim("k", "fp-a", time.Second, time.Hour); got.Status != dedupe.Conflict {
		e.t.Errorf("claim with the first claimer's fingerprint after the taker completed: %s, want conflict", brief(got))
	}
}

func testStaleToken(e *env) {
	old := e.acquire("k", "fp", 5*time.Second, time.Hour)
	e.clock.Advance(6 * time.Second)
	c := e.claim("k", "fp", 5*time.Second, time.Hour)
	if c.Status != dedupe.Acquired || !c.Takeover {
		e.t.Fatalf("claim after lease expiry: %s, want a takeover", brief(c))
	}
	bg := ctx(e.t)
	e.wantLeaseLost("Complete with the old token", e.s.Complete(bg, "k", old, dedupe.Result{Data: []byte("stale")}, time.Hour))
	e.wantLeaseLost("Release with the old token", e.s.Release(bg, "k", old))
	e.wantLeaseLost("Extend with the old token", e.s.Extend(bg, "k", old, time.Hour))
	e.wantLeaseLost("Complete with a made-up token", e.s.Complete(bg, "k", "not-a-token", dedupe.Result{}, time.Hour))
	e.wantLeaseLost("Complete with an empty token", e.s.Complete(bg, "k", "", dedupe.Result{}, time.Hour))
	// None of that touched the new owner's record.
	e.wantBusy("k", "fp", 5*time.Second, time.Hour, 5*time.Second)
	e.complete("k", c.Token, dedupe.Result{Data: []byte("fresh")}, time.Hour)
	e.wantDuplicate("k", "fp", dedupe.Result{Data: []byte("fresh")})
	// Absent keys have no owner.
	e.wantLeaseLost("Complete of an absent key", e.s.Complete(bg, "absent", c.Token, dedupe.Result{}, time.Hour))
	e.wantLeaseLost("Release of an absent key", e.s.Release(bg, "absent", c.Token))
	e.wantLeaseLost("Extend of an absent key", e.s.Extend(bg, "absent", c.Token, time.Second))
	// A token is bound to its key.
	other := e.acquire("other", "fp", 5*time.Second, time.Hour)
	e.wantLeaseLost("Complete of one key with another key's token", e.s.Complete(bg, "other", c.Token, dedupe.Result{}, time.Hour))
	e.complete("other", other, dedupe.Result{}, time.Hour)
}

func testCompleteAfterExpiry(e *env) {
	// The token, not the clock, is the authority: a slow handler whose lease
	// ran out but whom nobody replaced may still record its result.
	tok := e.acquire("k", "fp", 5*time.Second, time.Hour)
	e.clock.Advance(20 * time.Second)
	e.complete("k", tok, dedupe.Result{Data: []byte("late")}, time.Hour)
	e.wantDuplicate("k", "fp", dedupe.Result{Data: []byte("late")})

	tok2 := e.acquire("k2", "fp", 5*time.Second, time.Hour)
	e.clock.Advance(20 * time.Second)
	if err := e.s.Extend(ctx(e.t), "k2", tok2, 10*time.Second); err != nil {
		e.t.Fatalf("Extend after lease expiry without takeover: %v", err)
	}
	e.wantBusy("k2", "fp", 5*time.Second, time.Hour, 10*time.Second)
}

func testCompleteDuplicate(e *env) {
	tok := e.acquire("k", "fp", 10*time.Second, time.Hour)
	want := dedupe.Result{Data: []byte(`{"status":202,"id":"p-1"}`)}
	e.complete("k", tok, want, time.Hour)
	c := e.wantDuplicate("k", "fp", want)
	if c.Fingerprint != "fp" {
		e.t.Errorf("duplicate Fingerprint %q, want %q", c.Fingerprint, "fp")
	}
	// Duplicates are stable and do not alter the record.
	e.wantDuplicate("k", "fp", want)
	bg := ctx(e.t)
	e.wantLeaseLost("second Complete with the same token", e.s.Complete(bg, "k", tok, dedupe.Result{Data: []byte("again")}, time.Hour))
	e.wantLeaseLost("Release after Complete", e.s.Release(bg, "k", tok))
	e.wantLeaseLost("Extend after Complete", e.s.Extend(bg, "k", tok, time.Minute))
	e.wantDuplicate("k", "fp", want)

	// An empty result is a result too.
	tok = e.acquire("empty", "fp", 10*time.Second, time.Hour)
	e.complete("empty", tok, dedupe.Result{}, time.Hour)
	e.wantDuplicate("empty", "fp", dedupe.Result{})
}

func testFailedReplay(e *env) {
	tok := e.acquire("k", "fp", 10*time.Second, time.Hour)
	want := dedupe.Result{Failed: true, Data: []byte("402 No Money!")}
	e.complete("k", tok, want, time.Hour)
	// A stored failure is replayed, never re-evaluated.
	e.wantDuplicate("k", "fp", want)
	e.wantDuplicate("k", "", want)
	if c := e.claim("k", "other", time.Second, time.Hour); c.Status != dedupe.Conflict {
		e.t.Errorf("failed record, other fingerprint: %s, want conflict", brief(c))
	}
}

func testConcurrentComplete(e *env) {
	tok := e.acquire("k", "fp", 10*time.Second, time.Hour)
	c := ctx(e.t)
	errs := race(ConcurrentClaimers, func(i int) error {
		return e.s.Complete(c, "k", tok, dedupe.Result{Data: fmt.Appendf(nil, "r%d", i)}, time.Hour)
	})
	won := -1
	for i, err := range errs {
		switch {
		case err == nil:
			if won >= 0 {
				e.t.Fatalf("Complete succeeded for both caller %d and caller %d with one token", won, i)
			}
			won = i
		case !errors.Is(err, dedupe.ErrLeaseLost):
			e.t.Errorf("concurrent Complete %d: %v, want nil or ErrLeaseLost", i, err)
		}
	}
	if won < 0 {
		e.t.Fatal("no concurrent Complete succeeded")
	}
	e.wantDuplicate("k", "fp", dedupe.Result{Data: fmt.Appendf(nil, "r%d", won)})
}

func testConflict(e *env) {
	tok := e.acquire("k", "fp-a", 10*time.Second, time.Hour)
	e.complete("k", tok, dedupe.Result{Data: []byte("a")}, time.Hour)
	c := e.claim("k", "fp-b", 10*time.Second, time.Hour)
	if c.Status != dedupe.Conflict || c.Token != "" {
		e.t.Fatalf("claim with another fingerprint: %s, want conflict without a token", brief(c))
	}
	if c.Fingerprint != "fp-a" {
		e.t.Errorf("conflict Fingerprint %q, want the stored %q", c.Fingerprint, "fp-a")
	}
	// A conflict changes nothing.
	e.wantDuplicate("k", "fp-a", dedupe.Result{Data: []byte("a")})
}

func testEmptyFingerprint(e *env) {
	tok := e.acquire("none-stored", "", 10*time.Second, time.Hour)
	e.complete("none-stored", tok, dedupe.Result{Data: []byte("1")}, time.Hour)
	e.wantDuplicate("none-stored", "anything", dedupe.Result{Data: []byte("1")})
	e.wantDuplicate("none-stored", "", dedupe.Result{Data: []byte("1")})

	tok = e.acquire("stored", "fp", 10*time.Second, time.Hour)
	e.complete("stored", tok, dedupe.Result{Data: []byte("2")}, time.Hour)
	e.wantDuplicate("stored", "", dedupe.Result{Data: []byte("2")})
}

func testRelease(e *env) {
	tok := e.acquire("k", "fp", 10*time.Second, time.Hour)
	bg := ctx(e.t)
	e.wantLeaseLost("Release with a wrong token", e.s.Release(bg, "k", "wrong"))
	e.wantBusy("k", "fp", 10*time.Second, time.Hour, 10*time.Second)
	if err := e.s.Release(bg, "k", tok); err != nil {
		e.t.Fatalf("Release: %v", err)
	}
	// The redelivery of a transiently failed message must run again at
	// once: never Duplicate, never Busy, and not a takeover either — the
	// lease was given back, and the record counts the attempt.
	c := e.claim("k", "fp", 10*time.Second, time.Hour)
	if c.Status != dedupe.Acquired || c.Takeover || c.Token == tok || c.Attempt != 2 {
		e.t.Fatalf("claim after Release: %s, want acquired, no takeover, a new token, attempt 2", brief(c))
	}
	e.wantLeaseLost("second Release with the old token", e.s.Release(bg, "k", tok))
	e.wantLeaseLost("Complete with the released token", e.s.Complete(bg, "k", tok, dedupe.Result{}, time.Hour))
	e.wantLeaseLost("Delete with the released token", e.s.Delete(bg, "k", tok))
	e.wantLeaseLost("Extend with the released token", e.s.Extend(bg, "k", tok, time.Hour))
	// A released key may be claimed with another fingerprint: nothing was
	// completed, so there is nothing to conflict with.
	if err := e.s.Release(bg, "k", c.Token); err != nil {
		e.t.Fatalf("Release: %v", err)
	}
	e.wantLeaseLost("Complete after the second Release", e.s.Complete(bg, "k", c.Token, dedupe.Result{}, time.Hour))
	c = e.claim("k", "other", 10*time.Second, time.Hour)
	if c.Status != dedupe.Acquired || c.Attempt != 3 {
		e.t.Fatalf("claim with another fingerprint after Release: %s, want acquired, attempt 3", brief(c))
	}
	// The new holder completes; its fingerprint is the record's.
	e.complete("k", c.Token, dedupe.Result{Data: []byte("3")}, time.Hour)
	e.wantDuplicate("k", "other", dedupe.Result{Data: []byte("3")})
}

// testAttempts checks that attempts count leases granted — first claims,
// claims after Release, takeovers — and nothing else: Busy answers and
// duplicates leave the count alone.
func testAttempts(e *env) {
	bg := ctx(e.t)
	c := e.claim("k", "fp", 5*time.Second, time.Hour)
	if c.Status != dedupe.Acquired || c.Attempt != 1 {
		e.t.Fatalf("first claim: %s, want acquired, attempt 1", brief(c))
	}
	for range 3 {
		e.wantBusy("k", "fp", 5*time.Second, time.Hour, 5*time.Second)
	}
	if err := e.s.Release(bg, "k", c.Token); err != nil {
		e.t.Fatalf("Release: %v", err)
	}
	c = e.claim("k", "fp", 5*time.Second, time.Hour)
	if c.Status != dedupe.Acquired || c.Attempt != 2 {
		e.t.Fatalf("claim after Busy answers and a Release: %s, want attempt 2", brief(c))
	}
	// The holder crashes: the lease lapses and the next claim takes over.
	e.clock.Advance(6 * time.Second)
	c = e.claim("k", "fp", 5*time.Second, time.Hour)
	if c.Status != dedupe.Acquired || !c.Takeover || c.Attempt != 3 {
		e.t.Fatalf("takeover: %s, want acquired, takeover, attempt 3", brief(c))
	}
	e.complete("k", c.Token, dedupe.Result{Data: []byte("ok")}, time.Hour)
	e.wantDuplicate("k", "fp", dedupe.Result{Data: []byte("ok")})
	// Another key counts on its own.
	if c := e.claim("k2", "fp", 5*time.Second, time.Hour); c.Attempt != 1 {
		e.t.Fatalf("claim of another key: %s, want attempt 1", brief(c))
	}
	// After retention the key is new again.
	tok := e.acquire("k3", "fp", time.Second, 2*time.Second)
	if err := e.s.Release(bg, "k3", tok); err != nil {
		e.t.Fatalf("Release: %v", err)
	}
	e.clock.Advance(3 * time.Second)
	if c := e.claim("k3", "fp", time.Second, time.Hour); c.Status != dedupe.Acquired || c.Attempt != 1 {
		e.t.Fatalf("claim after the released record's retention: %s, want attempt 1", brief(c))
	}
}

// testSnooze checks that Snooze gives the lease back like Release but
// uncounted (stores that implement dedupe.Snoozer; the others skip).
func testSnooze(e *env) {
	sn, ok := e.s.(dedupe.Snoozer)
	if !ok {
		e.t.Skip("the store does not implement dedupe.Snoozer")
	}
	bg := ctx(e.t)
	c := e.claim("k", "fp", 10*time.Second, time.Hour)
	if err := e.s.Release(bg, "k", c.Token); err != nil {
		e.t.Fatalf("Release: %v", err)
	}
	c = e.claim("k", "fp", 10*time.Second, time.Hour)
	if c.Attempt != 2 {
		e.t.Fatalf("claim after Release: %s, want attempt 2", brief(c))
	}
	e.wantLeaseLost("Snooze with a wrong token", sn.Snooze(bg, "k", "wrong"))
	for range 3 {
		if err := sn.Snooze(bg, "k", c.Token); err != nil {
			e.t.Fatalf("Snooze: %v", err)
		}
		e.wantLeaseLost("Complete after Snooze", e.s.Complete(bg, "k", c.Token, dedupe.Result{}, time.Hour))
		c = e.claim("k", "fp", 10*time.Second, time.Hour)
		if c.Status != dedupe.Acquired || c.Takeover || c.Attempt != 2 {
			e.t.Fatalf("claim after Snooze: %s, want acquired, no takeover, still attempt 2", brief(c))
		}
	}
	// A first attempt snoozed is still the first.
	c1 := e.claim("k1", "fp", 10*time.Second, time.Hour)
	if err := sn.Snooze(bg, "k1", c1.Token); err != nil {
		e.t.Fatalf("Snooze: %v", err)
	}
	if c := e.claim("k1", "fp", 10*time.Second, time.Hour); c.Status != dedupe.Acquired || c.Attempt != 1 {
		e.t.Fatalf("claim after snoozing attempt 1: %s, want attempt 1", brief(c))
	}
}

// testDelete checks that Delete removes an owned record, attempt count
// included (a dead-lettered message replayed later starts again).
func testDelete(e *env) {
	bg := ctx(e.t)
	tok := e.acquire("k", "fp", 10*time.Second, time.Hour)
	if err := e.s.Release(bg, "k", tok); err != nil {
		e.t.Fatalf("Release: %v", err)
	}
	c := e.claim("k", "fp", 10*time.Second, time.Hour)
	if c.Attempt != 2 {
		e.t.Fatalf("claim after Release: %s, want attempt 2", brief(c))
	}
	e.wantLeaseLost("Delete with a wrong token", e.s.Delete(bg, "k", "wrong"))
	e.wantLeaseLost("Delete with an empty token", e.s.Delete(bg, "k", ""))
	e.wantLeaseLost("Delete of an absent key", e.s.Delete(bg, "absent", c.Token))
	if err := e.s.Delete(bg, "k", c.Token); err != nil {
		e.t.Fatalf("Delete: %v", err)
	}
	e.wantLeaseLost("second Delete", e.s.Delete(bg, "k", c.Token))
	e.wantLeaseLost("Complete after Delete", e.s.Complete(bg, "k", c.Token, dedupe.Result{}, time.Hour))
	c = e.claim("k", "other", 10*time.Second, time.Hour)
	if c.Status != dedupe.Acquired || c.Takeover || c.Attempt != 1 {
		e.t.Fatalf("claim after Delete: %s, want acquired, no takeover, attempt 1", brief(c))
	}
	// A completed record is not the caller's to delete.
	e.complete("k", c.Token, dedupe.Result{Data: []byte("x")}, time.Hour)
	e.wantLeaseLost("Delete after Complete", e.s.Delete(bg, "k", c.Token))
	e.wantDuplicate("k", "other", dedupe.Result{Data: []byte("x")})
}

// fenceAbove fails unless c is Acquired with a fence above prev, and
// returns its fence.
func (e *env) fenceAbove(what string, c dedupe.Claim, prev uint64) uint64 {
	e.t.Helper()
	if c.Status != dedupe.Acquired {
		e.t.Fatalf("%s: %s, want acquired", what, brief(c))
	}
	if c.Fence == 0 || c.Fence <= prev {
		e.t.Fatalf("%s: fence %d, want above %d (the previous lease's); claim %s", what, c.Fence, prev, brief(c))
	}
	return c.Fence
}

// testFencesGrow checks that every lease of a key gets a larger fence than
// the one before — after a Release, after a takeover, with the clock
// standing still or set back — and that answers other than Acquired carry
// none.
func testFencesGrow(e *env) {
	bg := ctx(e.t)
	c := e.claim("k", "fp", 5*time.Second, time.Hour)
	f := e.fenceAbove("first claim", c, 0)
	if b := e.claim("k", "fp", 5*time.Second, time.Hour); b.Status != dedupe.Busy || b.Fence != 0 {
		e.t.Errorf("busy claim: %s, want busy with no fence", brief(b))
	}
	// Released and claimed again at the same instant: the fence still grows.
	if err := e.s.Release(bg, "k", c.Token); err != nil {
		e.t.Fatalf("Release: %v", err)
	}
	c = e.claim("k", "fp", 5*time.Second, time.Hour)
	f = e.fenceAbove("claim after Release, clock standing still", c, f)
	// The clock is set back a minute (another process's clock, or NTP):
	// the fence grows anyway, within the record.
	e.clock.Advance(-time.Minute)
	if err := e.s.Release(bg, "k", c.Token); err != nil {
		e.t.Fatalf("Release: %v", err)
	}
	c = e.claim("k", "fp", 5*time.Second, time.Hour)
	f = e.fenceAbove("claim after Release with the clock set back", c, f)
	// The holder stalls; a takeover fences it out.
	stalled := c
	e.clock.Advance(5 * time.Second)
	c = e.claim("k", "fp", 5*time.Second, time.Hour)
	if !c.Takeover {
		e.t.Fatalf("claim after lease expiry: %s, want a takeover", brief(c))
	}
	f = e.fenceAbove("takeover", c, f)
	if stalled.Fence >= c.Fence {
		e.t.Fatalf("the stalled holder's fence %d is not below the taker's %d", stalled.Fence, c.Fence)
	}
	e.wantLeaseLost("Complete by the stalled holder", e.s.Complete(bg, "k", stalled.Token, dedupe.Result{}, time.Hour))
	// Extend and Complete keep the fence: it belongs to the lease.
	if err := e.s.Extend(bg, "k", c.Token, 10*time.Second); err != nil {
		e.t.Fatalf("Extend: %v", err)
	}
	e.complete("k", c.Token, dedupe.Result{Data: []byte("ok")}, time.Hour)
	if d := e.wantDuplicate("k", "fp", dedupe.Result{Data: []byte("ok")}); d.Fence != 0 {
		e.t.Errorf("duplicate: %s, want no fence", brief(d))
	}
	if x := e.claim("k", "other", 5*time.Second, time.Hour); x.Status != dedupe.Conflict || x.Fence != 0 {
		e.t.Errorf("conflict: %s, want conflict with no fence", brief(x))
	}
	_ = f
}

// testFenceConcurrentTakeover checks that the one winner of a race to take
// over an expired lease has a fence above the lease it replaced.
func testFenceConcurrentTakeover(e *env) {
	old := e.claim("k", "fp", 10*time.Second, time.Hour)
	f := e.fenceAbove("first claim", old, 0)
	for round := range 3 {
		e.clock.Advance(10 * time.Second)
		w := e.raceClaims("k")
		if !w.Takeover {
			e.t.Fatalf("round %d: winner %s, want a takeover", round, brief(w))
		}
		f = e.fenceAbove(fmt.Sprintf("round %d: takeover", round), w, f)
	}
}

// testFenceResets checks that a key's fences keep growing when its record
// is removed — by Delete after a dead letter, or at the end of retention —
// provided the clock moves on (see storekit.NextFence): here by a
// millisecond, the least that a store keeping milliseconds can see.
func testFenceResets(e *env) {
	bg := ctx(e.t)
	c := e.claim("k", "fp", 5*time.Second, time.Hour)
	f := e.fenceAbove("first claim", c, 0)
	for range 3 { // several leases at one instant: fences beyond the clock
		if err := e.s.Release(bg, "k", c.Token); err != nil {
			e.t.Fatalf("Release: %v", err)
		}
		c = e.claim("k", "fp", 5*time.Second, time.Hour)
		f = e.fenceAbove("claim after Release", c, f)
	}
	if err := e.s.Delete(bg, "k", c.Token); err != nil {
		e.t.Fatalf("Delete: %v", err)
	}
	e.clock.Advance(time.Millisecond)
	c = e.claim("k", "fp", 5*time.Second, time.Hour)
	if c.Attempt != 1 {
		e.t.Fatalf("claim after Delete: %s, want attempt 1", brief(c))
	}
	f = e.fenceAbove("claim after Delete", c, f)
	// Completed, then forgotten at the end of its retention.
	e.complete("k", c.Token, dedupe.Result{Data: []byte("ok")}, time.Minute)
	e.clock.Advance(time.Minute)
	c = e.claim("k", "fp", 5*time.Second, time.Hour)
	if c.Attempt != 1 || c.Takeover {
		e.t.Fatalf("claim after retention: %s, want attempt 1, no takeover", brief(c))
	}
	f = e.fenceAbove("claim after retention", c, f)
	// An in-progress record whose retention ran out.
	e.clock.Advance(time.Hour)
	c = e.claim("k", "fp", 5*time.Second, time.Hour)
	e.fenceAbove("claim after an in-progress record's retention", c, f)
}

func testExtend(e *env) {
	tok := e.acquire("k", "fp", 5*time.Second, time.Hour)
	e.clock.Advance(4 * time.Second)
	if err := e.s.Extend(ctx(e.t), "k", tok, 10*time.Second); err != nil {
		e.t.Fatalf("Extend: %v", err)
	}
	e.clock.Advance(2 * time.Second) // the original lease ended a second ago
	e.wantBusy("k", "fp", 5*time.Second, time.Hour, 8*time.Second)
	e.wantLeaseLost("Extend with a wrong token", e.s.Extend(ctx(e.t), "k", "wrong", time.Hour))
	e.wantBusy("k", "fp", 5*time.Second, time.Hour, 8*time.Second)
	// Extend sets the lease to now+lease, even when that is shorter.
	if err := e.s.Extend(ctx(e.t), "k", tok, time.Second); err != nil {
		e.t.Fatalf("Extend: %v", err)
	}
	e.wantBusy("k", "fp", 5*time.Second, time.Hour, time.Second)
	e.complete("k", tok, dedupe.Result{Data: []byte("x")}, time.Hour)
	e.wantDuplicate("k", "fp", dedupe.Result{Data: []byte("x")})

	// A lease extended beyond the claim's retention keeps the record alive
	// for the whole lease.
	tok = e.acquire("long", "fp", time.Second, 2*time.Second)
	if err := e.s.Extend(ctx(e.t), "long", tok, time.Minute); err != nil {
		e.t.Fatalf("Extend: %v", err)
	}
	e.clock.Advance(30 * time.Second)
	e.wantBusy("long", "fp", time.Second, 2*time.Second, 30*time.Second)
}

func testRetention(e *env) {
	tok := e.acquire("k", "fp", 10*time.Second, time.Hour)
	e.complete("k", tok, dedupe.Result{Data: []byte("r")}, time.Hour)
	e.clock.Advance(time.Hour - time.Millisecond)
	e.wantDuplicate("k", "fp", dedupe.Result{Data: []byte("r")})
	e.clock.Advance(time.Millisecond) // retention is over exactly now
	c := e.claim("k", "other-fp", 10*time.Second, time.Hour)
	if c.Status != dedupe.Acquired || c.Takeover {
		e.t.Fatalf("claim after retention: %s, want acquired (no conflict, no takeover)", brief(c))
	}
	e.wantLeaseLost("Complete with the token of the expired record", e.s.Complete(ctx(e.t), "k", tok, dedupe.Result{}, time.Hour))
	e.complete("k", c.Token, dedupe.Result{Data: []byte("new")}, time.Minute)
	e.wantDuplicate("k", "other-fp", dedupe.Result{Data: []byte("new")})
}

func testRetentionFromCompletion(e *env) {
	tok := e.acquire("k", "fp", time.Hour, time.Hour)
	e.clock.Advance(50 * time.Minute)
	e.complete("k", tok, dedupe.Result{Data: []byte("r")}, time.Hour)
	e.clock.Advance(time.Hour - time.Millisecond) // 1h50m after the claim
	e.wantDuplicate("k", "fp", dedupe.Result{Data: []byte("r")})
	e.clock.Advance(time.Millisecond)
	e.acquire("k", "fp", time.Second, time.Hour)
}

func testInProgressRetention(e *env) {
	old := e.acquire("k", "fp", time.Second, time.Minute)
	e.clock.Advance(time.Minute - time.Millisecond)
	c := e.claim("k", "fp", time.Second, time.Minute)
	if c.Status != dedupe.Acquired || !c.Takeover {
		e.t.Fatalf("claim after lease, before retention: %s, want a takeover", brief(c))
	}
	e.wantLeaseLost("Extend with the replaced token", e.s.Extend(ctx(e.t), "k", old, time.Second))
	// The takeover's record is kept for its own retention.
	e.clock.Advance(time.Minute)
	c = e.claim("k", "fp", time.Second, time.Minute)
	if c.Status != dedupe.Acquired || c.Takeover {
		e.t.Fatalf("claim after the in-progress record's retention: %s, want acquired without takeover", brief(c))
	}
}

func testLargeResult(e *env) {
	data := make([]byte, LargeResult)
	_, _ = rand.Read(data)
	tok := e.acquire("big", "fp", 10*time.Second, time.Hour)
	e.complete("big", tok, dedupe.Result{Data: data}, time.Hour)
	e.wantDuplicate("big", "fp", dedupe.Result{Data: data})
	// The store owns its copy.
	data[0] ^= 0xff
	c := e.claim("big", "fp", 10*time.Second, time.Hour)
	if c.Status != dedupe.Duplicate || len(c.Result.Data) != LargeResult || c.Result.Data[0] == data[0] {
		e.t.Errorf("stored result changed with the caller's slice, or was lost: %s", brief(c))
	}
	// Nor does a replayed result share memory with the stored one.
	if len(c.Result.Data) > 0 {
		c.Result.Data[1] ^= 0xff
	}
	data[0] ^= 0xff
	e.wantDuplicate("big", "fp", dedupe.Result{Data: data})
}

func testAwkward(e *env) {
	binary := make([]byte, 0, 512)
	for i := range 256 {
		binary = append(binary, byte(i))
	}
	binary = append(binary, 0xff, 0xfe, 0xc3, 0x28, 0xe2, 0x82, 0x00, 0x00, '"', '\\', '\n')
	long := strings.Repeat("long-key/", 300) // 2,700 bytes
	keys := []string{
		"payments:acc-1:p-42",
		"with spaces and\ttabs",
		"ключ-🔑-キー",
		"a/b/c",
		"*?[]{}",
		"..",
		".",
		"-_=",
		"Key", "key", "KEY",
		"prefix", "prefix:", "prefix:suffix",
		"\x00\xff\xfe binary key",
		"%2F",
		long,
		long + "x",
	}
	tokens := make([]string, len(keys))
	for i, k := range keys {
		tokens[i] = e.acquire(k, "sha256:ab/cd+ef=", 10*time.Second, time.Hour)
	}
	for i, k := range keys {
		res := dedupe.Result{Failed: i%2 == 1, Data: append(append([]byte(nil), binary...), k...)}
		e.complete(k, tokens[i], res, time.Hour)
	}
	for i, k := range keys {
		res := dedupe.Result{Failed: i%2 == 1, Data: append(append([]byte(nil), binary...), k...)}
		c := e.wantDuplicate(k, "sha256:ab/cd+ef=", res)
		if c.Fingerprint != "sha256:ab/cd+ef=" {
			e.t.Errorf("key %q: stored fingerprint %q", k, c.Fingerprint)
		}
	}
}

func testCancelled(e *env) {
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := e.s.Claim(cancelled, "k", "fp", 10*time.Second, time.Hour); !errors.Is(err, context.Canceled) {
		e.t.Fatalf("Claim with a cancelled context: %v, want context.Canceled", err)
	}
	// Nothing was claimed.
	tok := e.acquire("k", "fp", 10*time.Second, time.Hour)
	if err := e.s.Extend(cancelled, "k", tok, time.Hour); !errors.Is(err, context.Canceled) {
		e.t.Errorf("Extend with a cancelled context: %v, want context.Canceled", err)
	}
	e.wantBusy("k", "fp", 10*time.Second, time.Hour, 10*time.Second)
	if err := e.s.Complete(cancelled, "k", tok, dedupe.Result{Data: []byte("no")}, time.Hour); !errors.Is(err, context.Canceled) {
		e.t.Errorf("Complete with a cancelled context: %v, want context.Canceled", err)
	}
	e.wantBusy("k", "fp", 10*time.Second, time.Hour, 10*time.Second)
	if err := e.s.Release(cancelled, "k", tok); !errors.Is(err, context.Canceled) {
		e.t.Errorf("Release with a cancelled context: %v, want context.Canceled", err)
	}
	e.wantBusy("k", "fp", 10*time.Second, time.Hour, 10*time.Second)
	// The owner still owns it.
	e.complete("k", tok, dedupe.Result{Data: []byte("yes")}, time.Hour)
	e.wantDuplicate("k", "fp", dedupe.Result{Data: []byte("yes")})

	expired, cancel2 := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel2()
	if _, err := e.s.Claim(expired, "k2", "fp", 10*time.Second, time.Hour); !errors.Is(err, context.DeadlineExceeded) {
		e.t.Errorf("Claim with an expired deadline: %v, want context.DeadlineExceeded", err)
	}
	e.acquire("k2", "fp", 10*time.Second, time.Hour)
}

func testInvalidLease(e *env) {
	bg := ctx(e.t)
	bad := []struct{ lease, retention time.Duration }{
		{0, time.Hour},
		{-time.Second, time.Hour},
		{time.Minute, time.Second},
		{time.Minute, 0},
		{time.Minute, -time.Minute},
	}
	for _, b := range bad {
		if _, err := e.s.Claim(bg, "k", "fp", b.lease, b.retention); !errors.Is(err, dedupe.ErrInvalidLease) {
			e.t.Errorf("Claim(lease %v, retention %v): %v, want ErrInvalidLease", b.lease, b.retention, err)
		}
	}
	// Nothing was stored; retention equal to the lease is valid.
	tok := e.acquire("k", "fp", time.Minute, time.Minute)
	for _, d := range []time.Duration{0, -time.Second} {
		if err := e.s.Extend(bg, "k", tok, d); !errors.Is(err, dedupe.ErrInvalidLease) {
			e.t.Errorf("Extend(lease %v): %v, want ErrInvalidLease", d, err)
		}
		if err := e.s.Complete(bg, "k", tok, dedupe.Result{}, d); !errors.Is(err, dedupe.ErrInvalidLease) {
			e.t.Errorf("Complete(retention %v): %v, want ErrInvalidLease", d, err)
		}
	}
	e.wantBusy("k", "fp", time.Minute, time.Minute, time.Minute)
	e.complete("k", tok, dedupe.Result{Data: []byte("ok")}, time.Minute)
	e.wantDuplicate("k", "fp", dedupe.Result{Data: []byte("ok")})
}

func testManyKeys(e *env) {
	const workers = 8
	c := ctx(e.t)
	key := func(i int) string { return fmt.Sprintf("many:%05d", i) }
	result := func(i int) []byte { return fmt.Appendf(nil, "result of %d", i) }
	// each runs fn for every key on a few goroutines and reports the first
	// error per key.
	each := func(phase string, fn func(i int) error) {
		e.t.Helper()
		errs := make([]error, ManyKeys)
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < ManyKeys; i += workers {
					errs[i] = fn(i)
				}
			}()
		}
		wg.Wait()
		bad := 0
		for i, err := range errs {
			if err != nil {
				bad++
				if bad <= 5 {
					e.t.Errorf("%s, key %q: %v", phase, key(i), err)
				}
			}
		}
		if bad > 0 {
			e.t.Fatalf("%s: %d of %d keys failed", phase, bad, ManyKeys)
		}
	}
	tokens := make([]string, ManyKeys)
	each("claim", func(i int) error {
		cl, err := e.s.Claim(c, key(i), fmt.Sprint("fp", i), 10*time.Second, time.Hour)
		if err != nil {
			return err
		}
		if cl.Status != dedupe.Acquired {
			return fmt.Errorf("status %v, want acquired", cl.Status)
		}
		tokens[i] = cl.Token
		return nil
	})
	each("complete or release", func(i int) error {
		switch i % 3 {
		case 0:
			return e.s.Complete(c, key(i), tokens[i], dedupe.Result{Failed: i%2 == 1, Data: result(i)}, time.Hour)
		case 1:
			return e.s.Release(c, key(i), tokens[i])
		}
		return nil // left in progress
	})
	e.clock.Advance(time.Second)
	each("reclaim", func(i int) error {
		cl, err := e.s.Claim(c, key(i), fmt.Sprint("fp", i), 10*time.Second, time.Hour)
		if err != nil {
			return err
		}
		switch i % 3 {
		case 0:
			if cl.Status != dedupe.Duplicate || cl.Result.Failed != (i%2 == 1) || !bytes.Equal(cl.Result.Data, result(i)) {
				return fmt.Errorf("got %s with data %q, want duplicate with %q", brief(cl), cl.Result.Data, result(i))
			}
		case 1:
			if cl.Status != dedupe.Acquired || cl.Takeover {
				return fmt.Errorf("after release got %s, want acquired", brief(cl))
			}
		case 2:
			if cl.Status != dedupe.Busy || cl.RetryAfter < 9*time.Second-retryAfterSlack || cl.RetryAfter > 9*time.Second+retryAfterSlack {
				return fmt.Errorf("in progress got %s, want busy for 9s", brief(cl))
			}
		}
		return nil
	})
}
