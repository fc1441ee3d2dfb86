//go:build linux

package redisstore_test

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/redisstore"
)

// costWorkers is the concurrency of BenchmarkCostPerMessage: a consumer's
// 64 workers.
const costWorkers = 64

// BenchmarkCostPerMessage measures what one message costs with the Redis
// store: a Claim of a fresh key and its Complete, from 64 goroutines with
// batching on (the default), on a redis-server of the benchmark's own so
// that no other client adds to its CPU. It reports per message (op):
//
//   - client-µs/op: CPU of this process (getrusage, every thread: the
//     store, go-redis, the runtime);
//   - redis-µs/op: CPU of the redis-server process (/proc/<pid>/stat, in
//     10 ms ticks: run enough ops, -benchtime 100000x or more);
//   - redis-x-floor: redis-µs/op over the redis-server CPU of the two
//     plain writes a message needs at least (SET NX GET of the record, SET
//     of the completed one) sent in pipelines of 64 messages, measured in
//     the same run before the timed part: how far the store is from the
//     cheapest the server can do;
//   - msgs/roundtrip: messages per pipeline the batching achieved (a
//     message is two operations);
//   - allocs/op and B/op, as usual.
func BenchmarkCostPerMessage(b *testing.B) {
	srv := startRedisServer(b)
	client := srv.client(&redis.Options{PoolSize: 2 * costWorkers})
	defer client.Close()
	ctx := context.Background()
	s := redisstore.New(client, redisstore.Config{Prefix: "cost:"})
	res := dedupe.Result{Data: []byte("ok")}
	if _, err := s.Claim(ctx, "warm", "", time.Second, time.Minute); err != nil {
		b.Fatal(err)
	}
	if err := s.Complete(ctx, "warm", "x", res, time.Minute); err != nil && err != dedupe.ErrLeaseLost {
		b.Fatal(err)
	}
	record := "I" + "1893459600000" + "1893456030000" + "1893456000000" + "000001" + "00001893456000000000" + "0123456789abcdef0123456789abcdef:2:fp"

	// run calls op(i) b.N times from costWorkers goroutines and returns the
	// CPU time of this process and of the server it took.
	run := func(op func(i int64) error) (client, server time.Duration) {
		var next atomic.Int64
		c0, s0 := selfCPU(), serverCPU(b, srv)
		b.SetParallelism((costWorkers + 1) / 2) // GOMAXPROCS 2 on the machine this was written on
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := op(next.Add(1)); err != nil {
					b.Error(err)
					return
				}
			}
		})
		return selfCPU() - c0, serverCPU(b, srv) - s0
	}

	// The floor: the two plain writes a message needs at least (the
	// claim's SET NX GET and an unconditional SET of the completed
	// record), in pipelines of costWorkers messages from one goroutine.
	var base time.Duration
	{
		done := "D" + record[1:14] + "0000000000000" + record[27:] + "ok"
		s0 := serverCPU(b, srv)
		for i := 0; i < b.N; i += costWorkers {
			pipe := client.Pipeline()
			for j := i; j < min(i+costWorkers, b.N); j++ {
				pipe.SetArgs(ctx, "base:"+strconv.Itoa(j), record, redis.SetArgs{Mode: "NX", Get: true, TTL: time.Hour})
			}
			if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
				b.Fatal(err)
			}
			pipe = client.Pipeline()
			for j := i; j < min(i+costWorkers, b.N); j++ {
				pipe.Set(ctx, "base:"+strconv.Itoa(j), done, time.Hour)
			}
			if _, err := pipe.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
		base = serverCPU(b, srv) - s0
	}
	rt := &roundTrips{}
	client.AddHook(rt)
	b.ReportAllocs()
	b.ResetTimer()
	rt0 := rt.n.Load()
	cpu, server := run(func(i int64) error {
		key := strconv.FormatInt(i, 10)
		c, err := s.Claim(ctx, key, "fp", 30*time.Second, time.Hour)
		if err != nil {
			return err
		}
		if c.Status != dedupe.Acquired {
			b.Errorf("claim %s: %v", key, c.Status)
		}
		return s.Complete(ctx, key, c.Token, res, time.Hour)
	})
	b.StopTimer()
	n := float64(b.N)
	b.ReportMetric(float64(cpu.Microseconds())/n, "client-µs/op")
	b.ReportMetric(float64(server.Microseconds())/n, "redis-µs/op")
	b.ReportMetric(n/float64(rt.n.Load()-rt0), "msgs/roundtrip")
	if base > 0 {
		b.ReportMetric(float64(server)/float64(base), "redis-x-floor")
	}
}

func serverCPU(b *testing.B, srv *redisServer) time.Duration {
	d, err := procCPU(srv.Pid())
	if err != nil {
		b.Fatal(err)
	}
	return d
}
