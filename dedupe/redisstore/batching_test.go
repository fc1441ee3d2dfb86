package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/redisstore"
	"github.com/idemq/idemq/dedupe/storetest"
	"github.com/idemq/idemq/integration/harness"
)

// gate is a client hook that counts round trips (as roundTrips does) and,
// once armed, holds the next round trip until released, so that a test can
// let calls queue up behind a pipeline in flight. It also records the size
// of every pipeline.
type gate struct {
	roundTrips
	armed   atomic.Bool
	held    chan struct{} // closed when a round trip is being held
	release chan struct{}
	mu      sync.Mutex
	sizes   []int
}

func newGate() *gate {
	return &gate{held: make(chan struct{}), release: make(chan struct{})}
}

func (g *gate) hold() {
	if g.armed.CompareAndSwap(true, false) {
		close(g.held)
		<-g.release
	}
}

func (g *gate) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	counted := g.roundTrips.ProcessHook(next)
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !handshake(cmd) {
			g.hold()
			g.record(1)
		}
		return counted(ctx, cmd)
	}
}

func (g *gate) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	counted := g.roundTrips.ProcessPipelineHook(next)
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 && !handshake(cmds[0]) {
			g.hold()
			g.record(len(cmds))
		}
		return counted(ctx, cmds)
	}
}

func (g *gate) record(n int) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.sizes = append(g.sizes, n)
}

// waitQueued waits until n calls wait for a pipeline. It polls: the store
// offers no notification, and the test asserts nothing about time.
func waitQueued(t *testing.T, s *redisstore.Store, n int) {
	t.Helper()
	for s.Queued() < n {
		time.Sleep(time.Millisecond)
	}
}

// warm loads every script on the server, so that no NOSCRIPT round trip
// is counted later.
func warm(t *testing.T, s *redisstore.Store) {
	t.Helper()
	ctx := context.Background()
	c, err := s.Claim(ctx, "warm", "", time.Second, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Extend(ctx, "warm", c.Token, time.Second); err != nil {
		t.Fatal(err)
	}
	if err := s.Release(ctx, "warm", c.Token); err != nil {
		t.Fatal(err)
	}
	c, err = s.Claim(ctx, "warm", "", time.Second, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Complete(ctx, "warm", c.Token, dedupe.Result{}, time.Minute); err != nil {
		t.Fatal(err)
	}
}

// TestBatchingCoalescesConcurrentCalls holds one claim's round trip while
// N other claims queue, then checks that the N went out in
// ceil(N/MaxBatch) pipelines of at most MaxBatch commands.
func TestBatchingCoalescesConcurrentCalls(t *testing.T) {
	const n = 100
	for _, maxBatch := range []int{0, 10} {
		t.Run(fmt.Sprint("MaxBatch=", maxBatch), func(t *testing.T) {
			env := harness.Redis(t)
			g := newGate()
			env.Client.AddHook(g)
			var clock storetest.Clock
			s := redisstore.New(env.Client, redisstore.Config{Prefix: env.Prefix, Now: clock.Now, MaxBatch: maxBatch})
			warm(t, s)
			limit := maxBatch
			if limit == 0 {
				limit = redisstore.DefaultMaxBatch
			}
			ctx := context.Background()
			before := g.n.Load()
			g.sizes = nil
			g.armed.Store(true)

			var wg sync.WaitGroup
			claims := make([]dedupe.Claim, n+1)
			errs := make([]error, n+1)
			wg.Add(1)
			go func() {
				defer wg.Done()
				claims[n], errs[n] = s.Claim(ctx, "leader", "fp", time.Minute, time.Hour)
			}()
			<-g.held
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					claims[i], errs[i] = s.Claim(ctx, fmt.Sprint("k", i), "fp", time.Minute, time.Hour)
				}()
			}
			waitQueued(t, s, n)
			close(g.release)
			wg.Wait()

			for i := range claims {
				if errs[i] != nil || claims[i].Status != dedupe.Acquired {
					t.Fatalf("claim %d: %v %v, want acquired", i, claims[i].Status, errs[i])
				}
			}
			want := 1 + (n+limit-1)/limit
			if got := g.n.Load() - before; got != int64(want) {
				t.Errorf("%d concurrent claims took %d round trips, want %d", n+1, got, want)
			}
			for _, size := range g.sizes {
				if size > limit {
					t.Errorf("a pipeline carried %d commands, more than MaxBatch %d", size, limit)
				}
			}
		})
	}
}

// TestBatchingCancelledCallers checks that a caller whose context ends
// while its call is queued returns ctx.Err() at once and that its call is
// never sent, and that the calls queued with it still complete.
func TestBatchingCancelledCallers(t *testing.T) {
	env := harness.Redis(t)
	g := newGate()
	env.Client.AddHook(g)
	var clock storetest.Clock
	s := redisstore.New(env.Client, redisstore.Config{Prefix: env.Prefix, Now: clock.Now})
	warm(t, s)
	ctx := context.Background()
	g.armed.Store(true)

	type answer struct {
		c   dedupe.Claim
		err error
	}
	claim := func(ctx context.Context, key string) chan answer {
		ch := make(chan answer, 1)
		go func() {
			c, err := s.Claim(ctx, key, "fp", time.Minute, time.Hour)
			ch <- answer{c, err}
		}()
		return ch
	}
	a := claim(ctx, "a")
	<-g.held
	bctx, cancelB := context.WithCancel(ctx)
	b := claim(bctx, "b")
	waitQueued(t, s, 1)
	c := claim(ctx, "c")
	waitQueued(t, s, 2)
	cancelB()
	if got := <-b; !errors.Is(got.err, context.Canceled) {
		t.Fatalf("cancelled queued claim: %v %v, want context.Canceled", got.c.Status, got.err)
	}
	if q := s.Queued(); q != 1 {
		t.Errorf("%d calls queued after one of two gave up, want 1", q)
	}
	close(g.release)
	for name, ch := range map[string]chan answer{"a": a, "c": c} {
		if got := <-ch; got.err != nil || got.c.Status != dedupe.Acquired {
			t.Errorf("claim %s: %v %v, want acquired", name, got.c.Status, got.err)
		}
	}
	// b was withdrawn before it was sent: the key is free.
	if got, err := s.Claim(ctx, "b", "fp", time.Minute, time.Hour); err != nil || got.Status != dedupe.Acquired {
		t.Errorf("claim b after its cancelled claim: %v %v, want acquired", got.Status, err)
	}
}

// TestBatchingCancellationStorm cancels many queued callers around the
// moment the pipeline ahead of them returns, so that leadership is handed
// to callers that are giving up; the store must keep serving (no call
// hangs) and the state machine must stay consistent: every key is either
// acquired by its later claim or busy under a claim that was sent before
// its caller gave up.
func TestBatchingCancellationStorm(t *testing.T) {
	env := harness.Redis(t)
	var clock storetest.Clock
	s := redisstore.New(env.Client, redisstore.Config{Prefix: env.Prefix, Now: clock.Now, MaxBatch: 4})
	ctx := context.Background()
	for round := range 20 {
		cctx, cancel := context.WithCancel(ctx)
		var wg sync.WaitGroup
		for i := range 32 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c := cctx
				if i%4 == 0 {
					c = ctx
				}
				_, err := s.Claim(c, fmt.Sprintf("r%d-k%d", round, i), "fp", time.Minute, time.Hour)
				if err != nil && !errors.Is(err, context.Canceled) {
					t.Errorf("claim: %v", err)
				}
			}()
		}
		cancel()
		wg.Wait()
		for i := range 32 {
			c, err := s.Claim(ctx, fmt.Sprintf("r%d-k%d", round, i), "fp", time.Minute, time.Hour)
			if err != nil || (c.Status != dedupe.Acquired && c.Status != dedupe.Busy) {
				t.Fatalf("round %d key %d: %v %v, want acquired or busy", round, i, c.Status, err)
			}
			if i%4 == 0 && c.Status != dedupe.Busy {
				t.Fatalf("round %d key %d: the uncancelled claim was lost (%v)", round, i, c.Status)
			}
		}
	}
}

// TestBatchingConcurrency runs many goroutines through every operation,
// first all on one key, then each on keys of its own.
func TestBatchingConcurrency(t *testing.T) {
	const goroutines = 64
	env := harness.Redis(t)
	var clock storetest.Clock
	s := redisstore.New(env.Client, redisstore.Config{Prefix: env.Prefix, Now: clock.Now, MaxBatch: 16})
	ctx := context.Background()

	t.Run("OneKey", func(t *testing.T) {
		var acquired atomic.Int64
		var token atomic.Value
		var wg sync.WaitGroup
		for range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := s.Claim(ctx, "one", "fp", time.Minute, time.Hour)
				switch {
				case err != nil:
					t.Errorf("claim: %v", err)
				case c.Status == dedupe.Acquired:
					acquired.Add(1)
					token.Store(c.Token)
				case c.Status != dedupe.Busy:
					t.Errorf("claim: %v, want acquired or busy", c.Status)
				}
			}()
		}
		wg.Wait()
		if n := acquired.Load(); n != 1 {
			t.Fatalf("%d of %d concurrent claims acquired one key, want 1", n, goroutines)
		}
		if err := s.Complete(ctx, "one", token.Load().(string), dedupe.Result{Data: []byte("once")}, time.Hour); err != nil {
			t.Fatal(err)
		}
		for range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := s.Claim(ctx, "one", "fp", time.Minute, time.Hour)
				if err != nil || c.Status != dedupe.Duplicate || string(c.Result.Data) != "once" {
					t.Errorf("claim after complete: %v %q %v, want duplicate \"once\"", c.Status, c.Result.Data, err)
				}
			}()
		}
		wg.Wait()
	})

	t.Run("ManyKeys", func(t *testing.T) {
		const keys = 20
		key := func(g, i int) string { return fmt.Sprintf("many-%d-%d", g, i) }
		var wg sync.WaitGroup
		for g := range goroutines {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range keys {
					c, err := s.Claim(ctx, key(g, i), "fp", time.Minute, time.Hour)
					if err != nil || c.Status != dedupe.Acquired {
						t.Errorf("claim %s: %v %v", key(g, i), c.Status, err)
						return
					}
					if err := s.Extend(ctx, key(g, i), c.Token, 2*time.Minute); err != nil {
						t.Errorf("extend %s: %v", key(g, i), err)
					}
					if i%2 == 0 {
						err = s.Complete(ctx, key(g, i), c.Token, dedupe.Result{Data: []byte(key(g, i))}, time.Hour)
					} else {
						err = s.Release(ctx, key(g, i), c.Token)
					}
					if err != nil {
						t.Errorf("complete or release %s: %v", key(g, i), err)
					}
					if err := s.Release(ctx, key(g, i), c.Token); !errors.Is(err, dedupe.ErrLeaseLost) {
						t.Errorf("second release %s: %v, want ErrLeaseLost", key(g, i), err)
					}
				}
			}()
		}
		wg.Wait()
		for g := range goroutines {
			for i := range keys {
				c, err := s.Claim(ctx, key(g, i), "fp", time.Minute, time.Hour)
				want := dedupe.Acquired
				if i%2 == 0 {
					want = dedupe.Duplicate
				}
				if err != nil || c.Status != want || (want == dedupe.Duplicate && string(c.Result.Data) != key(g, i)) {
					t.Fatalf("reclaim %s: %v %q %v, want %v", key(g, i), c.Status, c.Result.Data, err, want)
				}
			}
		}
	})
}

// TestBatchingOwnedOpsShareOneScript queues every kind of token-checked
// operation behind a pipeline in flight and checks that they went out as
// one script call, that each got the answer it would get alone, and that a
// key holding a value of another type fails its own operation only.
func TestBatchingOwnedOpsShareOneScript(t *testing.T) {
	env := harness.Redis(t)
	g := newGate()
	env.Client.AddHook(g)
	var clock storetest.Clock
	s := redisstore.New(env.Client, redisstore.Config{Prefix: env.Prefix, Now: clock.Now})
	warm(t, s)
	ctx := context.Background()
	keys := []string{"complete", "release", "snooze", "delete", "extend", "stale", "hash"}
	tokens := map[string]string{}
	for _, k := range keys {
		c, err := s.Claim(ctx, k, "fp", time.Minute, time.Hour)
		if err != nil || c.Status != dedupe.Acquired {
			t.Fatalf("claim %s: %v %v", k, c.Status, err)
		}
		tokens[k] = c.Token
	}
	if err := env.Client.Del(ctx, s.Key("hash")).Err(); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.HSet(ctx, s.Key("hash"), "f", "v").Err(); err != nil {
		t.Fatal(err)
	}
	ops := map[string]func() error{
		"complete": func() error {
			return s.Complete(ctx, "complete", tokens["complete"], dedupe.Result{Data: []byte("r")}, time.Hour)
		},
		"release": func() error { return s.Release(ctx, "release", tokens["release"]) },
		"snooze":  func() error { return s.Snooze(ctx, "snooze", tokens["snooze"]) },
		"delete":  func() error { return s.Delete(ctx, "delete", tokens["delete"]) },
		"extend":  func() error { return s.Extend(ctx, "extend", tokens["extend"], 2*time.Minute) },
		"stale":   func() error { return s.Complete(ctx, "stale", "not-the-token", dedupe.Result{}, time.Hour) },
		"hash":    func() error { return s.Complete(ctx, "hash", tokens["hash"], dedupe.Result{}, time.Hour) },
	}
	g.sizes = nil
	g.armed.Store(true)
	lead := make(chan error, 1)
	go func() {
		_, err := s.Claim(ctx, "leader", "fp", time.Minute, time.Hour)
		lead <- err
	}()
	<-g.held
	var wg sync.WaitGroup
	errs := map[string]error{}
	var mu sync.Mutex
	for k, fn := range ops {
		wg.Go(func() {
			err := fn()
			mu.Lock()
			errs[k] = err
			mu.Unlock()
		})
	}
	waitQueued(t, s, len(ops))
	close(g.release)
	wg.Wait()
	if err := <-lead; err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(g.sizes) != "[1 1]" {
		t.Errorf("pipeline sizes %v, want [1 1]: the held claim, then one script call for %d operations", g.sizes, len(ops))
	}
	for k, err := range errs {
		switch k {
		case "stale":
			if !errors.Is(err, dedupe.ErrLeaseLost) {
				t.Errorf("%s: %v, want ErrLeaseLost", k, err)
			}
		case "hash":
			if err == nil || errors.Is(err, dedupe.ErrLeaseLost) {
				t.Errorf("%s: %v, want an error", k, err)
			}
		default:
			if err != nil {
				t.Errorf("%s: %v", k, err)
			}
		}
	}
	if c, err := s.Claim(ctx, "complete", "fp", time.Minute, time.Hour); err != nil || c.Status != dedupe.Duplicate || string(c.Result.Data) != "r" {
		t.Errorf("complete: then %v %q %v, want duplicate", c.Status, c.Result.Data, err)
	}
	if c, err := s.Claim(ctx, "release", "fp", time.Minute, time.Hour); err != nil || c.Status != dedupe.Acquired || c.Attempt != 2 {
		t.Errorf("release: then %+v %v, want acquired, attempt 2", c, err)
	}
	if c, err := s.Claim(ctx, "snooze", "fp", time.Minute, time.Hour); err != nil || c.Status != dedupe.Acquired || c.Attempt != 1 {
		t.Errorf("snooze: then %+v %v, want acquired, attempt 1", c, err)
	}
	if c, err := s.Claim(ctx, "delete", "fp", time.Minute, time.Hour); err != nil || c.Status != dedupe.Acquired || c.Attempt != 1 || c.Takeover {
		t.Errorf("delete: then %+v %v, want a fresh acquire", c, err)
	}
	clock.Advance(90 * time.Second) // past the first lease, inside the extended one
	if c, err := s.Claim(ctx, "extend", "fp", time.Minute, time.Hour); err != nil || c.Status != dedupe.Busy {
		t.Errorf("extend: then %v %v, want busy", c.Status, err)
	}
	if c, err := s.Claim(ctx, "stale", "fp", time.Minute, time.Hour); err != nil || c.Status != dedupe.Acquired || !c.Takeover {
		t.Errorf("stale: then %+v %v, want a takeover (the stale completion wrote nothing)", c, err)
	}
}
