package redisstore_test

import (
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
// masters and three replicas through a *redis.ClusterClient, batched and
// unbatched. The prefix holds no hash tag, so the suite's keys spread over
// all masters and a batch's pipeline is split across nodes.
func TestConformanceRedisCluster(t *testing.T) {
	c := harness.StartRedisCluster(t)
	cc := c.Client(t)
	var n atomic.Int64
	for _, mode := range []struct {
		name     string
		maxBatch int
	}{{"batched", 0}, {"unbatched", 1}} {
		t.Run(mode.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T, now func() time.Time) dedupe.Store {
				prefix := fmt.Sprintf("idemq-test:cluster%d:", n.Add(1))
				return redisstore.New(cc, redisstore.Config{Prefix: prefix, Now: now, MaxBatch: mode.maxBatch})
			})
		})
	}
}
