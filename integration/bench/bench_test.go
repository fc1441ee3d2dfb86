package bench

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Watermill's in-memory ExpiringKeyRepository starts a cleanup
		// goroutine on context.Background() that nothing can stop
		// (watermill v1.5.1 middleware.NewMapExpiringKeyRepository).
		goleak.IgnoreTopFunction("github.com/ThreeDotsLabs/watermill/message/router/middleware.(*mapExpiringKeyRepository).cleanOutLoop"),
	)
}

// EnvN names the variable that overrides the benchmark's message count.
const EnvN = "IDEMQ_BENCH_N"

// defaultN is the benchmark's message count when EnvN is unset.
const defaultN = 20000

// smokeN is TestBenchSmoke's message count.
const smokeN = 300

// session is one variant set up for one round, outside the timed region.
type session interface {
	// start begins consuming the round's stream and returns without
	// waiting for the messages. The timed region starts just before it.
	start(ctx context.Context) error
	// stop ends consumption, releases everything the session started and
	// reports the first error seen while consuming. Called once, after the
	// timed region.
	stop() error
}

// variant is one way of consuming the stream.
type variant struct {
	name string
	// prepare builds the session for round r (outside the timed region). It
	// may end the test, e.g. skip when a service is missing.
	prepare func(tb testing.TB, r *round) session
	// baseline names the raw variant this one is compared with ("" for the
	// baselines themselves).
	baseline string
	// watermill marks Watermill variants.
	watermill bool
	// dedupe marks variants that dedupe; idemq dedupe variants are compared
	// with the Watermill baseline (watermillBaseline).
	dedupe bool
}

// variants lists every variant in the order they run: baselines first, so
// that each later variant can report its ratios.
func variants() []variant {
	return []variant{
		rawAck(),
		rawDoubleAck(),
		rawFetch(),
		watermillJetStream("watermill-js", wmSubscriptions),
		watermillNATS("watermill-nats", wmSubscribersCount),
		idemqVariant("idemq", noStore),
		idemqVariant("idemq-mem", memStore),
		idemqVariant("idemq-redis", redisStore),
		idemqVariant("idemq-redis-unbatched", unbatchedRedisStore),
	}
}

// measurement is what one round measured.
type measurement struct {
	elapsed time.Duration
	// cpu is the benchmark process's CPU time (user+system) in the timed
	// region: the client side's cost. The servers' CPU is not included.
	cpu time.Duration
	// out is the number of messages the round's connection sent to NATS:
	// one ack per message plus pull requests (and anything else a variant
	// sends), so out/N - 1 is the pull requests per message.
	out uint64
	// natsCPU and redisCPU are the CPU time (user+system) of the
	// nats-server and redis-server processes in the timed region, read from
	// /proc (10ms resolution); -1 when the process is not known. They
	// include whatever else those shared servers did meanwhile.
	natsCPU, redisCPU time.Duration
	// mallocs is the heap allocations of this process in the timed region
	// (runtime.MemStats.Mallocs).
	mallocs uint64
}

// runRound consumes the stream once with v. The timed region runs from
// start until every message was handled and its ack processed by the
// server; timer switches the benchmark timer (a no-op in tests).
func runRound(tb testing.TB, fx *fixture, v variant, timer func(on bool)) measurement {
	tb.Helper()
	r := fx.newRound(tb, v.name)
	s := v.prepare(tb, r)
	ctx, cancel := context.WithTimeout(context.Background(), roundTimeout)
	defer cancel()

	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	srv0 := fx.serverCPU()
	cpu0 := processCPU()
	out0 := r.nc.Stats().OutMsgs
	timer(true)
	t0 := time.Now()
	err := s.start(ctx)
	if err == nil {
		err = r.waitAcked(ctx)
	}
	m := measurement{elapsed: time.Since(t0)}
	timer(false)
	m.cpu = processCPU() - cpu0
	m.out = r.nc.Stats().OutMsgs - out0
	srv1 := fx.serverCPU()
	runtime.ReadMemStats(&ms1)
	m.natsCPU = cpuDelta(srv0.nats, srv1.nats)
	m.redisCPU = cpuDelta(srv0.redis, srv1.redis)
	m.mallocs = ms1.Mallocs - ms0.Mallocs

	stopStart := time.Now()
	if serr := s.stop(); err == nil {
		err = serr
	}
	r.finish(tb)
	if testing.Verbose() {
		tb.Logf("%s round %s: %d messages in %v (stop took %v)", v.name, r.id, fx.n, m.elapsed, time.Since(stopStart))
	}
	if err != nil {
		tb.Fatalf("%s round %s: %v", v.name, r.id, err)
	}
	return m
}

// totals accumulates one variant's rounds.
type totals struct {
	rounds  int
	msgs    int
	elapsed time.Duration
	cpu     time.Duration
	out     uint64
	mallocs uint64
	// natsCPU and redisCPU sum the servers' CPU over the rounds that
	// measured it, natsMsgs and redisMsgs the messages of those rounds.
	natsCPU, redisCPU   time.Duration
	natsMsgs, redisMsgs int
}

func (t *totals) add(n int, m measurement) {
	t.rounds++
	t.msgs += n
	t.elapsed += m.elapsed
	t.cpu += m.cpu
	t.out += m.out
	t.mallocs += m.mallocs
	if m.natsCPU >= 0 {
		t.natsCPU += m.natsCPU
		t.natsMsgs += n
	}
	if m.redisCPU >= 0 {
		t.redisCPU += m.redisCPU
		t.redisMsgs += n
	}
}

// perMsg is d in microseconds per message, ok false without messages.
func perMsg(d time.Duration, msgs int) (float64, bool) {
	if msgs == 0 {
		return 0, false
	}
	return float64(d.Nanoseconds()) / 1e3 / float64(msgs), true
}

// natsPerMsg is nats-server's CPU per message in microseconds, ok false
// when it was not measured.
func (t totals) natsPerMsg() (float64, bool) { return perMsg(t.natsCPU, t.natsMsgs) }

// redisPerMsg is redis-server's CPU per message in microseconds, ok false
// when it was not measured.
func (t totals) redisPerMsg() (float64, bool) { return perMsg(t.redisCPU, t.redisMsgs) }

// allocsPerMsg is this process's heap allocations per message.
func (t totals) allocsPerMsg() float64 {
	if t.msgs == 0 {
		return 0
	}
	return float64(t.mallocs) / float64(t.msgs)
}

// outPerMsg is the messages sent to NATS per message consumed.
func (t totals) outPerMsg() float64 {
	if t.msgs == 0 {
		return 0
	}
	return float64(t.out) / float64(t.msgs)
}

// rate is messages per second over all rounds.
func (t totals) rate() float64 {
	if t.elapsed <= 0 {
		return 0
	}
	return float64(t.msgs) / t.elapsed.Seconds()
}

// cpuPerMsg is the client CPU per message in microseconds.
func (t totals) cpuPerMsg() float64 {
	v, _ := perMsg(t.cpu, t.msgs)
	return v
}

// results holds the totals of every variant of one run.
type results map[string]*totals

func (rs results) get(name string) totals {
	if t := rs[name]; t != nil {
		return *t
	}
	return totals{}
}

// xRaw is v's rate over its raw baseline's, 0 when either is missing.
func (rs results) xRaw(v variant) float64 {
	base := rs.get(v.baseline).rate()
	if v.baseline == "" || base == 0 {
		return 0
	}
	return rs.get(v.name).rate() / base
}

// xWatermill is v's rate over the Watermill baseline's (watermillBaseline,
// one fixed configuration), for idemq variants that dedupe; 0 otherwise or
// when the baseline did not run.
func (rs results) xWatermill(v variant) float64 {
	wm := rs.get(watermillBaseline).rate()
	if v.watermill || !v.dedupe || wm == 0 {
		return 0
	}
	return rs.get(v.name).rate() / wm
}

func benchN(tb testing.TB) int { return envInt(tb, EnvN, defaultN) }

func benchTimer(b *testing.B) func(bool) {
	return func(on bool) {
		if on {
			b.StartTimer()
		} else {
			b.StopTimer()
		}
	}
}

// BenchmarkConsume consumes the same pre-filled stream with each variant as
// a sub-benchmark (select one with -bench 'Consume/idemq-redis$' to profile
// it). One iteration is one full consumption of N messages; ns/op is per
// message. Each sub-benchmark reports msg/s, client CPU µs per message and,
// when its baselines ran earlier in the same run, x_raw (rate over its raw
// baseline's) and x_watermill (over watermillBaseline's). Under
// background load prefer BenchmarkRatios, which interleaves the variants.
func BenchmarkConsume(b *testing.B) {
	b.StopTimer()
	fx := newFixture(b, benchN(b))
	vs := variants()
	rs := results{}
	for _, v := range vs {
		b.Run(v.name, func(b *testing.B) {
			b.StopTimer()
			t := &totals{}
			for range b.N {
				t.add(fx.n, runRound(b, fx, v, benchTimer(b)))
			}
			rs[v.name] = t
			b.ReportMetric(float64(t.elapsed.Nanoseconds())/float64(t.msgs), "ns/op")
			b.ReportMetric(t.rate(), "msg/s")
			b.ReportMetric(t.cpuPerMsg(), "cpu-µs/msg")
			b.ReportMetric(t.outPerMsg(), "nats-out/msg")
			if x := rs.xRaw(v); x > 0 {
				b.ReportMetric(x, "x_raw")
			}
			if x := rs.xWatermill(v); x > 0 {
				b.ReportMetric(x, "x_watermill")
			}
		})
	}
	fmt.Print(summaryTable(fx.n, 1, vs, summarise(vs, []results{rs}, rs), rs))
}

// BenchmarkRatios runs every variant (BenchmarkSideBySide, the table of
// record, runs the main ones and redis-batch-floor with every process's CPU). Each iteration is one
// cycle: it consumes the same pre-filled stream once with every variant, in
// an order rotated from one cycle to the next, so that background load
// (other builds on the machine) falls on all variants alike. Ratios are
// computed within each cycle, where the load was similar, and summarised by
// their median over the cycles, with the spread (min..max). Metrics are
// named "<variant>:<unit>": msg/s (median of the cycles), x_raw and
// x_watermill (medians of the per-cycle ratios). The table is printed.
// Run at least -benchtime=3x.
func BenchmarkRatios(b *testing.B) {
	b.StopTimer()
	fx := newFixture(b, benchN(b))
	vs := variants()
	var cycles []results
	all := results{}
	for i := range b.N {
		rs := results{}
		for j := range vs {
			v := vs[(i+j)%len(vs)]
			m := runRound(b, fx, v, benchTimer(b))
			rs[v.name] = &totals{}
			rs[v.name].add(fx.n, m)
			if all[v.name] == nil {
				all[v.name] = &totals{}
			}
			all[v.name].add(fx.n, m)
		}
		cycles = append(cycles, rs)
	}
	sum := summarise(vs, cycles, all)
	var msgs int
	var elapsed time.Duration
	for _, v := range vs {
		t := all.get(v.name)
		msgs += t.msgs
		elapsed += t.elapsed
		row := sum[v.name]
		b.ReportMetric(row.rate.median, v.name+":msg/s")
		if row.xRaw.n > 0 {
			b.ReportMetric(row.xRaw.median, v.name+":x_raw")
		}
		if row.xWatermill.n > 0 {
			b.ReportMetric(row.xWatermill.median, v.name+":x_watermill")
		}
	}
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(msgs), "ns/op")
	fmt.Print(summaryTable(fx.n, len(cycles), vs, sum, all))
}

// stat is the median and range of a per-cycle quantity.
type stat struct {
	n                int
	median, min, max float64
}

func newStat(xs []float64) stat {
	if len(xs) == 0 {
		return stat{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return stat{n: len(s), median: m, min: s[0], max: s[len(s)-1]}
}

func (s stat) String() string {
	if s.n == 0 {
		return ""
	}
	return fmt.Sprintf("%.2f (%.2f..%.2f)", s.median, s.min, s.max)
}

// row summarises one variant over the cycles of BenchmarkRatios.
type row struct {
	rate, xRaw, xWatermill stat
}

func summarise(vs []variant, cycles []results, all results) map[string]row {
	out := map[string]row{}
	for _, v := range vs {
		var rates, xr, xw []float64
		for _, rs := range cycles {
			rates = append(rates, rs.get(v.name).rate())
			if x := rs.xRaw(v); x > 0 {
				xr = append(xr, x)
			}
			if x := rs.xWatermill(v); x > 0 {
				xw = append(xw, x)
			}
		}
		out[v.name] = row{rate: newStat(rates), xRaw: newStat(xr), xWatermill: newStat(xw)}
	}
	return out
}

// summaryTable formats BenchmarkRatios' results: medians over the cycles,
// ratio spreads, and client CPU and NATS messages sent per message over all
// rounds.
func summaryTable(n, cycles int, vs []variant, sum map[string]row, all results) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nidemq bench: N=%d messages per round, %d cycles; medians over cycles (min..max); CPU per message over all rounds\n", n, cycles)
	fmt.Fprintf(&sb, "%-22s %20s %11s %11s %11s %11s %13s %-8s %20s %20s\n", "variant", "msg/s", "client-µs", "nats-µs", "redis-µs", "allocs/msg", "nats-out/msg", "baseline", "x baseline", "x "+watermillBaseline)
	opt := func(v float64, ok bool) string {
		if !ok {
			return "n/a"
		}
		return fmt.Sprintf("%.1f", v)
	}
	for _, v := range vs {
		r := sum[v.name]
		t := all.get(v.name)
		fmt.Fprintf(&sb, "%-22s %20s %11.1f %11s %11s %11.1f %13.3f %-8s %20s %20s\n", v.name,
			fmt.Sprintf("%.0f (%.0f..%.0f)", r.rate.median, r.rate.min, r.rate.max),
			t.cpuPerMsg(), opt(t.natsPerMsg()), opt(t.redisPerMsg()), t.allocsPerMsg(), t.outPerMsg(), v.baseline, r.xRaw, r.xWatermill)
	}
	return sb.String()
}

// TestBenchSmoke runs every variant once on a small stream, checking that
// each consumes every message exactly once and that the server saw every
// ack, so the benchmark's code stays compiling and correct in ordinary test
// runs.
func TestBenchSmoke(t *testing.T) {
	fx := newFixture(t, smokeN)
	for _, v := range variants() {
		t.Run(v.name, func(t *testing.T) {
			runRound(t, fx, v, func(bool) {})
		})
	}
}
