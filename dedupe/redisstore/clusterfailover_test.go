package redisstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/redisstore"
	"github.com/idemq/idemq/dedupe/storetest"
	"github.com/idemq/idemq/integration/harness"
)

// TestClusterFailover completes records on every master, waits until the
// replicas have them, kills a master and checks that the records on its
// slots are still duplicates, and that leases live on, through the
// promoted replica.
func TestClusterFailover(t *testing.T) {
	c := harness.StartRedisCluster(t)
	cc := c.Client(t)
	var clock storetest.Clock
	s := redisstore.New(cc, redisstore.Config{Prefix: "idemq-test:failover:", Now: clock.Now})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	const n = 30
	for i := range n {
		key := fmt.Sprint("done-", i)
		cl, err := s.Claim(ctx, key, "fp", time.Minute, time.Hour)
		if err != nil || cl.Status != dedupe.Acquired {
			t.Fatalf("claim %s: %v %v", key, cl.Status, err)
		}
		if err := s.Complete(ctx, key, cl.Token, dedupe.Result{Data: []byte(key)}, time.Hour); err != nil {
			t.Fatalf("complete %s: %v", key, err)
		}
	}
	held, err := s.Claim(ctx, "held", "fp", time.Minute, time.Hour)
	if err != nil || held.Status != dedupe.Acquired {
		t.Fatalf("claim held: %v %v", held.Status, err)
	}
	if err := c.WaitReplicated(ctx); err != nil {
		t.Fatal(err)
	}
	killed, promoted, err := c.KillMaster(ctx, s.Key("held"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("killed master %s, promoted %s", killed.Addr, promoted.Addr)

	for i := range n {
		key := fmt.Sprint("done-", i)
		var cl dedupe.Claim
		err := retryFor(ctx, func(ctx context.Context) (err error) {
			cl, err = s.Claim(ctx, key, "fp", time.Minute, time.Hour)
			return err
		})
		if err != nil || cl.Status != dedupe.Duplicate || string(cl.Result.Data) != key {
			t.Errorf("claim %s after failover: %s %q %v; want duplicate %q", key, cl.Status, cl.Result.Data, err, key)
		}
	}
	var cl dedupe.Claim
	if err := retryFor(ctx, func(ctx context.Context) (err error) {
		cl, err = s.Claim(ctx, "held", "fp", time.Minute, time.Hour)
		return err
	}); err != nil || cl.Status != dedupe.Busy {
		t.Errorf("claim of a held key after failover: %s %v; want busy", cl.Status, err)
	}
	if err := s.Complete(ctx, "held", held.Token, dedupe.Result{}, time.Hour); err != nil {
		t.Errorf("complete with the lease taken before the failover: %v", err)
	}
}

// retryFor retries fn every 100ms for up to 10s while the client finds
// the promoted master.
func retryFor(ctx context.Context, fn func(ctx context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for {
		err := fn(ctx)
		if err == nil || ctx.Err() != nil {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}
