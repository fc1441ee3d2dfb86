// Package bench measures idemq's JetStream consumer against raw nats.go and
// against Watermill, on a real NATS JetStream server and a real Redis.
//
// Everything lives in the package's tests. The benchmarks fill one stream
// with N payment messages (about 200-byte JSON bodies, each with a unique
// Idempotency-Key header) and consume that identical stream content with
// every variant, each round through its own fresh durable consumer:
//
//	raw-ack              nats.go jetstream Consume (batch 500) + Ack, handler inline: the baseline
//	raw-doubleack        nats.go jetstream Consume + DoubleAck from 64 workers
//	raw-fetch            diagnostic: nats.go with the adapter's former loop (Fetch ≤ idle
//	                     workers, a goroutine per message) and no pipeline
//	watermill-js         Watermill router over watermill-nats/v2 pkg/jetstream (pull)
//	watermill-nats       Watermill router over watermill-nats/v2 pkg/nats (push, JetStream mode)
//	idemq                consumer/natsjs, no dedupe
//	idemq-mem            consumer/natsjs, dedupe.Guard on memstore
//	idemq-redis          consumer/natsjs, dedupe.Guard on redisstore (its defaults:
//	                     concurrent calls batched into one pipeline)
//	idemq-redis-unbatched  the same with redisstore's MaxBatch 1: a round trip per call
//	redis-batch-floor    not a consumer, a bound: raw-ack's Consume + Ack with each
//	                     buffered batch (≤ 64) claimed with one redisstore.ClaimMany and
//	                     completed with one CompleteMany, no pipeline (side by side only)
//
// The Watermill variants run Deduplicator (in-memory repository: Watermill
// v1.5.1 ships no Redis one), PoisonQueue, Retry and Recoverer. The idemq
// adapter acks without waiting for confirmation by default, so the idemq
// variants are compared with raw-ack and Watermill runs with AckAsync.
// x_watermill compares the idemq dedupe variants with one fixed Watermill
// configuration, watermill-nats (pkg/nats in JetStream mode, the subscriber
// watermill-nats recommends for production, 4 queue subscriptions), never
// with the faster of the two in a cycle, which would let noise pick the
// baseline.
//
// A round is timed from the start of consumption until every message has
// been handled and the server has processed every ack (ack floor at the last
// sequence, nothing pending, nothing redelivered); each round then checks
// that every message was handled exactly once, and fails the benchmark
// otherwise.
//
// BenchmarkSideBySide is the one entry point for the side-by-side table the
// README's benchmark table comes from. Its rows are raw-ack (the baseline),
// idemq, idemq-mem, idemq-redis, redis-batch-floor and watermill-nats;
// each iteration is a
// cycle that runs every row once, in rotated order, after one unmeasured
// warm-up round of each on a small stream. It prints a Markdown table whose
// cells are the median (min..max) over the cycles of: msg/s; the rate over
// raw-ack's in the same cycle; the CPU per message of nats-server, of
// redis-server and of the client (this process), and their total; the
// client's heap allocations per message; and, for the idemq dedupe rows,
// the rate over watermill-nats'. On a 2-core machine the broker, Redis and
// the consumer share the CPU, so the total CPU per message, summed over
// every process, is the honest measure of cost. The servers are found by
// the ports of IDEMQ_NATS_URL and IDEMQ_REDIS_URL (the listening socket's
// inode in /proc/net/tcp and tcp6, then the process holding it among
// /proc/<pid>/fd) and their CPU is the utime+stime delta of
// /proc/<pid>/stat over the timed region, at 10ms resolution; the client's
// is getrusage, its allocations runtime.MemStats.Mallocs. The servers' CPU
// includes whatever else they served meanwhile (other tests on a shared
// machine: redis-server's CPU in the rows without Redis shows how much),
// and the table states the load average before and after the cycles. A
// server on another machine, or in a container whose port is forwarded, is
// reported as not measured. Run at least -benchtime=3x:
//
//	IDEMQ_NATS_URL=nats://127.0.0.1:4222 IDEMQ_REDIS_URL=redis://127.0.0.1:6379/0 \
//	  go test -run '^$' -bench SideBySide -benchtime 3x ./integration/bench/
//
// BenchmarkRatios runs every variant above in the same interleaved way:
// each iteration is a cycle that runs every variant once, in rotated order,
// and ratios are taken within a cycle and summarised by their median and
// range over the cycles, so that background load from other work on the
// machine falls on every variant alike. BenchmarkConsume runs each variant
// as a sub-benchmark, for profiling one of them. Both print a table with
// msg/s, the CPU per message of the client, nats-server and redis-server
// (over all rounds), the client's allocations per message and the NATS
// messages the client sent per message (one ack plus pull requests).
//
//	go test -run='^$' -bench=Ratios -benchtime=5x ./integration/bench/
//
//	go test -run='^$' -bench='Consume/idemq-redis$' -benchtime=3x \
//	  -cpuprofile=cpu.out ./integration/bench/
//
// IDEMQ_BENCH_N sets N (default 20000); IDEMQ_BENCH_CONCURRENCY sets the
// idemq adapter's Concurrency (default 64, the adapter's own default; its
// FetchBatch stays the adapter's default, eight times that, at most 512). TestBenchSmoke runs every variant, and
// TestSideBySideSmoke one side-by-side cycle, on a small stream in an
// ordinary go test run, so the benchmark code keeps compiling and stays
// correct.
package bench
