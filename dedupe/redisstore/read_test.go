package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/redisstore"
	"github.com/idemq/idemq/dedupe/storetest"
	"github.com/idemq/idemq/integration/harness"
)

func TestGetAndScan(t *testing.T) {
	env := harness.Redis(t)
	var clock storetest.Clock
	s := redisstore.New(env.Client, redisstore.Config{Prefix: env.Prefix, Now: clock.Now})
	ctx := context.Background()
	if _, err := s.Get(ctx, "absent"); !errors.Is(err, redisstore.ErrNotFound) {
		t.Fatalf("Get of an absent key: %v, want ErrNotFound", err)
	}
	// 1,234 records of namespace "api" (more than one SCAN page), some done,
	// a few of namespace "worker", keys with glob characters, one record
	// whose retention ran out and one foreign value under the prefix.
	const n = 1234
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
	for _, key := range []string{"worker:1", "worker:2", "glob*?[x]\\:1"} {
		if _, err := s.Claim(ctx, key, "fp", time.Minute, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Claim(ctx, "api:short", "fp", time.Second, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Set(ctx, env.Prefix+"api:foreign", "not a record", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Second) // api:short's retention is over

	r, err := s.Get(ctx, "api:k0002")
	if err != nil || r.Key != "api:k0002" || r.State != dedupe.StateDone || string(r.Result) != "r" || r.Attempts != 1 || r.Fence == 0 {
		t.Fatalf("Get: %+v, %v; want the done record with its result, attempt 1 and a fence", r, err)
	}
	if _, err := s.Get(ctx, "api:short"); !errors.Is(err, redisstore.ErrNotFound) {
		t.Fatalf("Get after retention: %v, want ErrNotFound", err)
	}
	if _, err := s.Get(ctx, "api:foreign"); err == nil || errors.Is(err, redisstore.ErrNotFound) {
		t.Fatalf("Get of a foreign value: %v, want a malformed-record error", err)
	}

	var got []string
	done := 0
	if err := s.Scan(ctx, "api:", func(r *dedupe.Record) error {
		got = append(got, r.Key)
		if r.State == dedupe.StateDone {
			done++
		}
		return nil
	}); err != nil {
		t.Fatalf("Scan: %v", err)
	}
	slices.Sort(got)
	got = slices.Compact(got) // SCAN may return a key twice
	if !slices.Equal(got, want) {
		t.Fatalf("Scan(api:) visited %d keys, want the %d live records of namespace api (first %v)", len(got), len(want), got[:min(3, len(got))])
	}
	if done < n/2 {
		t.Errorf("Scan saw %d done records, want %d", done, n/2)
	}
	// A prefix with glob characters matches literally.
	got = nil
	if err := s.Scan(ctx, "glob*?[x]\\", func(r *dedupe.Record) error { got = append(got, r.Key); return nil }); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []string{"glob*?[x]\\:1"}) {
		t.Fatalf("Scan of a prefix with glob characters: %q", got)
	}
	// fn's error stops the scan and is returned.
	stop := errors.New("stop")
	calls := 0
	if err := s.Scan(ctx, "", func(*dedupe.Record) error { calls++; return stop }); !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("Scan with a failing fn: %v after %d calls, want stop after 1", err, calls)
	}
}
