package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/redisstore"
	"github.com/idemq/idemq/dedupe/storetest"
	"github.com/idemq/idemq/integration/harness"
)

// TestConformanceRedisCluster runs the suite on a Redis Cluster of three
// masters and three replicas through a *redis.ClusterClient, batched,
// unbatched, and batched with WaitReplicas 1 (a WAIT per master after its
// completions). The prefix holds no hash tag, so the suite's keys spread
// over all masters and a batch's pipeline is split across nodes; keys with
// one hash tag share a slot, and then their completions share a script
// call. It also checks the store's hash slot against CLUSTER KEYSLOT.
func TestConformanceRedisCluster(t *testing.T) {
	c := harness.StartRedisCluster(t)
	cc := c.Client(t)
	ctx := context.Background()
	for i := range 200 {
		key := fmt.Sprintf("idemq:k%d", i*7919)
		if i%10 == 0 {
			key = fmt.Sprintf("idemq:{t%d}:k", i)
		}
		want, err := cc.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if got := redisstore.Slot(key); int64(got) != want {
			t.Fatalf("slot of %q: %d, CLUSTER KEYSLOT says %d", key, got, want)
		}
	}
	var n atomic.Int64
	for _, mode := range []struct {
		name     string
		maxBatch int
		wait     int
	}{{"batched", 0, 0}, {"unbatched", 1, 0}, {"wait", 0, 1}} {
		t.Run(mode.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T, now func() time.Time) dedupe.Store {
				prefix := fmt.Sprintf("idemq-test:cluster%d:", n.Add(1))
				return redisstore.New(cc, redisstore.Config{Prefix: prefix, Now: now, MaxBatch: mode.maxBatch, WaitReplicas: mode.wait})
			})
		})
	}
	t.Run("OneSlot", func(t *testing.T) {
		// Completions of keys that share a hash tag, queued together, in
		// one CompleteMany: one script call per slot.
		s := redisstore.New(cc, redisstore.Config{Prefix: "idemq-test:{slot}:", WaitReplicas: 1})
		var reqs []redisstore.CompleteRequest
		for i := range 50 {
			key := fmt.Sprint("k", i)
			cl, err := s.Claim(ctx, key, "fp", time.Minute, time.Hour)
			if err != nil || cl.Status != dedupe.Acquired {
				t.Fatalf("claim %s: %v %v", key, cl.Status, err)
			}
			reqs = append(reqs, redisstore.CompleteRequest{Key: key, Token: cl.Token, Result: dedupe.Result{Data: []byte(key)}, Retention: time.Hour})
		}
		reqs = append(reqs, redisstore.CompleteRequest{Key: "k0", Token: reqs[0].Token, Retention: time.Hour})
		errs, err := s.CompleteMany(ctx, reqs)
		if err != nil {
			t.Fatal(err)
		}
		for i, err := range errs[:50] {
			if err != nil {
				t.Errorf("complete %s: %v", reqs[i].Key, err)
			}
		}
		if !errors.Is(errs[50], dedupe.ErrLeaseLost) {
			t.Errorf("second completion of k0 in the same call: %v, want ErrLeaseLost", errs[50])
		}
		for _, r := range reqs[:50] {
			cl, err := s.Claim(ctx, r.Key, "fp", time.Minute, time.Hour)
			if err != nil || cl.Status != dedupe.Duplicate || string(cl.Result.Data) != r.Key {
				t.Errorf("claim %s after completion: %v %q %v", r.Key, cl.Status, cl.Result.Data, err)
			}
		}
	})
}
