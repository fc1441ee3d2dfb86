package sqlstore_test

import (
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/dedupe/storetest"
)

func TestScan(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB) {
		ctx := testCtx(t)
		var clock storetest.Clock
		s := newStore(t, db, clock.Now)
		n := sqlstore.ScanPage*2 + 7 // three pages
		var want []string
		for i := range n {
			key := fmt.Sprintf("api:k%04d", i)
			c, err := s.Claim(ctx, key, "fp", time.Minute, time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			if i%2 == 0 {
				if err := s.Complete(ctx, key, c.Token, dedupe.Result{Data: []byte("r")}, time.Hour); err != nil {
					t.Fatal(err)
				}
			}
			want = append(want, key)
		}
		for _, key := range []string{"apj", "api", "worker:1", "\xff\xff", "api\xff"} {
			if _, err := s.Claim(ctx, key, "fp", time.Minute, time.Hour); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := s.Claim(ctx, "api:short", "fp", time.Second, time.Second); err != nil {
			t.Fatal(err)
		}
		clock.Advance(2 * time.Second)
		var got []string
		if err := s.Scan(ctx, "api:", func(r *dedupe.Record) error {
			got = append(got, r.Key)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("Scan(api:) visited %d keys, want the %d live records in key order", len(got), len(want))
		}
		all := 0
		if err := s.Scan(ctx, "", func(*dedupe.Record) error { all++; return nil }); err != nil || all != n+5 {
			t.Fatalf("Scan(\"\") visited %d records (%v), want %d", all, err, n+5)
		}
		got = nil
		if err := s.Scan(ctx, "\xff", func(r *dedupe.Record) error { got = append(got, r.Key); return nil }); err != nil || !slices.Equal(got, []string{"\xff\xff"}) {
			t.Fatalf("Scan(\\xff) = %q, %v", got, err)
		}
		stop := errors.New("stop")
		if err := s.Scan(ctx, "", func(*dedupe.Record) error { return stop }); !errors.Is(err, stop) {
			t.Fatalf("Scan with a failing fn: %v, want stop", err)
		}
	})
}
