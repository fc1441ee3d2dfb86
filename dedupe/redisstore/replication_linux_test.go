//go:build linux

package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/redisstore"
	"github.com/idemq/idemq/dedupe/storetest"
)

// startPair starts a master and a replica of it (replicaof), and waits
// until the replica is in sync.
func startPair(t *testing.T) (master, replica *redisServer) {
	t.Helper()
	master = startRedisServer(t)
	host, port, _ := strings.Cut(master.Addr, ":")
	replica = startRedisServer(t, "--replicaof", host, port)
	waitInSync(t, replica)
	return master, replica
}

// waitInSync polls (every 20ms, up to 20s) until replica reports its link
// to the master up.
func waitInSync(t *testing.T, replica *redisServer) {
	t.Helper()
	c := replica.client(nil)
	defer c.Close()
	deadline := time.Now().Add(20 * time.Second)
	for {
		info, err := c.Info(context.Background(), "replication").Result()
		if err == nil && strings.Contains(info, "master_link_status:up") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("replica %s not in sync: %v\n%s", replica.Addr, err, info)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// pipelines records the command names of every pipeline a client sends.
type pipelines struct {
	mu    sync.Mutex
	names [][]string
}

func (p *pipelines) DialHook(next redis.DialHook) redis.DialHook          { return next }
func (p *pipelines) ProcessHook(next redis.ProcessHook) redis.ProcessHook { return next }
func (p *pipelines) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 && !handshake(cmds[0]) {
			names := make([]string, len(cmds))
			for i, c := range cmds {
				names[i] = c.Name()
			}
			p.mu.Lock()
			p.names = append(p.names, names)
			p.mu.Unlock()
		}
		return next(ctx, cmds)
	}
}

// TestWaitReplicas checks Config.WaitReplicas on a master and replica of
// the test's own: a completion returns once the replica has the record,
// one WAIT follows a batch's completions, and with the replica stopped
// (SIGSTOP) completions fail with ErrNotReplicated after WaitTimeout while
// claims and lease-lost answers are unaffected.
func TestWaitReplicas(t *testing.T) {
	master, replica := startPair(t)
	mc := master.client(&redis.Options{ReadTimeout: 5 * time.Second})
	defer mc.Close()
	rc := replica.client(nil)
	defer rc.Close()
	rec := &pipelines{}
	mc.AddHook(rec)
	var clock storetest.Clock
	// s waits long enough for a replica that answers, also on a loaded
	// machine under -race; short is the same store with a short
	// WaitTimeout, for the completions that must time out.
	s := redisstore.New(mc, redisstore.Config{Prefix: "w:", Now: clock.Now, WaitReplicas: 1, WaitTimeout: 5 * time.Second})
	short := redisstore.New(mc, redisstore.Config{Prefix: "w:", Now: clock.Now, WaitReplicas: 1, WaitTimeout: 200 * time.Millisecond})
	ctx := context.Background()
	waitInSync(t, replica)
	claim := func(key string) dedupe.Claim {
		t.Helper()
		c, err := s.Claim(ctx, key, "fp", time.Minute, time.Hour)
		if err != nil || c.Status != dedupe.Acquired {
			t.Fatalf("claim %s: %v %v", key, c.Status, err)
		}
		return c
	}
	onReplica := func(key string) string {
		t.Helper()
		v, err := rc.Get(ctx, s.Key(key)).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			t.Fatal(err)
		}
		return v
	}

	t.Run("Acknowledged", func(t *testing.T) {
		c := claim("a")
		if err := s.Complete(ctx, "a", c.Token, dedupe.Result{Data: []byte("ra")}, time.Hour); err != nil {
			t.Fatalf("Complete: %v", err)
		}
		// WAIT answered only once the replica had applied the write.
		if v := onReplica("a"); !strings.HasPrefix(v, "D") || !strings.HasSuffix(v, "ra") {
			t.Fatalf("record on the replica right after Complete: %q, want the completed record", v)
		}

		// Completions queued together go as one script call and one WAIT.
		const n = 20
		tokens := make([]string, n)
		for i := range tokens {
			tokens[i] = claim(fmt.Sprint("b", i)).Token
		}
		rec.mu.Lock()
		rec.names = nil
		rec.mu.Unlock()
		reqs := make([]redisstore.CompleteRequest, n)
		for i := range reqs {
			reqs[i] = redisstore.CompleteRequest{Key: fmt.Sprint("b", i), Token: tokens[i], Result: dedupe.Result{Data: []byte("rb")}, Retention: time.Hour}
		}
		errs, err := s.CompleteMany(ctx, reqs)
		if err != nil {
			t.Fatal(err)
		}
		for i, err := range errs {
			if err != nil {
				t.Errorf("CompleteMany item %d: %v", i, err)
			}
			if v := onReplica(reqs[i].Key); !strings.HasPrefix(v, "D") {
				t.Errorf("record %s on the replica: %q, want completed", reqs[i].Key, v)
			}
		}
		rec.mu.Lock()
		got := fmt.Sprint(rec.names)
		rec.mu.Unlock()
		if got != "[[evalsha wait]]" {
			t.Errorf("pipelines of a CompleteMany of %d: %s, want one script call and one WAIT", n, got)
		}
	})

	t.Run("ReplicaStopped", func(t *testing.T) {
		c := claim("c")
		d := claim("d")
		if err := replica.signal(syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		stopped := true
		defer func() {
			if stopped {
				_ = replica.signal(syscall.SIGCONT)
			}
		}()
		// Claims do not wait for replicas.
		e := claim("e")
		err := short.Complete(ctx, "c", c.Token, dedupe.Result{Data: []byte("rc")}, time.Hour)
		if !errors.Is(err, redisstore.ErrNotReplicated) {
			t.Fatalf("Complete with the replica stopped: %v, want ErrNotReplicated", err)
		}
		if errors.Is(err, dedupe.ErrLeaseLost) || dedupe.IsInvalidInput(err) {
			t.Errorf("ErrNotReplicated must be a store error, not an answer: %v", err)
		}
		t.Logf("error: %v", err)
		// The master took the write: the key is a duplicate there.
		if got, err := s.Claim(ctx, "c", "fp", time.Minute, time.Hour); err != nil || got.Status != dedupe.Duplicate || string(got.Result.Data) != "rc" {
			t.Errorf("claim after the unreplicated completion: %v %q %v, want duplicate", got.Status, got.Result.Data, err)
		}
		// A stale token is still answered as a lost lease: nothing was written.
		if err := short.Complete(ctx, "d", "stale", dedupe.Result{}, time.Hour); !errors.Is(err, dedupe.ErrLeaseLost) {
			t.Errorf("Complete with a stale token: %v, want ErrLeaseLost", err)
		}
		// Concurrent completions share the WAIT and all fail with it.
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, cl := range []struct {
			key string
			c   dedupe.Claim
		}{{"d", d}, {"e", e}} {
			wg.Go(func() { errs[i] = short.Complete(ctx, cl.key, cl.c.Token, dedupe.Result{}, time.Hour) })
		}
		wg.Wait()
		for i, err := range errs {
			if !errors.Is(err, redisstore.ErrNotReplicated) {
				t.Errorf("concurrent Complete %d: %v, want ErrNotReplicated", i, err)
			}
		}

		if err := replica.signal(syscall.SIGCONT); err != nil {
			t.Fatal(err)
		}
		stopped = false
		waitInSync(t, replica)
		f := claim("f")
		if err := s.Complete(ctx, "f", f.Token, dedupe.Result{Data: []byte("rf")}, time.Hour); err != nil {
			t.Fatalf("Complete after the replica resumed: %v", err)
		}
		if v := onReplica("f"); !strings.HasPrefix(v, "D") || !strings.HasSuffix(v, "rf") {
			t.Errorf("record on the replica: %q, want the completed record", v)
		}
	})

	t.Run("Conformance", func(t *testing.T) {
		var n int
		storetest.Run(t, func(t *testing.T, now func() time.Time) dedupe.Store {
			n++
			return redisstore.New(mc, redisstore.Config{Prefix: fmt.Sprintf("conf%d:", n), Now: now, WaitReplicas: 1})
		})
	})
}

// wrapped is a UniversalClient of a type the store does not know.
type wrapped struct{ *redis.Client }

// TestWaitReplicasUnknownClient checks that WaitReplicas with a client
// whose nodes the store cannot address fails Complete instead of sending
// WAIT to a node that may not have taken the write.
func TestWaitReplicasUnknownClient(t *testing.T) {
	srv := startRedisServer(t)
	c := srv.client(nil)
	defer c.Close()
	s := redisstore.New(wrapped{c}, redisstore.Config{WaitReplicas: 1})
	ctx := context.Background()
	cl, err := s.Claim(ctx, "k", "fp", time.Minute, time.Hour)
	if err != nil || cl.Status != dedupe.Acquired {
		t.Fatalf("claim: %v %v", cl.Status, err)
	}
	err = s.Complete(ctx, "k", cl.Token, dedupe.Result{}, time.Hour)
	if err == nil || errors.Is(err, dedupe.ErrLeaseLost) || !strings.Contains(err.Error(), "WaitReplicas") {
		t.Fatalf("Complete: %v, want an error naming WaitReplicas", err)
	}
	// Nothing was sent: the lease is still held.
	if err := s.Release(ctx, "k", cl.Token); err != nil {
		t.Fatalf("Release after the refused Complete: %v", err)
	}
}
