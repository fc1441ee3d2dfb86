package idemqotel_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/dedupe/redisstore"
	"github.com/idemq/idemq/idemqotel"
	"github.com/idemq/idemq/integration/harness"
)

// discard is a span exporter that drops every span.
type discard struct{}

func (discard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discard) Shutdown(context.Context) error                             { return nil }

var benchRuns atomic.Int64

// BenchmarkConsumeObserved measures messages consumed per second by a
// natsjs consumer with a dedupe store (Redis, memstore), without an
// Observer ("none") and with idemqotel's, in the same run: "metrics" (the
// metric SDK with a manual reader; the global no-op tracer), "traces-10pct"
// (also the trace SDK, parent-based as in production, following the
// producer's decision to sample one message in ten, into a batch processor
// whose exporter drops the spans) and "traces-all" (sampling every
// message: the worst case, which also records an exemplar per
// measurement). Compare the msg/s against "none"; -count 5 and benchstat
// for a steady figure.
func BenchmarkConsumeObserved(b *testing.B) {
	env := harness.NATS(b)
	for _, store := range []string{"redis", "memstore"} {
		for _, mode := range benchModes() {
			b.Run(store+"/"+mode, func(b *testing.B) { benchConsume(b, env, store, mode) })
		}
	}
}

func benchConsume(b *testing.B, env *harness.NATSEnv, store, mode string) {
	b.StopTimer()
	wall, cpu, _, _ := consumeOnce(b, env, nil, store, mode, b.N)
	b.ReportMetric(float64(b.N)/wall.Seconds(), "msg/s")
	// CPU time of this process (the consumer; the broker and Redis run
	// elsewhere) per message: steadier than msg/s on a shared machine.
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/msg")
}

// BenchmarkConsumeOverhead runs the modes of BenchmarkConsumeObserved
// and "nop" (consumer.NopObserver: what an Observer costs the pipeline
// itself) and "metrics-durations" (metrics with ConsumerOptions'
// ProcessDuration and HandlerDuration, and every store call's duration:
// StoreDurationEvery 1) interleaved — none, nop, metrics,
// metrics-durations, traces-10pct, traces-all, then
// the reverse (IDEMQ_BENCH_MODES=none,metrics picks some, none first),
// b.N rounds of 10,000 messages each, Redis dedupe — so that the machine's
// changing load falls on every mode alike, and reports each mode's CPU per
// message, its ratio to none over all rounds (<mode>/none) and the
// difference (<mode>-overhead-µs/msg, what the observer adds per message),
// <mode>-ctxsw/msg (the context switches per message), and the median and
// quartiles of the ratio taken within each round (<mode>/none-median,
// -p25, -p75), since a round's modes run back to back under the same load
// while the load itself changes from round to round by more than 5 %.
// When nats-server and redis-server run on this machine it also reports
// their CPU per message (<mode>-servers-cpu-µs/msg, at /proc's 10 ms
// resolution per round) and the ratio of the CPU per message summed over
// the three processes (<mode>/none-total). IDEMQ_BENCH_N sets the
// messages per round (default 10,000):
//
//	go test -run '^$' -bench ConsumeOverhead -benchtime 20x ./idemqotel/
func BenchmarkConsumeOverhead(b *testing.B) {
	env := harness.NATS(b)
	n := 10000
	if v, err := strconv.Atoi(os.Getenv("IDEMQ_BENCH_N")); err == nil && v > 0 {
		n = v
	}
	modes := []string{"none", "nop", "metrics", "metrics-durations", "traces-10pct", "traces-all"}
	if m := os.Getenv("IDEMQ_BENCH_MODES"); m != "" {
		modes = strings.Split(m, ",")
	}
	cpu := map[string]time.Duration{}
	switches := map[string]int64{}
	ratios := map[string][]float64{}
	servers := localServers(b)
	srvCPU := map[string]time.Duration{}
	b.StopTimer()
	for round := range b.N {
		order := slices.Clone(modes)
		if round%2 == 1 {
			slices.Reverse(order)
		}
		this := map[string]time.Duration{}
		for _, mode := range order {
			_, c, sw, sc := consumeOnce(b, env, servers, "redis", mode, n)
			cpu[mode] += c
			this[mode] = c
			switches[mode] += sw
			if sc < 0 || srvCPU[mode] < 0 {
				srvCPU[mode] = -1
			} else {
				srvCPU[mode] += sc
			}
		}
		if base := this["none"]; base > 0 {
			for _, mode := range modes {
				ratios[mode] = append(ratios[mode], float64(this[mode])/float64(base))
			}
		}
	}
	msgs := float64(b.N * n)
	for _, mode := range modes {
		b.ReportMetric(float64(cpu[mode].Microseconds())/msgs, mode+"-cpu-µs/msg")
		b.ReportMetric(float64(switches[mode])/msgs, mode+"-ctxsw/msg")
		if srvCPU[mode] >= 0 && srvCPU["none"] >= 0 && len(servers) > 0 {
			b.ReportMetric(float64(srvCPU[mode].Microseconds())/msgs, mode+"-servers-cpu-µs/msg")
			if mode != "none" {
				b.ReportMetric(float64(cpu[mode]+srvCPU[mode])/float64(cpu["none"]+srvCPU["none"]), mode+"/none-total")
			}
		}
		if mode != "none" {
			b.ReportMetric(float64(cpu[mode])/float64(cpu["none"]), mode+"/none")
			b.ReportMetric(float64((cpu[mode]-cpu["none"]).Microseconds())/msgs, mode+"-overhead-µs/msg")
			if r := slices.Sorted(slices.Values(ratios[mode])); len(r) > 0 {
				b.ReportMetric(quantile(r, 0.5), mode+"/none-median")
				b.ReportMetric(quantile(r, 0.25), mode+"/none-p25")
				b.ReportMetric(quantile(r, 0.75), mode+"/none-p75")
			}
		}
	}
}

// quantile returns the q-quantile of sorted (not empty), interpolating
// between its two nearest values.
func quantile(sorted []float64, q float64) float64 {
	pos := q * float64(len(sorted)-1)
	i := int(pos)
	if i+1 >= len(sorted) {
		return sorted[len(sorted)-1]
	}
	return sorted[i] + (pos-float64(i))*(sorted[i+1]-sorted[i])
}

// localServers returns nats-server's and redis-server's processes, when
// they run on this machine (see harness.FindLocalServer); the benchmark
// logs why one is left out.
func localServers(b *testing.B) []harness.LocalServer {
	var out []harness.LocalServer
	for _, s := range []struct {
		url, name string
		port      int
	}{
		{os.Getenv(harness.EnvNATSURL), "nats-server", 4222},
		{os.Getenv(harness.EnvRedisURL), "redis-server", 6379},
	} {
		if s.url == "" {
			b.Logf("%s: no URL in the environment; its CPU is not counted", s.name)
			continue
		}
		p, err := harness.FindLocalServer(s.url, s.port)
		if err != nil {
			b.Logf("%s: %v; its CPU is not counted", s.name, err)
			continue
		}
		out = append(out, p)
	}
	return out
}

// serversCPU returns the summed CPU time of servers, -1 when one cannot
// be read.
func serversCPU(servers []harness.LocalServer) time.Duration {
	var sum time.Duration
	for _, p := range servers {
		d, err := p.CPU()
		if err != nil {
			return -1
		}
		sum += d
	}
	return sum
}

// consumeOnce fills a fresh stream with n messages, consumes them with a
// natsjs consumer on store ("redis" or "memstore") observed as mode says,
// and returns the wall time, this process's CPU time, its context
// switches and the CPU time of servers (-1 when unreadable) from the
// start of Run to the last handler call.
func consumeOnce(b *testing.B, env *harness.NATSEnv, servers []harness.LocalServer, store, mode string, n int) (wall, cpu time.Duration, switches int64, srv time.Duration) {
	run := fmt.Sprintf("%d", benchRuns.Add(1))
	stream, subject := env.Name("OB"+run), env.Subject("ob"+run+".x")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{subject}}); err != nil {
		b.Fatal(err)
	}
	for i := range n {
		m := nats.NewMsg(subject)
		m.Header.Set("Idempotency-Key", fmt.Sprintf("%s-%d", run, i))
		// A producer's trace context, as the relay publishes it: a fresh
		// trace per message.
		m.Header.Set("traceparent", benchTraceparent(benchRuns.Load()+1, i))
		m.Data = []byte(`{"amount":100}`)
		if _, err := env.JS.PublishMsgAsync(m); err != nil {
			b.Fatal(err)
		}
		if i%500 == 499 { // stay below the pending-ack limit on a busy machine
			select {
			case <-env.JS.PublishAsyncComplete():
			case <-ctx.Done():
				b.Fatal("publish timed out")
			}
		}
	}
	select {
	case <-env.JS.PublishAsyncComplete():
	case <-ctx.Done():
		b.Fatal("publish timed out")
	}
	var st dedupe.Store
	switch store {
	case "redis":
		rd := harness.Redis(b)
		st = redisstore.New(rd.Client, redisstore.Config{Prefix: rd.Prefix})
	default:
		st = memstore.New(memstore.Config{})
	}
	var obs consumer.Observer
	if mode == "nop" {
		obs = consumer.NopObserver{}
	} else if mode != "none" {
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		cfg := idemqotel.Config{MeterProvider: mp, TracerProvider: tracenoop.NewTracerProvider()}
		if tracing(mode) {
			tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discard{}), sdktrace.WithSampler(benchSampler(mode)))
			defer func() { _ = tp.Shutdown(context.Background()) }()
			cfg.TracerProvider = tp
		}
		defer func() { _ = mp.Shutdown(context.Background()) }()
		tel, err := idemqotel.New(cfg)
		if err != nil {
			b.Fatal(err)
		}
		obs = tel.Consumer(benchOptions(mode))
	}
	var done atomic.Int64
	finished := make(chan struct{})
	c, err := natsjs.New(env.JS, natsjs.Config{
		Stream: stream, Durable: "bench", Store: st, Concurrency: 64, // FetchBatch: the default
		AdvisoryStream: env.Name("ADV" + run),
		DeadLetter: natsjs.DeadLetterConfig{Subject: env.Subject("dlqob" + run + ".x"), Stream: env.Name("DLQOB" + run),
			StreamSubjects: []string{env.Subject("dlqob" + run + ".>")}},
		Pipeline: consumer.Config{Logger: quiet(), Observer: obs},
	}, func(ctx context.Context, m *consumer.Message) error {
		if done.Add(1) == int64(n) {
			close(finished)
		}
		return nil
	})
	if err != nil {
		b.Fatal(err)
	}
	rctx, rcancel := context.WithCancel(context.Background())
	defer rcancel()
	start, cpu0, sw0, srv0 := time.Now(), cpuTime(), ctxSwitches(), serversCPU(servers)
	errc := make(chan error, 1)
	go func() { errc <- c.Run(rctx) }()
	select {
	case <-finished:
	case err := <-errc:
		b.Fatalf("Run returned early: %v", err)
	}
	wall, cpu, switches = time.Since(start), cpuTime()-cpu0, ctxSwitches()-sw0
	if srv1 := serversCPU(servers); srv0 < 0 || srv1 < 0 {
		srv = -1
	} else {
		srv = srv1 - srv0
	}
	rcancel()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	// Leave the server as clean as the next run found it.
	for _, name := range []string{stream, env.Name("DLQOB" + run)} {
		if err := env.JS.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			b.Fatal(err)
		}
	}
	return wall, cpu, switches, srv
}

// BenchmarkPipelineObserved measures the CPU cost per delivery of the
// observer in the pipeline: consumer.Pipeline.Process on memstore (claim,
// handler, complete), no broker, with the same modes as
// BenchmarkConsumeObserved, and "nop" (consumer.NopObserver: what having an
// Observer costs the pipeline itself — its clock reads and calls). Compare
// cpu-ns/op, which load from other processes does not inflate.
func BenchmarkPipelineObserved(b *testing.B) {
	for _, mode := range []string{"none", "nop", "metrics", "metrics-durations", "traces-10pct", "traces-all"} {
		b.Run(mode, func(b *testing.B) {
			var obs consumer.Observer
			if mode == "nop" {
				obs = consumer.NopObserver{}
			} else if mode != "none" {
				mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
				defer func() { _ = mp.Shutdown(context.Background()) }()
				cfg := idemqotel.Config{MeterProvider: mp, TracerProvider: tracenoop.NewTracerProvider()}
				if tracing(mode) {
					tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(discard{}), sdktrace.WithSampler(benchSampler(mode)))
					defer func() { _ = tp.Shutdown(context.Background()) }()
					cfg.TracerProvider = tp
				}
				tel, err := idemqotel.New(cfg)
				if err != nil {
					b.Fatal(err)
				}
				obs = tel.Consumer(benchOptions(mode))
			}
			g := &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.MessageIDKey(), NoFingerprint: true}
			p, err := consumer.NewPipeline(consumer.Config{Guard: g, Observer: obs, Logger: quiet(), HeartbeatInterval: -1},
				func(ctx context.Context, m *consumer.Message) error { return nil })
			if err != nil {
				b.Fatal(err)
			}
			msgs := make([]*consumer.Message, b.N)
			for i := range msgs {
				msgs[i] = &consumer.Message{ID: fmt.Sprint("m", i), Subject: "payments.requested", Attempt: 1,
					Header: map[string][]string{"traceparent": {benchTraceparent(0, i)}}}
			}
			ctx := context.Background()
			b.ReportAllocs()
			b.ResetTimer()
			cpu0 := cpuTime()
			for i := range b.N {
				if out := p.Process(ctx, msgs[i]); out.Action != consumer.Ack {
					b.Fatal(out)
				}
			}
			b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/op")
		})
	}
}

// benchTraceparent is the producer's trace context of message i of run: a
// fresh trace per message, sampled for one message in ten, as a producer
// sampling 10 % decides.
func benchTraceparent(run int64, i int) string {
	flags := "00"
	if i%10 == 0 {
		flags = "01"
	}
	return fmt.Sprintf("00-%016x%016x-b7ad6b7169203331-%s", run, i+1, flags)
}

// tracing reports whether mode records spans.
func tracing(mode string) bool { return strings.HasPrefix(mode, "traces-") }

// benchOptions is the consumer observer's options in mode: the defaults
// (with a group), and in "metrics-durations" every duration: the opt-in
// histograms and each store call's (StoreDurationEvery 1), as the payments
// demo records them.
func benchOptions(mode string) idemqotel.ConsumerOptions {
	o := idemqotel.ConsumerOptions{Group: "bench"}
	if mode == "metrics-durations" {
		o.ProcessDuration, o.HandlerDuration, o.StoreDurationEvery = true, true, 1
	}
	return o
}

// benchSampler is the consumer's sampler in mode: "traces-10pct" follows
// the producer's decision (sdktrace.ParentBased, as in production: a
// remote parent that is not sampled is not sampled here either), so one
// message in ten is traced; "traces-all" samples every message.
func benchSampler(mode string) sdktrace.Sampler {
	if mode == "traces-10pct" {
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0.1))
	}
	return sdktrace.AlwaysSample()
}

// benchModes are the observer modes compared, in order;
// IDEMQ_BENCH_REVERSE=1 runs them in the reverse order, to show that the
// order does not favour the first.
func benchModes() []string {
	modes := []string{"none", "metrics", "traces-10pct", "traces-all"}
	if os.Getenv("IDEMQ_BENCH_REVERSE") != "" {
		slices.Reverse(modes)
	}
	return modes
}

// ctxSwitches returns the voluntary and involuntary context switches of
// this process so far.
func ctxSwitches() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Nvcsw + ru.Nivcsw
}

// cpuTime returns the user and system CPU time this process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
