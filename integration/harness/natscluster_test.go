package harness

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestNATSCluster(t *testing.T) {
	t.Parallel()
	exerciseNATSCluster(t, StartNATSCluster(t))
}

func TestEmbeddedNATSCluster(t *testing.T) {
	t.Parallel()
	exerciseNATSCluster(t, StartEmbeddedNATSCluster(t))
}

// retry calls fn every 100ms until it succeeds or ctx is done; requests
// fail while a stream elects a leader or the client reconnects.
func retry(ctx context.Context, what string, fn func(ctx context.Context) error) error {
	var last error
	for {
		attempt, cancel := context.WithTimeout(ctx, 2*time.Second)
		last = fn(attempt)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last: %v)", what, ctx.Err(), last)
		case <-time.After(pollInterval):
		}
	}
}

// exerciseNATSCluster creates an R3 stream and an R3 KV bucket, kills the
// stream's leader, checks that a new leader takes over and that publishes
// and KV writes succeed again, restarts the node and waits until all
// replicas are current again.
func exerciseNATSCluster(t *testing.T, c *NATSCluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if got := len(strings.Split(c.URLs(), ",")); got != NATSClusterSize {
		t.Fatalf("URLs() = %q: %d URLs, want %d", c.URLs(), got, NATSClusterSize)
	}
	env := c.Env(t)
	t.Logf("cluster %s, server %s, urls %s", c.Name, env.Conn.ConnectedServerVersion(), c.URLs())

	name := env.Name("ORDERS")
	var s jetstream.Stream
	if err := retry(ctx, "create R3 stream", func(ctx context.Context) (err error) {
		s, err = env.JS.CreateStream(ctx, jetstream.StreamConfig{
			Name: name, Subjects: []string{env.Subject("orders.>")}, Replicas: 3,
		})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if r := s.CachedInfo().Config.Replicas; r != 3 {
		t.Fatalf("stream replicas = %d, want 3", r)
	}
	kv, err := env.JS.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: env.Name("seen"), Replicas: 3})
	if err != nil {
		t.Fatalf("create R3 kv bucket: %v", err)
	}
	if err := WaitKVServed(ctx, env.JS, kv.Bucket()); err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "before", []byte("1")); err != nil {
		t.Fatalf("kv put: %v", err)
	}
	const before = 5
	for i := range before {
		if _, err := env.JS.Publish(ctx, env.Subject("orders.new"), fmt.Appendf(nil, "m%d", i)); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	for _, st := range []string{name, KVStream(kv.Bucket())} {
		if err := c.WaitStreamCurrent(ctx, env.JS, st); err != nil {
			t.Fatal(err)
		}
	}

	old, err := c.KillStreamLeader(ctx, env.JS, name)
	if err != nil {
		t.Fatal(err)
	}
	if c.Running(old) {
		t.Fatalf("node %s still running after Kill", c.NodeName(old))
	}
	t.Logf("killed stream leader %s", c.NodeName(old))
	leader, err := c.WaitStreamLeader(ctx, env.JS, name, old)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("new stream leader %s", c.NodeName(leader))
	if err := retry(ctx, "publish after failover", func(ctx context.Context) error {
		_, err := env.JS.Publish(ctx, env.Subject("orders.new"), []byte("after"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := retry(ctx, "kv put after failover", func(ctx context.Context) error {
		_, err := kv.Put(ctx, "after", []byte("2"))
		return err
	}); err != nil {
		t.Fatal(err)
	}

	if err := c.Restart(ctx, old); err != nil {
		t.Fatal(err)
	}
	if !c.Running(old) {
		t.Fatalf("node %s not running after Restart", c.NodeName(old))
	}
	for _, st := range []string{name, KVStream(kv.Bucket())} {
		if err := c.WaitStreamCurrent(ctx, env.JS, st); err != nil {
			t.Fatal(err)
		}
	}
	info, err := streamInfo(ctx, env.JS, name)
	if err != nil {
		t.Fatal(err)
	}
	peers := []string{info.Cluster.Leader}
	for _, r := range info.Cluster.Replicas {
		peers = append(peers, r.Name)
	}
	slices.Sort(peers)
	want := []string{c.NodeName(0), c.NodeName(1), c.NodeName(2)}
	if !slices.Equal(peers, want) {
		t.Errorf("stream peers after restart = %v, want %v", peers, want)
	}
	if n := info.State.Msgs; n != before+1 {
		t.Errorf("stream holds %d messages, want %d", n, before+1)
	}
	// The restarted node serves the stream's data it missed.
	for _, k := range []string{"before", "after"} {
		if e, err := kv.Get(ctx, k); err != nil {
			t.Errorf("kv get %s: %v", k, err)
		} else if e.Revision() == 0 {
			t.Errorf("kv get %s: revision 0", k)
		}
	}
}
