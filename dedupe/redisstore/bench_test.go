package redisstore_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/redisstore"
	"github.com/idemq/idemq/integration/harness"
)

// BenchmarkBaselineSet is the baseline for the benchmarks below: one plain
// SET per op, a single round trip with no script, on the same server.
func BenchmarkBaselineSet(b *testing.B) {
	env := harness.Redis(b)
	ctx := context.Background()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := env.Client.Set(ctx, env.Prefix+strconv.Itoa(i), "x", time.Minute).Err(); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkClaimComplete measures Claim of a fresh key plus Complete, the
// store's work per message, and reports the round trips per op (2: one per
// operation).
func BenchmarkClaimComplete(b *testing.B) {
	env := harness.Redis(b)
	rt := &roundTrips{}
	env.Client.AddHook(rt)
	s := redisstore.New(env.Client, redisstore.Config{Prefix: env.Prefix})
	ctx := context.Background()
	res := dedupe.Result{Data: []byte("ok")}
	if _, err := s.Claim(ctx, "warm", "", time.Second, time.Minute); err != nil { // load the script
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	before := rt.n.Load()
	for i := 0; i < b.N; i++ {
		key := strconv.Itoa(i)
		c, err := s.Claim(ctx, key, "fp", 30*time.Second, time.Hour)
		if err != nil || c.Status != dedupe.Acquired {
			b.Fatalf("claim: %v %v", c.Status, err)
		}
		if err := s.Complete(ctx, key, c.Token, res, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(rt.n.Load()-before)/float64(b.N), "roundtrips/op")
}

// BenchmarkClaimManyCompleteMany measures the batched path with batches of
// 64 keys: ClaimMany then CompleteMany, one pipeline each. One op is one
// message; it reports round trips per message and messages per second.
func BenchmarkClaimManyCompleteMany(b *testing.B) {
	const batch = 64
	env := harness.Redis(b)
	rt := &roundTrips{}
	env.Client.AddHook(rt)
	s := redisstore.New(env.Client, redisstore.Config{Prefix: env.Prefix})
	ctx := context.Background()
	if _, err := s.ClaimMany(ctx, []redisstore.ClaimRequest{{Key: "warm", Lease: time.Second, Retention: time.Minute}}); err != nil {
		b.Fatal(err)
	}
	if _, err := s.CompleteMany(ctx, []redisstore.CompleteRequest{{Key: "warm", Token: "x", Retention: time.Minute}}); err != nil {
		b.Fatal(err)
	}
	reqs := make([]redisstore.ClaimRequest, 0, batch)
	done := make([]redisstore.CompleteRequest, 0, batch)
	b.ReportAllocs()
	b.ResetTimer()
	before := rt.n.Load()
	start := time.Now()
	for i := 0; i < b.N; i += batch {
		reqs = reqs[:0]
		for j := i; j < i+batch && j < b.N; j++ {
			reqs = append(reqs, redisstore.ClaimRequest{Key: strconv.Itoa(j), Fingerprint: "fp", Lease: 30 * time.Second, Retention: time.Hour})
		}
		res, err := s.ClaimMany(ctx, reqs)
		if err != nil {
			b.Fatal(err)
		}
		done = done[:0]
		for k, r := range res {
			if r.Err != nil || r.Claim.Status != dedupe.Acquired {
				b.Fatalf("claim %s: %v %v", reqs[k].Key, r.Claim.Status, r.Err)
			}
			done = append(done, redisstore.CompleteRequest{Key: reqs[k].Key, Token: r.Claim.Token, Result: dedupe.Result{Data: []byte("ok")}, Retention: time.Hour})
		}
		errs, err := s.CompleteMany(ctx, done)
		if err != nil {
			b.Fatal(err)
		}
		for _, err := range errs {
			if err != nil {
				b.Fatal(err)
			}
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(rt.n.Load()-before)/float64(b.N), "roundtrips/op")
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
}

// BenchmarkClaimCompleteConcurrent is BenchmarkClaimComplete from 64
// goroutines (a consumer's worker pool) on a client with the default pool,
// with batching on (the default) and off; it reports round trips per
// message and messages per second.
func BenchmarkClaimCompleteConcurrent(b *testing.B) {
	for _, mode := range []struct {
		name     string
		maxBatch int
	}{{"batched", 0}, {"unbatched", 1}} {
		b.Run(mode.name, func(b *testing.B) {
			env := harness.Redis(b)
			rt := &roundTrips{}
			env.Client.AddHook(rt)
			s := redisstore.New(env.Client, redisstore.Config{Prefix: env.Prefix, MaxBatch: mode.maxBatch})
			ctx := context.Background()
			res := dedupe.Result{Data: []byte("ok")}
			if _, err := s.Claim(ctx, "warm", "", time.Second, time.Minute); err != nil {
				b.Fatal(err)
			}
			var next atomic.Int64
			b.SetParallelism(32) // 64 goroutines on 2 CPUs
			b.ReportAllocs()
			b.ResetTimer()
			before := rt.n.Load()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					key := strconv.FormatInt(next.Add(1), 10)
					c, err := s.Claim(ctx, key, "fp", 30*time.Second, time.Hour)
					if err != nil || c.Status != dedupe.Acquired {
						b.Errorf("claim: %v %v", c.Status, err)
						return
					}
					if err := s.Complete(ctx, key, c.Token, res, time.Hour); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64(rt.n.Load()-before)/float64(b.N), "roundtrips/op")
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msgs/s")
		})
	}
}
