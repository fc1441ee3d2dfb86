package chaos

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/integration/harness"
)

// EnvLong, set to 1, runs TestPaymentsChaos in its long mode.
const EnvLong = "IDEMQ_CHAOS_LONG"

// EnvPGDown holds Postgres down this long (a Go duration) at each restart
// instead of starting it again at once. Outages longer than the worker's
// retry backoff dead-letter payments (TestInboxDatabaseOutageDeadLetters).
const EnvPGDown = "IDEMQ_CHAOS_PG_DOWN"

// EnvSeed sets the workload's random seed (default: from the clock; the
// report prints it, so a run can be repeated with the same workload).
const EnvSeed = "IDEMQ_CHAOS_SEED"

// chaosConfig sizes one run of TestPaymentsChaos.
type chaosConfig struct {
	mode        string
	payments    int           // originals (payments and overdrafts)
	produce     time.Duration // how long the producer spreads them over
	workers     int           // worker processes
	concurrency int           // -concurrency of each
	ackWait     time.Duration // -ack-wait of each
	workerKills int           // SIGKILLs of random workers, each restarted
	leaderKills int           // kills of the PAYMENTS stream leader, each restarted
	pgRestarts  int           // immediate-mode restarts of Postgres
	pgDown      time.Duration // how long Postgres stays down each time (EnvPGDown; default 0: a plain Restart)
	settle      time.Duration // how long the backlog may take to drain after producing
}

var (
	shortMode = chaosConfig{
		mode: "short", payments: 1000, produce: 55 * time.Second,
		workers: 4, concurrency: 4, ackWait: 5 * time.Second,
		workerKills: 16, leaderKills: 2, pgRestarts: 1, settle: 2 * time.Minute,
	}
	longMode = chaosConfig{
		mode: "long", payments: 20000, produce: 4 * time.Minute,
		workers: 4, concurrency: 4, ackWait: 5 * time.Second,
		workerKills: 60, leaderKills: 4, pgRestarts: 2, settle: 8 * time.Minute,
	}
)

// timeline records what the test did to the system, with the time since
// the workers started.
type timeline struct {
	start   time.Time
	mu      sync.Mutex
	entries []timelineEntry
}

// add records what happened now.
func (tl *timeline) add(format string, args ...any) { tl.addAt(time.Now(), format, args...) }

// addAt records what happened at t (the start of something that took a
// while: the line is written when it is over).
func (tl *timeline) addAt(t time.Time, format string, args ...any) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.entries = append(tl.entries, timelineEntry{at: t.Sub(tl.start), text: fmt.Sprintf(format, args...)})
}

// all returns the entries in time order.
func (tl *timeline) all() []string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	es := append([]timelineEntry(nil), tl.entries...)
	sort.SliceStable(es, func(i, j int) bool { return es[i].at < es[j].at })
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = fmt.Sprintf("[%6.1fs] %s", e.at.Seconds(), e.text)
	}
	return lines
}

type timelineEntry struct {
	at   time.Duration
	text string
}

// chaosRun is the state of one TestPaymentsChaos run.
type chaosRun struct {
	t   *testing.T
	cfg chaosConfig
	c   *harness.NATSCluster
	env *harness.NATSEnv
	pg  *harness.PostgresServer
	db  *sql.DB
	ws  *workerSet
	wl  *workload
	tl  *timeline
	rng *rand.Rand // the chaos schedule's choices; used by one goroutine

	workerKills, leaderKills, pgRestarts int
	pgDowns                              []time.Duration
}

// TestPaymentsChaos runs the payments workload against four
// examples/payments worker processes on a 3-node NATS cluster (the
// machine's nats-server) with R3 PAYMENTS and DLQ streams and a Postgres
// server of its own, while it SIGKILLs random workers, kills the PAYMENTS
// stream leader and crashes Postgres, restarting each; then it checks the
// invariants from the database and the streams. See the package doc.
//
// Redis is not part of this workload: the payments worker keeps its dedupe
// records in Postgres (the SQL inbox), so there is no Redis master to
// kill; redisstore's failover is tested on a Redis Cluster in
// dedupe/redisstore (TestClusterFailover).
func TestPaymentsChaos(t *testing.T) {
	cfg := shortMode
	if os.Getenv(EnvLong) == "1" {
		cfg = longMode
	}
	if s := os.Getenv(EnvPGDown); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("%s=%q: %v", EnvPGDown, s, err)
		}
		cfg.pgDown = d
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv(EnvSeed); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("%s=%q: %v", EnvSeed, s, err)
		}
		seed = v
	}
	begin := time.Now()
	bin := paymentsBinary(t)
	c := harness.StartNATSCluster(t)
	pg := harness.StartPostgres(t)
	env := c.Env(t)
	ctx, cancel := context.WithTimeout(context.Background(), cfg.produce+cfg.settle+3*time.Minute)
	defer cancel()

	db, err := sql.Open("pgx", pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(4)

	r := &chaosRun{t: t, cfg: cfg, c: c, env: env, pg: pg, db: db,
		rng: rand.New(rand.NewPCG(seed, 1))}
	r.wl = newWorkload(env.JS, db, seed)
	if err := r.wl.fund(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.createStreams(ctx); err != nil {
		t.Fatal(err)
	}
	r.ws = newWorkerSet(t, bin, cfg.workers, "worker", "-nats", c.URLs(), "-db", pg.URL,
		"-concurrency", strconv.Itoa(cfg.concurrency), "-ack-wait", cfg.ackWait.String(), "-log-format", "json")
	if err := r.ws.startAll(ctx); err != nil {
		t.Fatal(err)
	}
	setup := time.Since(begin)
	r.tl = &timeline{start: time.Now()}
	r.tl.add("%d workers ready (nats-server %s, cluster %s; setup took %.1fs)", cfg.workers, env.Conn.ConnectedServerVersion(), c.Name, setup.Seconds())

	// Load and chaos together.
	counts := countsFor(cfg.payments)
	plan := r.wl.plan(counts)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	mainDone := make(chan struct{})
	wg.Go(func() {
		defer close(mainDone)
		if err := r.wl.runMain(ctx, plan, cfg.produce); err != nil {
			errs <- fmt.Errorf("producer: %w", err)
		}
	})
	wg.Go(func() {
		if err := r.wl.runLate(ctx, counts, cfg.produce, mainDone); err != nil {
			errs <- fmt.Errorf("late producer: %w", err)
		}
	})
	wg.Go(func() {
		if err := r.killWorkers(ctx); err != nil {
			errs <- fmt.Errorf("worker kills: %w", err)
		}
	})
	wg.Go(func() {
		if err := r.breakInfrastructure(ctx); err != nil {
			errs <- fmt.Errorf("leader kills and postgres restarts: %w", err)
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	r.tl.add("producers done: %d messages published; chaos done: %d worker SIGKILLs, %d leader kills, %d Postgres restarts",
		len(r.wl.published()), r.workerKills, r.leaderKills, r.pgRestarts)

	settled := r.waitSettled(ctx)
	r.ws.stop()
	r.tl.add("workers stopped (SIGTERM)")
	rep := r.check(ctx, settled)
	rep.setup, rep.total = setup, time.Since(begin)
	t.Log(rep.String(r))
	if !rep.ok() {
		t.Error("some invariants do not hold (see the report)")
	}
}

// createStreams creates PAYMENTS and DLQ with the contract's names and
// subjects, Replicas 3, before any worker starts (the workers create them
// only if missing, and then with one replica).
func (r *chaosRun) createStreams(ctx context.Context) error {
	for _, cfg := range []jetstream.StreamConfig{
		{Name: streamPayments, Subjects: []string{subjPayments}, Storage: jetstream.FileStorage, Replicas: 3, Duplicates: 10 * time.Minute},
		{Name: streamDLQ, Subjects: []string{subjDLQ}, Storage: jetstream.FileStorage, Replicas: 3, Duplicates: 10 * time.Minute},
	} {
		if err := retryFor(ctx, "create stream "+cfg.Name, func(ctx context.Context) error {
			_, err := r.env.JS.CreateStream(ctx, cfg)
			return err
		}); err != nil {
			return err
		}
		if err := r.c.WaitStreamCurrent(ctx, r.env.JS, cfg.Name); err != nil {
			return err
		}
	}
	return nil
}

// killWorkers SIGKILLs a random running worker workerKills times, spread
// over the producing time, and restarts it after 0-1s.
func (r *chaosRun) killWorkers(ctx context.Context) error {
	gap := r.cfg.produce / time.Duration(r.cfg.workerKills+1)
	start := time.Now()
	for i := range r.cfg.workerKills {
		at := start.Add(time.Duration(i+1)*gap + time.Duration(r.rng.Int64N(int64(gap/2))) - gap/4)
		sleepCtx(ctx, time.Until(at))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		w := r.ws.workers[r.rng.IntN(len(r.ws.workers))]
		killedAt := time.Now()
		pid := w.kill()
		r.workerKills++
		pause := time.Duration(r.rng.Int64N(int64(time.Second)))
		sleepCtx(ctx, pause)
		if err := w.start(); err != nil {
			return err
		}
		t0 := time.Now()
		if err := w.waitReady(ctx); err != nil {
			return err
		}
		r.tl.addAt(killedAt, "SIGKILL %s (pid %d); restarted %.2fs later as pid %d, ready after %.2fs", w.name, pid, pause.Seconds(), w.pid(), time.Since(t0).Seconds())
	}
	return nil
}

// breakInfrastructure kills the PAYMENTS stream leader leaderKills times
// and restarts Postgres pgRestarts times (immediate mode), one at a time,
// at fractions of the producing time.
func (r *chaosRun) breakInfrastructure(ctx context.Context) error {
	// Alternate leader kills and Postgres restarts, spread from 12% to
	// 87% of the producing time; what is left of one kind goes last.
	type step struct {
		at     float64
		leader bool
	}
	var steps []step
	events := r.cfg.leaderKills + r.cfg.pgRestarts
	leaders, restarts := r.cfg.leaderKills, r.cfg.pgRestarts
	for i := range events {
		leader := leaders > 0 && (i%2 == 0 || restarts == 0)
		if leader {
			leaders--
		} else {
			restarts--
		}
		steps = append(steps, step{at: 0.12 + 0.75*float64(i)/float64(events), leader: leader})
	}
	start := time.Now()
	for _, s := range steps {
		sleepCtx(ctx, time.Until(start.Add(time.Duration(s.at*float64(r.cfg.produce)))))
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var err error
		if s.leader {
			err = r.killLeader(ctx)
		} else {
			err = r.restartPostgres(ctx)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// killLeader kills the node leading PAYMENTS, waits for a new leader,
// restarts the node after 2s and waits until both streams have three
// current replicas.
func (r *chaosRun) killLeader(ctx context.Context) error {
	var old, pid int
	t0 := time.Now()
	if err := retryFor(ctx, "kill the PAYMENTS leader", func(ctx context.Context) error {
		i, err := r.c.StreamLeader(ctx, r.env.JS, streamPayments)
		if err != nil {
			return err
		}
		old, pid = i, r.c.NodePID(i)
		return r.c.Kill(i)
	}); err != nil {
		return err
	}
	r.leaderKills++
	leader, err := r.c.WaitStreamLeader(ctx, r.env.JS, streamPayments, old)
	if err != nil {
		return err
	}
	elected := time.Since(t0)
	sleepCtx(ctx, 2*time.Second)
	if err := r.c.Restart(ctx, old); err != nil {
		return err
	}
	restarted := time.Since(t0)
	for _, s := range []string{streamPayments, streamDLQ} {
		if err := r.c.WaitStreamCurrent(ctx, r.env.JS, s); err != nil {
			return err
		}
	}
	// The harness polls StreamInfo, whose requests time out after 5s while
	// there is no leader: "seen" is an upper bound of the election.
	r.tl.addAt(t0, "killed %s (nats-server pid %d), leader of PAYMENTS; new leader %s seen after %.1fs; restarted at +%.1fs (pid %d); PAYMENTS and DLQ 3/3 current at +%.1fs",
		r.c.NodeName(old), pid, r.c.NodeName(leader), elected.Seconds(), restarted.Seconds(), r.c.NodePID(old), time.Since(t0).Seconds())
	return nil
}

// restartPostgres crashes Postgres and starts it again: PostgresServer.Restart,
// an immediate-mode shutdown (every backend aborted, crash recovery at the
// next start) followed at once by a start; with cfg.pgDown, Postgres stays
// down that long in between.
func (r *chaosRun) restartPostgres(ctx context.Context) error {
	t0 := time.Now()
	pid := r.pg.PID()
	if r.cfg.pgDown == 0 {
		if err := r.pg.Restart(ctx); err != nil {
			return err
		}
	} else {
		if err := r.pg.Stop(harness.PostgresImmediate); err != nil {
			return err
		}
		sleepCtx(ctx, r.cfg.pgDown)
		if err := r.pg.Start(ctx); err != nil {
			return err
		}
	}
	r.pgRestarts++
	down := time.Since(t0)
	r.pgDowns = append(r.pgDowns, down)
	r.tl.addAt(t0, "Postgres restarted in immediate mode (postmaster pid %d → %d; held down %v): down %.1fs, crash recovery included",
		pid, r.pg.PID(), r.cfg.pgDown, down.Seconds())
	return nil
}

// settleState is what waitSettled last saw.
type settleState struct {
	ledger, pendingOutbox, events, dlq int64
	numPending, ackPending             uint64
}

// waitSettled waits until every payment has a ledger row, the outbox is
// empty of pending rows, the stream holds an outcome event per ledger row
// and the expected dead letters, and the durable consumer has nothing
// pending or unacknowledged; at most cfg.settle.
func (r *chaosRun) waitSettled(ctx context.Context) bool {
	wantDLQ := int64(r.wl.count(kindMalformed) + r.wl.count(kindConflict))
	ctx, cancel := context.WithTimeout(ctx, r.cfg.settle)
	defer cancel()
	t0 := time.Now()
	var last settleState
	for {
		st, err := r.settleState(ctx)
		if err == nil {
			last = st
			if st.ledger >= int64(r.cfg.payments) && st.pendingOutbox == 0 && st.events >= st.ledger &&
				st.dlq >= wantDLQ && st.numPending == 0 && st.ackPending == 0 {
				r.tl.add("settled %.1fs after the producers finished", time.Since(t0).Seconds())
				return true
			}
		}
		select {
		case <-ctx.Done():
			r.tl.add("NOT settled after %v: %+v (want %d ledger rows, %d dead letters); last error %v", r.cfg.settle, last, r.cfg.payments, wantDLQ, err)
			return false
		case <-time.After(time.Second):
		}
	}
}

func (r *chaosRun) settleState(ctx context.Context) (settleState, error) {
	var st settleState
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := r.db.QueryRowContext(qctx, `SELECT count(*) FROM transfers`).Scan(&st.ledger); err != nil {
		return st, err
	}
	if err := r.db.QueryRowContext(qctx, `SELECT count(*) FROM idemq_outbox WHERE state = 'pending'`).Scan(&st.pendingOutbox); err != nil {
		return st, err
	}
	s, err := r.env.JS.Stream(qctx, streamPayments)
	if err != nil {
		return st, err
	}
	info, err := s.Info(qctx, jetstream.WithSubjectFilter("payments.*"))
	if err != nil {
		return st, err
	}
	st.events = int64(info.State.Subjects[subjCompleted] + info.State.Subjects[subjRejected])
	d, err := r.env.JS.Stream(qctx, streamDLQ)
	if err != nil {
		return st, err
	}
	st.dlq = int64(d.CachedInfo().State.Msgs)
	cons, err := s.Consumer(qctx, durableWorker)
	if err != nil {
		return st, err
	}
	ci := cons.CachedInfo()
	st.numPending, st.ackPending = ci.NumPending, uint64(ci.NumAckPending)
	return st, nil
}

// joinLines indents lines for the report.
func joinLines(lines []string, indent string) string {
	return indent + strings.Join(lines, "\n"+indent)
}
