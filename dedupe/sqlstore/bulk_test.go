package sqlstore_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/dedupe/storetest"
)

// bulkFixture is the state both stores of a bulk-vs-single comparison start
// from, built with the single operations:
//
//	done      completed with "ok", fingerprint fp
//	failed    completed as failed with "402", fingerprint fp
//	busy      claimed (committed) with a live lease
//	stale     claimed with a lease that has expired: a takeover
//	expired   completed, retention over: counts as absent
func bulkFixture(t *testing.T, ctx context.Context, s *sqlstore.Store, clock *storetest.Clock) {
	t.Helper()
	complete := func(key string, res dedupe.Result, ret time.Duration) {
		c, err := s.Claim(ctx, key, "fp", lease, retention)
		if err != nil || c.Status != dedupe.Acquired {
			t.Fatalf("fixture claim %s: %+v, %v", key, c, err)
		}
		if err := s.Complete(ctx, key, c.Token, res, ret); err != nil {
			t.Fatalf("fixture complete %s: %v", key, err)
		}
	}
	complete("done", dedupe.Result{Data: []byte("ok")}, retention)
	complete("failed", dedupe.Result{Failed: true, Data: []byte("402")}, retention)
	complete("expired", dedupe.Result{Data: []byte("old")}, lease)
	if c, err := s.Claim(ctx, "stale", "fp", time.Second, retention); err != nil || c.Status != dedupe.Acquired {
		t.Fatalf("fixture claim stale: %+v, %v", c, err)
	}
	clock.Advance(2 * time.Second)
	if c, err := s.Claim(ctx, "busy", "fp", lease, retention); err != nil || c.Status != dedupe.Acquired {
		t.Fatalf("fixture claim busy: %+v, %v", c, err)
	}
	clock.Advance(lease) // "expired" is over, "busy" has 0 < remainder
	clock.Advance(-time.Second)
}

// bulkRequests covers every branch of the state machine, with keys repeated
// inside the batch.
func bulkRequests() []sqlstore.ClaimRequest {
	r := func(key, fp string) sqlstore.ClaimRequest {
		return sqlstore.ClaimRequest{Key: key, Fingerprint: fp, Lease: lease, Retention: retention}
	}
	return []sqlstore.ClaimRequest{
		r("new-1", "fp"),
		r("done", "fp"),
		r("new-2", ""),
		r("new-1", "fp"),    // repeat of an acquired key: busy
		r("failed", "fp"),   // duplicate of a stored failure
		r("done", "other"),  // conflict
		r("busy", "fp"),     // live lease
		r("stale", "fp2"),   // takeover
		r("expired", "new"), // retention over: acquired
		r("stale", "fp2"),   // repeat of a takeover: busy
		r("new-1", "other"), // repeat, other fingerprint: still busy
		r("done", ""),       // no fingerprint: duplicate
		r("k\x00\xff", "fp\xfe"),
		r("expired", "new"),
		r("new-3", "fp"),
	}
}

// sameClaim compares two claims, tokens only by presence (they are random).
func sameClaim(a, b dedupe.Claim) bool {
	return a.Status == b.Status && a.Takeover == b.Takeover && a.RetryAfter == b.RetryAfter &&
		a.Result.Failed == b.Result.Failed && bytes.Equal(a.Result.Data, b.Result.Data) &&
		(a.Result.Data == nil) == (b.Result.Data == nil) &&
		a.Fingerprint == b.Fingerprint && (a.Token == "") == (b.Token == "")
}

// errKind names the sentinel an error matches.
func errKind(err error) string {
	switch {
	case err == nil:
		return "nil"
	case errors.Is(err, dedupe.ErrLeaseLost):
		return "lease lost"
	case errors.Is(err, dedupe.ErrInvalidLease):
		return "invalid lease"
	}
	return "other: " + err.Error()
}

func inTx(t *testing.T, ctx context.Context, db *sql.DB, fn func(tx *sql.Tx)) {
	t.Helper()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	fn(tx)
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// TestBulkMatchesSingle runs the same claims and completions through
// ClaimManyTx/CompleteManyTx on one table and through ClaimTx/CompleteTx
// calls on another, from the same state and clock, and requires the same
// answers and the same stored records.
func TestBulkMatchesSingle(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB) {
		ctx := testCtx(t)
		var clock storetest.Clock
		var clock2 storetest.Clock
		bulk, single := newStore(t, db, clock.Now), newStore(t, db, clock2.Now)
		bulkFixture(t, ctx, bulk, &clock)
		bulkFixture(t, ctx, single, &clock2)

		reqs := bulkRequests()
		var got, want []dedupe.Claim
		inTx(t, ctx, db, func(tx *sql.Tx) {
			var err error
			if got, err = bulk.ClaimManyTx(ctx, tx, reqs); err != nil {
				t.Fatalf("ClaimManyTx: %v", err)
			}
		})
		inTx(t, ctx, db, func(tx *sql.Tx) {
			for _, r := range reqs {
				c, err := single.ClaimTx(ctx, tx, r.Key, r.Fingerprint, r.Lease, r.Retention)
				if err != nil {
					t.Fatalf("ClaimTx %q: %v", r.Key, err)
				}
				want = append(want, c)
			}
		})
		if len(got) != len(reqs) {
			t.Fatalf("ClaimManyTx returned %d claims for %d requests", len(got), len(reqs))
		}
		for i := range reqs {
			if !sameClaim(got[i], want[i]) {
				t.Errorf("request %d (%q): bulk %+v, single %+v", i, reqs[i].Key, got[i], want[i])
			}
		}
		if got[0].Status != dedupe.Acquired || got[3].Status != dedupe.Busy || got[3].RetryAfter != lease {
			t.Fatalf("same key twice: %v then %v (retry after %v), want acquired then busy after %v",
				got[0].Status, got[3].Status, got[3].RetryAfter, lease)
		}

		// Completions: every acquired claim, a repeat of one, a stale
		// token, a token for a busy key and an invalid retention.
		complete := func(claims []dedupe.Claim) []sqlstore.CompleteRequest {
			var out []sqlstore.CompleteRequest
			for i, c := range claims {
				if c.Status == dedupe.Acquired {
					res := dedupe.Result{Data: []byte(fmt.Sprint("r", i))}
					if i == 2 {
						res = dedupe.Result{Failed: true}
					}
					if i == 8 {
						res = dedupe.Result{Data: []byte{}}
					}
					out = append(out, sqlstore.CompleteRequest{Key: reqs[i].Key, Token: c.Token, Result: res, Retention: retention})
				}
			}
			return append(out,
				out[0], // already completed above
				sqlstore.CompleteRequest{Key: "busy", Token: "0123456789abcdef", Retention: retention},
				sqlstore.CompleteRequest{Key: "new-3", Token: "", Retention: retention},
				sqlstore.CompleteRequest{Key: "done", Token: "x", Retention: 0},
			)
		}
		clock.Advance(time.Second)
		clock2.Advance(time.Second)
		var gotErrs, wantErrs []error
		inTx(t, ctx, db, func(tx *sql.Tx) {
			var err error
			if gotErrs, err = bulk.CompleteManyTx(ctx, tx, complete(got)); err != nil {
				t.Fatalf("CompleteManyTx: %v", err)
			}
		})
		inTx(t, ctx, db, func(tx *sql.Tx) {
			for _, r := range complete(want) {
				wantErrs = append(wantErrs, single.CompleteTx(ctx, tx, r.Key, r.Token, r.Result, r.Retention))
			}
		})
		if len(gotErrs) != len(wantErrs) {
			t.Fatalf("CompleteManyTx returned %d errors, want %d", len(gotErrs), len(wantErrs))
		}
		for i := range wantErrs {
			if errKind(gotErrs[i]) != errKind(wantErrs[i]) {
				t.Errorf("completion %d: bulk %v, single %v", i, gotErrs[i], wantErrs[i])
			}
		}
		if n := len(wantErrs); !errors.Is(gotErrs[n-4], dedupe.ErrLeaseLost) || !errors.Is(gotErrs[n-1], dedupe.ErrInvalidLease) {
			t.Fatalf("repeat completion = %v, invalid retention = %v", gotErrs[n-4], gotErrs[n-1])
		}

		// The stored records match, tokens aside.
		for _, r := range reqs {
			a, aerr := bulk.Get(ctx, r.Key)
			b, berr := single.Get(ctx, r.Key)
			if errors.Is(aerr, sqlstore.ErrNotFound) != errors.Is(berr, sqlstore.ErrNotFound) {
				t.Fatalf("Get %q: bulk %v, single %v", r.Key, aerr, berr)
			}
			if aerr != nil {
				continue
			}
			if a.Key != b.Key || a.Fingerprint != b.Fingerprint || a.State != b.State || !bytes.Equal(a.Result, b.Result) ||
				(a.Result == nil) != (b.Result == nil) || !a.LeaseUntil.Equal(b.LeaseUntil) ||
				!a.CreatedAt.Equal(b.CreatedAt) || !a.ExpiresAt.Equal(b.ExpiresAt) {
				t.Errorf("record %q: bulk %+v, single %+v", r.Key, a, b)
			}
		}
	})
}

// TestBulkEdges: empty batches, refused *sql.DB, invalid leases.
func TestBulkEdges(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB) {
		ctx := testCtx(t)
		s := newStore(t, db, nil)
		if _, err := s.ClaimManyTx(ctx, db, nil); !errors.Is(err, sqlstore.ErrNotInTx) {
			t.Fatalf("ClaimManyTx on *sql.DB: %v, want ErrNotInTx", err)
		}
		inTx(t, ctx, db, func(tx *sql.Tx) {
			if c, err := s.ClaimManyTx(ctx, tx, nil); err != nil || len(c) != 0 {
				t.Fatalf("empty ClaimManyTx = %v, %v", c, err)
			}
			if e, err := s.CompleteManyTx(ctx, tx, nil); err != nil || len(e) != 0 {
				t.Fatalf("empty CompleteManyTx = %v, %v", e, err)
			}
			bad := []sqlstore.ClaimRequest{{Key: "a", Lease: lease, Retention: retention}, {Key: "b", Lease: lease, Retention: time.Second}}
			if _, err := s.ClaimManyTx(ctx, tx, bad); !errors.Is(err, dedupe.ErrInvalidLease) {
				t.Fatalf("ClaimManyTx with retention < lease: %v, want ErrInvalidLease", err)
			}
		})
		if _, err := s.Get(ctx, "a"); !errors.Is(err, sqlstore.ErrNotFound) {
			t.Fatalf("a refused batch claimed a key: %v", err)
		}
	})
}

// TestClaimManyTxWaitsForConcurrentBatch: a batch claiming keys another
// open batch claimed (in the other order) waits for it, then answers
// Duplicate from its committed records; neither deadlocks.
func TestClaimManyTxWaitsForConcurrentBatch(t *testing.T) {
	db := postgresDB(t)
	ctx := testCtx(t)
	s := newStore(t, db, nil)
	req := func(key string) sqlstore.ClaimRequest {
		return sqlstore.ClaimRequest{Key: key, Fingerprint: "fp", Lease: lease, Retention: retention}
	}
	tx1, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx1.Rollback() }()
	c1, err := s.ClaimManyTx(ctx, tx1, []sqlstore.ClaimRequest{req("a"), req("b"), req("c")})
	if err != nil {
		t.Fatal(err)
	}
	type answer struct {
		claims []dedupe.Claim
		err    error
	}
	second := make(chan answer, 1)
	go func() {
		tx2, err := db.BeginTx(ctx, nil)
		if err != nil {
			second <- answer{err: err}
			return
		}
		defer func() { _ = tx2.Rollback() }()
		c, err := s.ClaimManyTx(ctx, tx2, []sqlstore.ClaimRequest{req("c"), req("d"), req("a")})
		if err == nil {
			err = tx2.Commit()
		}
		second <- answer{c, err}
	}()
	var done []sqlstore.CompleteRequest
	for i, c := range c1 {
		if c.Status != dedupe.Acquired {
			t.Fatalf("first batch claim %d: %+v", i, c)
		}
		done = append(done, sqlstore.CompleteRequest{Key: string(rune('a' + i)), Token: c.Token, Result: dedupe.Result{Data: []byte("ok")}, Retention: retention})
	}
	errs, err := s.CompleteManyTx(ctx, tx1, done)
	if err != nil {
		t.Fatal(err)
	}
	for i, e := range errs {
		if e != nil {
			t.Fatalf("complete %d: %v", i, e)
		}
	}
	if err := tx1.Commit(); err != nil {
		t.Fatal(err)
	}
	a := <-second
	if a.err != nil {
		t.Fatalf("second batch: %v", a.err)
	}
	want := []dedupe.Status{dedupe.Duplicate, dedupe.Acquired, dedupe.Duplicate}
	for i, c := range a.claims {
		if c.Status != want[i] || (c.Status == dedupe.Duplicate && string(c.Result.Data) != "ok") {
			t.Fatalf("second batch claim %d: %+v, want %v", i, c, want[i])
		}
	}
}
