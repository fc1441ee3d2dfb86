package bench

import (
	"fmt"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/idemq/idemq/integration/harness"
)

// sideBySideBaseline is the variant every row of the side-by-side table is
// compared with: raw nats.go Consume + Ack.
const sideBySideBaseline = "raw-ack"

// sideBySideVariants are the rows of the side-by-side table: the raw
// baseline, idemq without dedupe, on memstore and on Redis, the floor of a
// batched Redis design (redisBatchFloor: no consumer, a bound), and the one
// fixed Watermill configuration (watermillBaseline).
func sideBySideVariants() []variant {
	return []variant{
		rawAck(),
		idemqVariant("idemq", noStore),
		idemqVariant("idemq-mem", memStore),
		idemqVariant("idemq-redis", redisStore),
		redisBatchFloor(),
		watermillNATS(watermillBaseline, wmSubscribersCount),
	}
}

// warmN is the message count of the warm-up round each variant runs
// before BenchmarkSideBySide's first cycle, outside the measurement.
const warmN = 2000

// BenchmarkSideBySide prints the side-by-side table (Markdown) that the
// README's benchmark table comes from: for each of sideBySideVariants, msg/s,
// the rate over raw-ack's, the CPU per message of nats-server, redis-server
// and this process (the client) and their total, the client's heap
// allocations per message, and for the idemq dedupe variants the rate over
// watermill-nats'. On the 2-core machine the broker, Redis and the consumer
// share the CPU, so total CPU per message is the honest measure of cost;
// msg/s says how the three together fared on this machine.
//
// Each iteration (-benchtime Nx sets N; use at least 3) is one cycle that
// consumes the same pre-filled stream once with every variant, in an order
// rotated from one cycle to the next, so that background load falls on
// every variant alike; every cell is the median over the cycles of the
// per-cycle figure, with its range. Ratios are taken within a cycle. Before
// the first cycle each variant consumes a small stream once, unmeasured.
//
// The servers are found through their listening ports (the ports of
// IDEMQ_NATS_URL and IDEMQ_REDIS_URL, when these name this machine): the
// socket's inode in /proc/net/tcp{,6}, then the process holding it among
// /proc/<pid>/fd. Their CPU is utime+stime from /proc/<pid>/stat over the
// timed region (10ms resolution) and includes anything else they served
// meanwhile: on a shared machine other tests' traffic lands in those
// columns (the redis-server column of the variants without Redis shows how
// much). The client's CPU is getrusage(RUSAGE_SELF); its allocations are
// runtime.MemStats.Mallocs. The table states the load average before and
// after.
func BenchmarkSideBySide(b *testing.B) {
	fx := newFixture(b, benchN(b))
	vs := sideBySideVariants()
	fx.redis(b) // finds redis-server before the first cycle
	warm := newFixture(b, warmN)
	for _, v := range vs {
		runRound(b, warm, v, func(bool) {})
	}
	load0 := loadAvg()
	var cycles []results
	for b.Loop() {
		b.StopTimer()
		cycles = append(cycles, runCycle(b, fx, vs, len(cycles), benchTimer(b)))
		b.StartTimer()
	}
	load1 := loadAvg()
	rows := summariseSideBySide(vs, cycles)
	for _, v := range vs {
		r := rows[v.name]
		b.ReportMetric(r.rate.median, v.name+":msg/s")
		b.ReportMetric(r.xRaw.median, v.name+":x_raw")
		if r.total.n > 0 {
			b.ReportMetric(r.total.median, v.name+":total-cpu-µs/msg")
		}
	}
	fmt.Print(sideBySideTable(fx, len(cycles), vs, rows, load0, load1))
}

// runCycle consumes fx's stream once with every variant of vs, starting
// with the cycle-th one, and returns each variant's measurement.
func runCycle(tb testing.TB, fx *fixture, vs []variant, cycle int, timer func(bool)) results {
	tb.Helper()
	rs := results{}
	for j := range vs {
		v := vs[(cycle+j)%len(vs)]
		t := &totals{}
		t.add(fx.n, runRound(tb, fx, v, timer))
		rs[v.name] = t
	}
	return rs
}

// sideRow is one row of the side-by-side table: each a median and range
// over the cycles.
type sideRow struct {
	rate, xRaw, xWatermill     stat
	nats, redis, client, total stat
	allocs                     stat
}

func summariseSideBySide(vs []variant, cycles []results) map[string]sideRow {
	out := map[string]sideRow{}
	for _, v := range vs {
		var rate, xr, xw, nats, redis, client, total, allocs []float64
		for _, rs := range cycles {
			t := rs.get(v.name)
			rate = append(rate, t.rate())
			if base := rs.get(sideBySideBaseline).rate(); base > 0 {
				xr = append(xr, t.rate()/base)
			}
			if x := rs.xWatermill(v); x > 0 {
				xw = append(xw, x)
			}
			c := t.cpuPerMsg()
			client = append(client, c)
			allocs = append(allocs, t.allocsPerMsg())
			n, nok := t.natsPerMsg()
			r, rok := t.redisPerMsg()
			if nok {
				nats = append(nats, n)
			}
			if rok {
				redis = append(redis, r)
			}
			if nok && rok {
				total = append(total, c+n+r)
			}
		}
		out[v.name] = sideRow{
			rate: newStat(rate), xRaw: newStat(xr), xWatermill: newStat(xw),
			nats: newStat(nats), redis: newStat(redis), client: newStat(client), total: newStat(total),
			allocs: newStat(allocs),
		}
	}
	return out
}

// cell formats s as "median (min..max)" with format f, "n/a" when empty.
func cell(s stat, f string) string {
	if s.n == 0 {
		return "n/a"
	}
	return fmt.Sprintf(f+" ("+f+".."+f+")", s.median, s.min, s.max)
}

// sideBySideTable formats the side-by-side table as Markdown, with a
// heading that names the run's conditions.
func sideBySideTable(fx *fixture, cycles int, vs []variant, rows map[string]sideRow, load0, load1 string) string {
	nats, redis, natsWhy, redisWhy := fx.servers()
	name := func(p *harness.LocalServer, why, what string) string {
		if p == nil {
			return what + " not measured: " + why
		}
		return p.String()
	}
	var sb strings.Builder
	fmt.Fprintf(&sb, "\nidemq side by side: N=%d messages per round, %d cycles (every variant once per cycle, order rotated), GOMAXPROCS=%d, NumCPU=%d\n",
		fx.n, cycles, runtime.GOMAXPROCS(0), runtime.NumCPU())
	fmt.Fprintf(&sb, "servers: %s; %s\n", name(nats, natsWhy, "nats-server"), name(redis, redisWhy, "redis-server"))
	fmt.Fprintf(&sb, "load average (1, 5, 15 min): %s before the cycles, %s after\n", load0, load1)
	fmt.Fprintf(&sb, "cells: median (min..max) over the cycles; CPU in µs per message\n\n")
	fmt.Fprintf(&sb, "| variant | msg/s | × %s | nats-server CPU | redis-server CPU | client CPU | total CPU | client allocs/msg | × %s |\n",
		sideBySideBaseline, watermillBaseline)
	sb.WriteString("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, v := range vs {
		r := rows[v.name]
		xw := "–"
		if r.xWatermill.n > 0 {
			xw = cell(r.xWatermill, "%.2f")
		}
		fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", v.name,
			cell(r.rate, "%.0f"), cell(r.xRaw, "%.2f"),
			cell(r.nats, "%.1f"), cell(r.redis, "%.1f"), cell(r.client, "%.1f"), cell(r.total, "%.1f"),
			cell(r.allocs, "%.1f"), xw)
	}
	return sb.String()
}

// TestSideBySideSmoke runs one cycle of the side-by-side variants on a
// small stream and formats the table, so that BenchmarkSideBySide's code
// keeps compiling and stays correct in ordinary test runs (the figures of so
// small a run mean nothing; the table is logged).
func TestSideBySideSmoke(t *testing.T) {
	fx := newFixture(t, smokeN)
	vs := sideBySideVariants()
	fx.redis(t)
	rs := runCycle(t, fx, vs, 0, func(bool) {})
	rows := summariseSideBySide(vs, []results{rs})
	for _, v := range vs {
		if rows[v.name].rate.n != 1 || rows[v.name].xRaw.n != 1 {
			t.Errorf("%s: rate and ratio to raw missing: %+v", v.name, rows[v.name])
		}
	}
	table := sideBySideTable(fx, 1, vs, rows, loadAvg(), loadAvg())
	if got := strings.Count(table, "\n| "); got != len(vs)+1 {
		t.Errorf("table has %d rows, want a header and %d variants:\n%s", got, len(vs), table)
	}
	t.Log(table)
}

// TestFindLocalServer finds this process through a socket it listens on,
// and reads its CPU time.
func TestFindLocalServer(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("server processes are found through /proc, on Linux only")
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	p, err := harness.FindLocalServer(fmt.Sprintf("nats://127.0.0.1:%d", port), 4222)
	if err != nil {
		t.Fatal(err)
	}
	if p.PID != os.Getpid() || p.Port != port {
		t.Errorf("found %v, want this process (pid %d) on port %d", p, os.Getpid(), port)
	}
	// Burn some CPU so that the clock-tick count is not zero.
	for i := 0; ; i++ {
		d, err := p.CPU()
		if err != nil {
			t.Fatal(err)
		}
		if d > 0 {
			break
		}
		_, _ = io.WriteString(io.Discard, strings.Repeat("x", 1<<16))
		if i > 1e7 {
			t.Fatal("CPU time stays 0")
		}
	}
	if _, err := harness.FindLocalServer("redis://192.0.2.1:6379/0", 6379); err == nil {
		t.Error("a TEST-NET address counted as this machine")
	}
}
