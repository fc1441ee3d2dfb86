package natskv_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/natskv"
	"github.com/idemq/idemq/dedupe/storetest"
	"github.com/idemq/idemq/integration/harness"
)

func TestGetAndList(t *testing.T) {
	env := harness.EmbeddedNATS(t)
	ctx := context.Background()
	var clock storetest.Clock
	s, err := natskv.New(ctx, env.JS, natskv.Config{Bucket: env.Name("read"), Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.List(ctx, "", func(*dedupe.Record, string) error { return errors.New("called") }); err != nil {
		t.Fatalf("List of an empty bucket: %v", err)
	}
	if _, err := s.Get(ctx, "absent"); !errors.Is(err, natskv.ErrNotFound) {
		t.Fatalf("Get of an absent key: %v, want ErrNotFound", err)
	}
	var want []string
	for i := range 30 {
		key := fmt.Sprintf("api:k%02d", i)
		c, err := s.Claim(ctx, key, "fp", time.Minute, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if i%3 == 0 {
			if err := s.Complete(ctx, key, c.Token, dedupe.Result{Data: []byte("r")}, time.Hour); err != nil {
				t.Fatal(err)
			}
		}
		want = append(want, key)
	}
	long := strings.Repeat("x", natskv.MaxInlineKey+1)
	big := bytes.Repeat([]byte("b"), 3<<20) // stored in chunks
	for _, key := range []string{"worker:1", long, "big"} {
		c, err := s.Claim(ctx, key, "fp", time.Minute, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if key == "big" {
			if err := s.Complete(ctx, key, c.Token, dedupe.Result{Data: big}, time.Hour); err != nil {
				t.Fatal(err)
			}
		}
	}
	if _, err := s.Claim(ctx, "api:short", "fp", time.Second, time.Second); err != nil {
		t.Fatal(err)
	}
	clock.Advance(2 * time.Second)

	r, err := s.Get(ctx, "api:k03")
	if err != nil || r.Key != "api:k03" || r.State != dedupe.StateDone || string(r.Result) != "r" || r.Fence == 0 {
		t.Fatalf("Get: %+v, %v; want the done record with its result and a fence", r, err)
	}
	if r, err := s.Get(ctx, "big"); err != nil || !bytes.Equal(r.Result, big) {
		t.Fatalf("Get of a chunked result: %v; want the %d bytes back", err, len(big))
	}
	if _, err := s.Get(ctx, "api:short"); !errors.Is(err, natskv.ErrNotFound) {
		t.Fatalf("Get after retention: %v, want ErrNotFound", err)
	}
	var got []string
	if err := s.List(ctx, "api:", func(r *dedupe.Record, hashed string) error {
		if hashed != "" {
			t.Errorf("List(api:) passed the hashed key %q", hashed)
		}
		got = append(got, r.Key)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("List(api:) = %q, want the %d live records of namespace api", got, len(want))
	}
	var all, hashed int
	if err := s.List(ctx, "", func(r *dedupe.Record, h string) error {
		all++
		if h != "" {
			hashed++
			if h != s.KVKey(long) || r.Key != "" {
				t.Errorf("hashed record: key %q, KV key %q; want no key and %q", r.Key, h, s.KVKey(long))
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if all != len(want)+3 || hashed != 1 {
		t.Fatalf("List(\"\") visited %d records (%d hashed), want %d (1 hashed)", all, hashed, len(want)+3)
	}
	stop := errors.New("stop")
	if err := s.List(ctx, "", func(*dedupe.Record, string) error { return stop }); !errors.Is(err, stop) {
		t.Fatalf("List with a failing fn: %v, want stop", err)
	}
}
