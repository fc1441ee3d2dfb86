package chaos

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/integration/harness"
)

// Environment of TestScaleOut.
const (
	// EnvBench, set to 1, runs TestScaleOut.
	EnvBench = "IDEMQ_CHAOS_BENCH"
	// EnvBenchN sets the payments per round (default 10000).
	EnvBenchN = "IDEMQ_CHAOS_BENCH_N"
	// EnvBenchWorkers sets the worker counts, comma-separated (default
	// "1,2,4").
	EnvBenchWorkers = "IDEMQ_CHAOS_BENCH_WORKERS"
)

// scaleRound is one measurement of TestScaleOut.
type scaleRound struct {
	workers                   int
	window                    time.Duration
	workerCPU, natsCPU, pgCPU time.Duration
	otherCPU                  time.Duration // the rest of the machine: this test, other users
}

// TestScaleOut measures the payments workers' throughput on the 3-node
// cluster with R3 streams and a Postgres of its own, with 1, 2 and 4 worker
// processes (-concurrency 4 each, the contract's default): each round
// fills a fresh PAYMENTS stream with N payments, starts the workers on a
// fresh database and times them from their start until every payment has
// its ledger row and its outcome event is in the stream (the relays
// included). CPU time per message comes from /proc/<pid>/stat deltas over
// the same window: the worker processes, the three nats-server processes,
// and Postgres (the postmaster, its live backends and the ones it reaped).
// The last column is the CPU the rest of the machine used meanwhile (this
// test's polling, other users), from /proc/stat, in cores: the machine is
// shared, and what others take is not there for the workers. It runs only
// with IDEMQ_CHAOS_BENCH=1; the figures are logged, never asserted, but
// every round must apply each payment exactly once.
func TestScaleOut(t *testing.T) {
	if os.Getenv(EnvBench) != "1" {
		t.Skipf("a measurement: set %s=1 to run it", EnvBench)
	}
	n := 10000
	if s := os.Getenv(EnvBenchN); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v < 1 {
			t.Fatalf("%s=%q: want a positive number", EnvBenchN, s)
		}
		n = v
	}
	counts := []int{1, 2, 4}
	if s := os.Getenv(EnvBenchWorkers); s != "" {
		counts = nil
		for _, f := range strings.Split(s, ",") {
			v, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || v < 1 {
				t.Fatalf("%s=%q: want a list of positive numbers", EnvBenchWorkers, s)
			}
			counts = append(counts, v)
		}
	}
	bin := paymentsBinary(t)
	c := harness.StartNATSCluster(t)
	pg := harness.StartPostgres(t)
	env := c.Env(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	admin, err := sql.Open("pgx", pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	admin.SetMaxOpenConns(1)

	var rounds []scaleRound
	for _, k := range counts {
		r, err := scaleOutRound(ctx, t, c, env, pg, admin, bin, k, n)
		if err != nil {
			t.Fatalf("%d workers: %v", k, err)
		}
		rounds = append(rounds, r)
		t.Logf("%d workers: %d payments in %.1fs", k, n, r.window.Seconds())
	}

	var b strings.Builder
	fmt.Fprintf(&b, "\n%d payments per round; nats-server %s, 3 nodes, R3 streams; Postgres of the test's own (fsync off); %d CPUs; workers -concurrency 4\n",
		n, env.Conn.ConnectedServerVersion(), runtime.NumCPU())
	fmt.Fprintf(&b, "| worker processes | msg/s | window | CPU µs/msg: workers | nats-server (3) | Postgres | sum | rest of the machine meanwhile (cores) |\n|---|---|---|---|---|---|---|---|\n")
	for _, r := range rounds {
		per := func(d time.Duration) float64 { return float64(d.Microseconds()) / float64(n) }
		fmt.Fprintf(&b, "| %d | %.0f | %.1fs | %.0f | %.0f | %.0f | %.0f | %.2f |\n",
			r.workers, float64(n)/r.window.Seconds(), r.window.Seconds(),
			per(r.workerCPU), per(r.natsCPU), per(r.pgCPU), per(r.workerCPU+r.natsCPU+r.pgCPU), r.otherCPU.Seconds()/r.window.Seconds())
	}
	t.Log(b.String())
}

// scaleOutRound runs one round with k workers on a fresh database and
// fresh streams.
func scaleOutRound(ctx context.Context, t *testing.T, c *harness.NATSCluster, env *harness.NATSEnv, pg *harness.PostgresServer,
	admin *sql.DB, bin string, k, n int) (scaleRound, error) {
	r := scaleRound{workers: k}
	dbName := fmt.Sprintf("scale_%d", k)
	if _, err := admin.ExecContext(ctx, "CREATE DATABASE "+dbName); err != nil {
		return r, err
	}
	dbURL := strings.Replace(pg.URL, "/postgres?", "/"+dbName+"?", 1)
	db, err := sql.Open("pgx", dbURL)
	if err != nil {
		return r, err
	}
	defer db.Close()
	db.SetMaxOpenConns(2)
	wl := newWorkload(env.JS, db, uint64(k))
	if err := wl.fund(ctx); err != nil {
		return r, err
	}

	// Fresh R3 streams, filled with n payments.
	for _, s := range []string{streamPayments, streamDLQ} {
		if err := env.JS.DeleteStream(ctx, s); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			return r, err
		}
	}
	run := &chaosRun{t: t, c: c, env: env}
	if err := run.createStreams(ctx); err != nil {
		return r, err
	}
	for i := range n {
		// Random accounts among the rich ones: concurrent transfers meet
		// on an account's row lock as often as chance has it.
		from := wl.intN(accountCount - poorAccounts)
		to := (from + 1 + wl.intN(accountCount-poorAccounts-1)) % (accountCount - poorAccounts)
		p := payment{
			PaymentID: fmt.Sprintf("pay-%06d", i),
			From:      wl.accounts[from],
			To:        wl.accounts[to],
			Amount:    1 + int64(wl.intN(maxAmount)),
			Currency:  "GBP",
			Timestamp: time.Now().Unix(),
		}
		msg := nats.NewMsg(subjRequested)
		msg.Header.Set(headerKey, fmt.Sprintf("k-%06d", i))
		msg.Data = mustJSON(p)
		if _, err := env.JS.PublishMsgAsync(msg, jetstream.WithMsgID(fmt.Sprintf("scale.%d", i))); err != nil {
			return r, err
		}
	}
	select {
	case <-env.JS.PublishAsyncComplete():
	case <-time.After(time.Minute):
		return r, errors.New("prefill: PubAcks missing after 1m")
	}
	if info, err := streamInfo(ctx, env.JS, streamPayments); err != nil || info.State.Msgs != uint64(n) {
		return r, fmt.Errorf("prefill: stream info %v, err %v", info, err)
	}

	var natsPIDs []int
	for i := range c.Size() {
		natsPIDs = append(natsPIDs, c.NodePID(i))
	}
	busy0 := machineBusy()
	nats0, pg0 := processCPU(natsPIDs...), treeCPU(pg.PID())
	t0 := time.Now()
	ws := newWorkerSet(t, bin, k, "worker", "-nats", c.URLs(), "-db", dbURL, "-log-format", "json")
	defer ws.stop()
	if err := ws.startAll(ctx); err != nil {
		return r, err
	}
	for {
		var ledger, pending int64
		err := db.QueryRowContext(ctx, `SELECT (SELECT count(*) FROM transfers), (SELECT count(*) FROM idemq_outbox WHERE state = 'pending')`).Scan(&ledger, &pending)
		if err == nil && ledger == int64(n) && pending == 0 {
			info, err := streamInfo(ctx, env.JS, streamPayments, jetstream.WithSubjectFilter("payments.*"))
			if err == nil && info.State.Subjects[subjCompleted]+info.State.Subjects[subjRejected] == uint64(n) {
				break
			}
		}
		if ctx.Err() != nil {
			return r, ctx.Err()
		}
		time.Sleep(100 * time.Millisecond)
	}
	r.window = time.Since(t0)
	r.workerCPU = processCPU(ws.pids()...)
	r.natsCPU = processCPU(natsPIDs...) - nats0
	r.pgCPU = treeCPU(pg.PID()) - pg0
	r.otherCPU = machineBusy() - busy0 - r.workerCPU - r.natsCPU - r.pgCPU
	ws.stop()

	// Exactly once, whatever the speed.
	var rows, keys int64
	if err := db.QueryRowContext(ctx, `SELECT count(*), count(DISTINCT idempotency_key) FROM transfers`).Scan(&rows, &keys); err != nil {
		return r, err
	}
	if rows != int64(n) || keys != int64(n) {
		return r, fmt.Errorf("%d ledger rows for %d keys, want %d each", rows, keys, n)
	}
	if len(ws.unexpectedExits()) > 0 {
		return r, fmt.Errorf("workers exited: %+v", ws.unexpectedExits())
	}
	return r, nil
}
