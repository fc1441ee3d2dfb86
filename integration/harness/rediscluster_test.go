package harness

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestRedisCluster(t *testing.T) {
	t.Parallel()
	start := time.Now()
	c := StartRedisCluster(t)
	t.Logf("cluster up after %s", time.Since(start))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	nodes, err := c.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	masters := map[string]RedisNode{}
	for _, n := range nodes {
		if n.Master {
			masters[n.ID] = n
		}
	}
	if len(masters) != RedisClusterMasters {
		t.Fatalf("%d masters, want %d: %+v", len(masters), RedisClusterMasters, nodes)
	}
	slots := 0
	replicaOf := map[string]RedisNode{} // master ID -> its replica
	for _, n := range nodes {
		for _, r := range n.Slots {
			slots += r[1] - r[0] + 1
		}
		if !n.Master {
			if _, ok := masters[n.MasterID]; !ok {
				t.Fatalf("replica %s follows %q, not a master", n.Addr, n.MasterID)
			}
			replicaOf[n.MasterID] = n
		}
	}
	if slots != 16384 || len(replicaOf) != RedisClusterMasters {
		t.Fatalf("%d slots served, %d masters with a replica; want 16384 and %d", slots, len(replicaOf), RedisClusterMasters)
	}

	cc := c.Client(t)
	// Write keys on every master, each master's keys through one
	// connection that then waits for one replica to acknowledge them.
	const n = 60
	conns := map[string]*redis.Conn{}
	keyMasters := map[string]bool{}
	for i := range n {
		key := fmt.Sprintf("k%d", i)
		mc, err := cc.MasterForKey(ctx, key)
		if err != nil {
			t.Fatalf("master for %s: %v", key, err)
		}
		addr := mc.Options().Addr
		conn, ok := conns[addr]
		if !ok {
			conn = mc.Conn()
			defer conn.Close()
			conns[addr] = conn
		}
		if err := conn.Set(ctx, key, fmt.Sprint("v", i), 0).Err(); err != nil {
			t.Fatalf("set %s on %s: %v", key, addr, err)
		}
		keyMasters[addr] = true
	}
	if len(keyMasters) != RedisClusterMasters {
		t.Fatalf("keys landed on %d masters, want %d", len(keyMasters), RedisClusterMasters)
	}
	for addr, conn := range conns {
		acked, err := conn.Do(ctx, "WAIT", 1, 5000).Int()
		if err != nil || acked < 1 {
			t.Fatalf("WAIT 1 5000 on %s: %d replicas, err %v; want 1", addr, acked, err)
		}
	}

	killed, promoted, err := c.KillMaster(ctx, "k0")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after %s: killed master %d (%s), promoted %d (%s)", time.Since(start), killed.Index, killed.Addr, promoted.Index, promoted.Addr)
	if c.Running(killed.Index) {
		t.Fatalf("node %d still running after KillMaster", killed.Index)
	}
	if want := replicaOf[killed.ID]; promoted.ID != want.ID {
		t.Errorf("promoted %s, want the killed master's replica %s", promoted.Addr, want.Addr)
	}
	slot, err := c.Slot(ctx, "k0")
	if err != nil {
		t.Fatal(err)
	}
	if m, ok := masterOf(mustNodes(ctx, t, c), slot); !ok || m.ID != promoted.ID {
		t.Errorf("slot %d served by %+v, want %s", slot, m, promoted.Addr)
	}

	// Every acknowledged key survives; the client finds the new master.
	if err := retry(ctx, "read k0 after failover", func(ctx context.Context) error {
		return cc.Get(ctx, "k0").Err()
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("after %s: k0 read", time.Since(start))
	for i := range n {
		key := fmt.Sprintf("k%d", i)
		if got, err := cc.Get(ctx, key).Result(); err != nil || got != fmt.Sprint("v", i) {
			t.Errorf("get %s after failover: %q, %v; want v%d", key, got, err, i)
		}
	}
	if err := cc.Set(ctx, "k0", "new", 0).Err(); err != nil {
		t.Errorf("write to the promoted master: %v", err)
	}

	t.Logf("after %s: keys checked", time.Since(start))
	if err := c.Restart(ctx, killed.Index); err != nil {
		t.Fatal(err)
	}
	t.Logf("after %s: restarted", time.Since(start))
	for _, nd := range mustNodes(ctx, t, c) {
		if nd.Index == killed.Index && (nd.Master || nd.MasterID != promoted.ID) {
			t.Errorf("restarted node: master=%v following %q; want a replica of %s", nd.Master, nd.MasterID, promoted.ID)
		}
	}
	if got, err := cc.Get(ctx, "k0").Result(); err != nil || got != "new" {
		t.Errorf("get k0 after restart: %q, %v; want new", got, err)
	}
}

func mustNodes(ctx context.Context, t *testing.T, c *RedisCluster) []RedisNode {
	t.Helper()
	nodes, err := c.Nodes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return nodes
}
