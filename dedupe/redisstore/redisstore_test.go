package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/redisstore"
	"github.com/idemq/idemq/dedupe/storetest"
	"github.com/idemq/idemq/integration/harness"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// TestConformance runs the suite with the default options (batching on)
// and with batching off.
func TestConformance(t *testing.T) {
	for _, mode := range []struct {
		name     string
		maxBatch int
	}{{"batched", 0}, {"unbatched", 1}} {
		t.Run(mode.name, func(t *testing.T) {
			storetest.Run(t, func(t *testing.T, now func() time.Time) dedupe.Store {
				env := harness.Redis(t)
				return redisstore.New(env.Client, redisstore.Config{Prefix: env.Prefix, Now: now, MaxBatch: mode.maxBatch})
			})
		})
	}
}

// roundTrips counts the round trips a client makes: one per command sent
// alone, one per pipeline. The handshake go-redis sends on a fresh
// connection (HELLO, CLIENT SETINFO) is not part of an operation and is not
// counted.
type roundTrips struct{ n atomic.Int64 }

func handshake(cmd redis.Cmder) bool {
	return cmd.Name() == "hello" || cmd.Name() == "client"
}

func (r *roundTrips) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *roundTrips) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if !handshake(cmd) {
			r.n.Add(1)
		}
		return next(ctx, cmd)
	}
}

func (r *roundTrips) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if len(cmds) > 0 && !handshake(cmds[0]) {
			r.n.Add(1)
		}
		return next(ctx, cmds)
	}
}

// count returns how many round trips fn made.
func (r *roundTrips) count(fn func()) int64 {
	before := r.n.Load()
	fn()
	return r.n.Load() - before
}

func TestOneRoundTripPerOperation(t *testing.T) {
	env := harness.Redis(t)
	rt := &roundTrips{}
	env.Client.AddHook(rt)
	var clock storetest.Clock
	s := redisstore.New(env.Client, redisstore.Config{Prefix: env.Prefix, Now: clock.Now})
	ctx := context.Background()

	// Warm up: the first use of each script may add a NOSCRIPT round trip.
	warm, err := s.Claim(ctx, "warm", "", time.Second, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Extend(ctx, "warm", warm.Token, time.Second)
	_ = s.Complete(ctx, "warm", warm.Token, dedupe.Result{}, time.Minute)
	warm, _ = s.Claim(ctx, "warm2", "", time.Second, time.Minute)
	_ = s.Release(ctx, "warm2", warm.Token)

	var c dedupe.Claim
	ops := []struct {
		name string
		fn   func() error
	}{
		{"Claim", func() (err error) { c, err = s.Claim(ctx, "k", "fp", time.Second, time.Minute); return err }},
		{"Claim (busy)", func() error { _, err := s.Claim(ctx, "k", "fp", time.Second, time.Minute); return err }},
		{"Extend", func() error { return s.Extend(ctx, "k", c.Token, time.Minute) }},
		{"Complete", func() error { return s.Complete(ctx, "k", c.Token, dedupe.Result{Data: []byte("r")}, time.Minute) }},
		{"Claim (duplicate)", func() error { _, err := s.Claim(ctx, "k", "fp", time.Second, time.Minute); return err }},
		{"Claim (again)", func() (err error) { c, err = s.Claim(ctx, "k2", "fp", time.Second, time.Minute); return err }},
		{"Release", func() error { return s.Release(ctx, "k2", c.Token) }},
		{"Complete (lease lost)", func() error {
			if err := s.Complete(ctx, "k2", c.Token, dedupe.Result{}, time.Minute); !errors.Is(err, dedupe.ErrLeaseLost) {
				return fmt.Errorf("got %v, want ErrLeaseLost", err)
			}
			return nil
		}},
	}
	for _, op := range ops {
		var err error
		if n := rt.count(func() { err = op.fn() }); n != 1 {
			t.Errorf("%s took %d round trips, want 1", op.name, n)
		}
		if err != nil {
			t.Errorf("%s: %v", op.name, err)
		}
	}

	reqs := make([]redisstore.ClaimRequest, 100)
	for i := range reqs {
		reqs[i] = redisstore.ClaimRequest{Key: fmt.Sprint("batch-", i), Lease: time.Second, Retention: time.Minute}
	}
	var res []redisstore.ClaimResult
	if n := rt.count(func() { res, err = s.ClaimMany(ctx, reqs) }); n != 1 || err != nil {
		t.Fatalf("ClaimMany of 100: %d round trips, error %v; want 1, nil", n, err)
	}
	done := make([]redisstore.CompleteRequest, len(res))
	for i, r := range res {
		done[i] = redisstore.CompleteRequest{Key: reqs[i].Key, Token: r.Claim.Token, Retention: time.Minute}
	}
	var errs []error
	if n := rt.count(func() { errs, err = s.CompleteMany(ctx, done) }); n != 1 || err != nil {
		t.Fatalf("CompleteMany of 100: %d round trips, error %v; want 1, nil", n, err)
	}
	for i, err := range errs {
		if err != nil {
			t.Errorf("CompleteMany item %d: %v", i, err)
		}
	}
}

func TestClaimManyCompleteMany(t *testing.T) {
	env := harness.Redis(t)
	var clock storetest.Clock
	s := redisstore.New(env.Client, redisstore.Config{Prefix: env.Prefix, Now: clock.Now})
	ctx := context.Background()

	// One key completed, one in progress, before the batch.
	c, err := s.Claim(ctx, "done", "fp", time.Second, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Complete(ctx, "done", c.Token, dedupe.Result{Failed: true, Data: []byte("402")}, time.Hour); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Claim(ctx, "busy", "fp", 10*time.Second, time.Hour); err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)

	// Drop the server's script cache so that the batch goes through the
	// NOSCRIPT reload path. The store recovers on its own; other clients'
	// scripts are reloaded the same way.
	if err := env.Client.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	reqs := []redisstore.ClaimRequest{
		{Key: "new", Fingerprint: "fp", Lease: time.Second, Retention: time.Hour},
		{Key: "done", Fingerprint: "fp", Lease: time.Second, Retention: time.Hour},
		{Key: "done", Fingerprint: "other", Lease: time.Second, Retention: time.Hour},
		{Key: "busy", Fingerprint: "fp", Lease: time.Second, Retention: time.Hour},
		{Key: "bad", Fingerprint: "fp", Lease: 0, Retention: time.Hour},
		{Key: "new", Fingerprint: "fp", Lease: time.Second, Retention: time.Hour},
	}
	res, err := s.ClaimMany(ctx, reqs)
	if err != nil {
		t.Fatal(err)
	}
	want := []dedupe.Status{dedupe.Acquired, dedupe.Duplicate, dedupe.Conflict, dedupe.Busy, 0, dedupe.Busy}
	for i, r := range res {
		if i == 4 {
			if !errors.Is(r.Err, dedupe.ErrInvalidLease) {
				t.Errorf("item %d: error %v, want ErrInvalidLease", i, r.Err)
			}
			continue
		}
		if r.Err != nil || r.Claim.Status != want[i] {
			t.Errorf("item %d (%s): %v %v, want %v", i, reqs[i].Key, r.Claim.Status, r.Err, want[i])
		}
	}
	if d := res[1].Claim.Result; !d.Failed || string(d.Data) != "402" {
		t.Errorf("duplicate replayed %+v, want the stored failure", d)
	}
	if r := res[3].Claim.RetryAfter; r != 9*time.Second {
		t.Errorf("busy RetryAfter %v, want 9s", r)
	}

	errs, err := s.CompleteMany(ctx, []redisstore.CompleteRequest{
		{Key: "new", Token: res[0].Claim.Token, Result: dedupe.Result{Data: []byte("ok")}, Retention: time.Hour},
		{Key: "new", Token: res[0].Claim.Token, Retention: time.Hour},
		{Key: "busy", Token: "stale", Retention: time.Hour},
		{Key: "busy", Token: "", Retention: time.Hour},
		{Key: "x", Token: "t", Retention: 0},
	})
	if err != nil {
		t.Fatal(err)
	}
	wantErr := []error{nil, dedupe.ErrLeaseLost, dedupe.ErrLeaseLost, dedupe.ErrLeaseLost, dedupe.ErrInvalidLease}
	for i, err := range errs {
		if !errors.Is(err, wantErr[i]) || (wantErr[i] == nil && err != nil) {
			t.Errorf("CompleteMany item %d: %v, want %v", i, err, wantErr[i])
		}
	}
	c, err = s.Claim(ctx, "new", "fp", time.Second, time.Hour)
	if err != nil || c.Status != dedupe.Duplicate || string(c.Result.Data) != "ok" {
		t.Errorf("claim after CompleteMany: %v %q %v, want duplicate \"ok\"", c.Status, c.Result.Data, err)
	}

	if _, err := s.ClaimMany(ctx, nil); err != nil {
		t.Errorf("empty ClaimMany: %v", err)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.ClaimMany(cancelled, reqs); !errors.Is(err, context.Canceled) {
		t.Errorf("ClaimMany with a cancelled context: %v, want context.Canceled", err)
	}
}

func TestPhysicalTTLIsGarbageCollectionOnly(t *testing.T) {
	env := harness.Redis(t)
	var clock storetest.Clock
	s := redisstore.New(env.Client, redisstore.Config{Prefix: env.Prefix, Now: clock.Now})
	ctx := context.Background()
	c, err := s.Claim(ctx, "k", "", 30*time.Second, 2*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	ttl := env.Client.PTTL(ctx, s.Key("k")).Val()
	if ttl < 2*time.Hour || ttl > 2*time.Hour+redisstore.GCMargin {
		t.Errorf("PTTL after claim %v, want between the 2h retention and 2h+GCMargin", ttl)
	}
	clock.Advance(time.Hour)
	if err := s.Complete(ctx, "k", c.Token, dedupe.Result{}, 24*time.Hour); err != nil {
		t.Fatal(err)
	}
	ttl = env.Client.PTTL(ctx, s.Key("k")).Val()
	if ttl < 24*time.Hour || ttl > 24*time.Hour+redisstore.GCMargin {
		t.Errorf("PTTL after complete %v, want between the 24h retention and 24h+GCMargin", ttl)
	}
	if v := env.Client.Get(ctx, s.Key("k")).Val(); len(v) == 0 || v[0] != 'D' {
		t.Errorf("stored record %q, want state D (done)", v)
	}
}

// TestFirstFormatRecords checks that records written before fences existed
// (lower-case states, a 46-byte header) are still answered from, taken over
// into the current format, and never completed by this version.
func TestFirstFormatRecords(t *testing.T) {
	env := harness.Redis(t)
	var clock storetest.Clock
	s := redisstore.New(env.Client, redisstore.Config{Prefix: env.Prefix, Now: clock.Now})
	ctx := context.Background()
	ms := func(d time.Duration) string { return fmt.Sprintf("%013d", storetest.Epoch.Add(d).UnixMilli()) }
	// done, retention 1h, created at the epoch, 2 attempts, token "tok", fingerprint "fp", result "r".
	done := "d" + ms(time.Hour) + "0000000000000" + ms(0) + "000002" + "tok:2:fpr"
	// in progress, lease 30s, retention 1h, 1 attempt, token "old".
	running := "i" + ms(time.Hour) + ms(30*time.Second) + ms(0) + "000001" + "old:2:fp"
	for k, v := range map[string]string{"done": done, "running": running} {
		if err := env.Client.Set(ctx, s.Key(k), v, time.Hour).Err(); err != nil {
			t.Fatal(err)
		}
	}
	c, err := s.Claim(ctx, "done", "fp", 30*time.Second, time.Hour)
	if err != nil || c.Status != dedupe.Duplicate || string(c.Result.Data) != "r" {
		t.Fatalf("claim of a first-format done record: %+v, %v; want a duplicate replaying %q", c, err, "r")
	}
	if c, err := s.Claim(ctx, "done", "other", 30*time.Second, time.Hour); err != nil || c.Status != dedupe.Conflict {
		t.Fatalf("claim with another fingerprint: %+v, %v; want a conflict", c, err)
	}
	if c, err := s.Claim(ctx, "running", "fp", 30*time.Second, time.Hour); err != nil || c.Status != dedupe.Busy {
		t.Fatalf("claim of a first-format record with a live lease: %+v, %v; want busy", c, err)
	}
	if err := s.Complete(ctx, "running", "old", dedupe.Result{}, time.Hour); !errors.Is(err, dedupe.ErrLeaseLost) {
		t.Fatalf("Complete of a first-format lease: %v, want ErrLeaseLost", err)
	}
	clock.Advance(30 * time.Second)
	c, err = s.Claim(ctx, "running", "fp", 30*time.Second, time.Hour)
	if err != nil || c.Status != dedupe.Acquired || !c.Takeover || c.Attempt != 2 || c.Fence == 0 {
		t.Fatalf("claim after the first-format lease expired: %+v, %v; want a takeover, attempt 2, a fence", c, err)
	}
	if v := env.Client.Get(ctx, s.Key("running")).Val(); len(v) == 0 || v[0] != 'I' {
		t.Fatalf("record after the takeover %q, want the current format (state I)", v)
	}
	if err := s.Complete(ctx, "running", c.Token, dedupe.Result{Data: []byte("new")}, time.Hour); err != nil {
		t.Fatalf("Complete after the takeover: %v", err)
	}
}

// Example shows the Redis store. It needs a server, so it is compiled but
// not run by go test (no Output comment); TestConformance covers the same
// calls against the server in IDEMQ_REDIS_URL.
func Example() {
	client := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	defer client.Close()
	ctx := context.Background()
	s := redisstore.New(client, redisstore.Config{Prefix: "orders:"})

	c, err := s.Claim(ctx, "order-7", "fp", 30*time.Second, 24*time.Hour)
	if err != nil {
		fmt.Println(err)
		return
	}
	switch c.Status {
	case dedupe.Acquired:
		// Run the operation, then record its result for every retry.
		_ = s.Complete(ctx, "order-7", c.Token, dedupe.Result{Data: []byte("ok")}, 24*time.Hour)
	case dedupe.Duplicate:
		fmt.Println("replay:", string(c.Result.Data))
	case dedupe.Busy:
		fmt.Println("in flight elsewhere; retry after", c.RetryAfter)
	case dedupe.Conflict:
		fmt.Println("key reused for a different operation")
	}
}

func TestCheckDurability(t *testing.T) {
	env := harness.Redis(t)
	s := redisstore.New(env.Client, redisstore.Config{Prefix: env.Prefix})
	ctx := context.Background()
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	aof, err := env.Client.ConfigGet(ctx, "appendonly").Result()
	if err != nil {
		harness.Unavailable(t, "redis: the server refuses CONFIG GET: %v", err)
	}
	warning, err := s.CheckDurability(ctx)
	if err != nil {
		t.Fatalf("CheckDurability: %v", err)
	}
	// The machine's Redis (and CI's) runs with --save "" --appendonly no.
	if aof["appendonly"] == "no" && warning == "" {
		t.Fatalf("appendonly no, but no durability warning")
	}
	if aof["appendonly"] == "no" && !strings.Contains(warning, "appendonly yes") {
		t.Errorf("warning %q does not say how to fix it", warning)
	}
	t.Logf("durability: %q", warning)
}
