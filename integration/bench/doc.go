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
// BenchmarkRatios is the measurement of record: each iteration is a cycle
// that runs every variant once, in rotated order, and ratios are taken within
// a cycle and summarised by their median and range over the cycles, so that
// background load from other work on the machine falls on every variant
// alike. BenchmarkConsume runs each variant as a sub-benchmark, for
// profiling one of them. Both print a table with msg/s, the client CPU per
// message (this process only) and the NATS messages sent per message (one
// ack plus pull requests).
//
//	IDEMQ_NATS_URL=nats://127.0.0.1:4222 IDEMQ_REDIS_URL=redis://127.0.0.1:6379/0 \
//	  go test -run='^$' -bench=Ratios -benchtime=5x ./integration/bench/
//
//	go test -run='^$' -bench='Consume/idemq-redis$' -benchtime=3x \
//	  -cpuprofile=cpu.out ./integration/bench/
//
// IDEMQ_BENCH_N sets N (default 20000); IDEMQ_BENCH_CONCURRENCY sets the
// idemq adapter's Concurrency and FetchBatch (default 64, the adapter's own
// default). TestBenchSmoke runs every variant on a small
// stream in an ordinary go test run, so the benchmark code keeps compiling
// and stays correct.
package bench
