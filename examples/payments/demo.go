package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/outbox"
)

// errInvariants is returned by the demo when an invariant did not hold.
var errInvariants = errors.New("an invariant did not hold")

// Headers the demo's misbehaving producer adds to the messages it publishes
// directly to JetStream, so that the checks can find them again (in the DLQ
// a dead letter keeps the original headers) and tell them from earlier runs
// on a shared server.
const (
	headerDemoRun = "Payments-Demo-Run"
	headerDemoMsg = "Payments-Demo-Msg"
)

// demoConfig is the demo's configuration; demoCommand fills it from flags.
type demoConfig struct {
	Payments    int           // payments sent through the API
	Workers     int           // worker subprocesses
	Concurrency int           // -concurrency of each worker
	Clients     int           // concurrent client connections
	DropRate    float64       // fraction of API responses the client drops
	NATSURL     string        // "" starts an embedded server
	DBURL       string        // "" uses SQLite in the temporary directory
	Drain       time.Duration // how long to wait for the backlog after the last request
	AckWait     time.Duration // the workers' -ack-wait
	Exe         string        // the executable re-executed as api and worker; "" means os.Executable()
	Out         io.Writer     // progress and summary
	KeepDir     bool          // keep the temporary directory (logs, SQLite file)
	Prefix      string        // -prefix: put in front of every stream, subject, consumer and table name
}

func demoCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg := demoConfig{Out: stdout}
	fs := flag.NewFlagSet("payments", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.IntVar(&cfg.Payments, "payments", 3000, "number of payments the client sends through PUT /payments")
	fs.IntVar(&cfg.Workers, "workers", 2, "number of worker subprocesses")
	fs.IntVar(&cfg.Concurrency, "concurrency", 4, "-concurrency of each worker (messages handled at once)")
	fs.IntVar(&cfg.Clients, "clients", 16, "concurrent client requests")
	fs.Float64Var(&cfg.DropRate, "drop", 0.2, "fraction of API responses the client loses on purpose (0-0.9)")
	fs.StringVar(&cfg.NATSURL, "nats", "", "NATS URL; empty starts an embedded NATS server with JetStream")
	fs.StringVar(&cfg.DBURL, "db", "", "database, postgres://… or sqlite:PATH; empty uses SQLite in a temporary directory")
	fs.DurationVar(&cfg.Drain, "drain", 40*time.Second, "how long to wait for the workers to finish after the last request")
	fs.BoolVar(&cfg.KeepDir, "keep", false, "keep the temporary directory with the subprocess logs")
	fs.StringVar(&cfg.Prefix, "prefix", "", "put PREFIX in front of every stream, subject, consumer and table name (PREFIX_PAYMENTS,\n"+
		"PREFIX.payments.>, PREFIX_accounts…) so that runs on a shared NATS server or database do not collide;\n"+
		"default: the contract's names (PAYMENTS, DLQ, accounts…)")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usageText+"\nDemo flags:\n")
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	// Every flag is checked, one at a time and before anything starts, and
	// the first that is wrong is named alone.
	if err := firstError(
		atLeast("-payments", cfg.Payments, 100), atLeast("-workers", cfg.Workers, 1),
		atLeast("-concurrency", cfg.Concurrency, 1), atLeast("-clients", cfg.Clients, 1),
		within("-drop", cfg.DropRate, 0, 0.9), positive("-drain", cfg.Drain),
		checkNATSURL(cfg.NATSURL), demoDBURL(cfg.DBURL), checkFlag("-prefix", prefixError(cfg.Prefix)),
	); err != nil {
		return usageError(fs, "payments", err)
	}
	rep, err := runDemo(ctx, cfg)
	if err != nil {
		return err
	}
	if !rep.ok() {
		return errInvariants
	}
	return nil
}

// demo is one run of the demo.
type demo struct {
	cfg    demoConfig
	nm     names  // stream, subject and table names (-prefix)
	run    string // run id: prefixes keys and account ids
	dir    string
	db     *database
	nc     *nats.Conn
	js     jetstream.JetStream
	start  time.Time
	events *eventCounter
	logf   *os.File
	outMu  sync.Mutex // serialises progress lines

	accounts []string
	initial  int64 // sum of the initial balances

	api     *proc
	workers []*proc
	crashes struct{ workers, api atomic.Int64 }

	cl        *client
	producer  *producer
	jobsTotal atomic.Int64
	// First stream sequences of this run, so that checks on a shared server
	// only read this run's messages.
	startSeq map[string]uint64
}

// Demo sizes.
const (
	demoAccounts       = 12
	demoInitialBalance = 50_000     // per account, minor units (£500.00)
	demoMaxAmount      = 2_000      // largest ordinary payment (£20.00)
	demoOverdraft      = 10_000_000 // more than all the money there is: always 402
)

// runDemo runs the whole demo and returns its report.
func runDemo(ctx context.Context, cfg demoConfig) (*report, error) {
	if cfg.Exe == "" {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("find own executable: %w", err)
		}
		cfg.Exe = exe
	}
	if cfg.AckWait == 0 {
		cfg.AckWait = 3 * time.Second
	}
	if cfg.Out == nil {
		cfg.Out = io.Discard
	}
	nm, err := namesFor(cfg.Prefix)
	if err != nil {
		return nil, err
	}
	d := &demo{cfg: cfg, nm: nm, run: newRunID(), events: newEventCounter(), startSeq: map[string]uint64{}}
	dir, err := os.MkdirTemp("", "idemq-payments-")
	if err != nil {
		return nil, err
	}
	d.dir = dir
	defer func() {
		if !cfg.KeepDir {
			_ = os.RemoveAll(dir)
		}
	}()
	d.logf, err = os.Create(filepath.Join(dir, "processes.log"))
	if err != nil {
		return nil, err
	}
	defer d.logf.Close()

	d.start = time.Now()
	out := cfg.Out
	fmt.Fprintf(out, "idemq payments demo · run %s\n", d.run)

	embedded := cfg.NATSURL == ""
	if embedded {
		srv, err := startEmbeddedNATS(filepath.Join(dir, "nats"))
		if err != nil {
			return nil, err
		}
		defer func() {
			srv.Shutdown()
			srv.WaitForShutdown()
		}()
		cfg.NATSURL = srv.ClientURL()
		d.cfg.NATSURL = cfg.NATSURL
		fmt.Fprintf(out, "  nats      embedded nats-server %s with JetStream at %s\n", server.VERSION, cfg.NATSURL)
	} else {
		fmt.Fprintf(out, "  nats      %s\n", cfg.NATSURL)
	}
	if cfg.DBURL == "" {
		cfg.DBURL = "sqlite:" + filepath.Join(dir, "payments.db")
		d.cfg.DBURL = cfg.DBURL
		fmt.Fprintf(out, "  database  SQLite %s\n", filepath.Join(dir, "payments.db"))
	} else {
		fmt.Fprintf(out, "  database  %s\n", redactDB(cfg.DBURL))
	}
	if nm.prefix != "" {
		fmt.Fprintf(out, "  names     prefix %s: %s\n", nm.prefix, nm.describe())
	}

	if err := d.setup(ctx); err != nil {
		return nil, err
	}
	defer d.db.Close()
	defer d.nc.Close()
	defer d.stopAll()

	if err := d.startProcesses(ctx); err != nil {
		return nil, err
	}
	logs := "(-keep keeps them)"
	if cfg.KeepDir {
		logs = d.logf.Name()
	}
	fmt.Fprintf(out, "  processes api on %s and %d workers, re-executing this program; their logs: %s\n", d.apiAddr(), len(d.workers), logs)
	fmt.Fprintf(out, "  accounts  %d × £%s, %d payments to send, %.0f%% of responses lost on purpose\n\n",
		len(d.accounts), pounds(demoInitialBalance), cfg.Payments, cfg.DropRate*100)

	if err := d.load(ctx); err != nil {
		return nil, err
	}
	drained := d.drain(ctx)
	t0 := time.Now()
	if err := d.stopAll(); err != nil {
		return nil, err
	}
	t1 := time.Now()
	rep, err := d.check(ctx, drained)
	d.note("stopped the processes in %.1fs, checked in %.1fs", t1.Sub(t0).Seconds(), time.Since(t1).Seconds())
	if err != nil {
		return nil, err
	}
	rep.print(out)
	d.printInspect(out, embedded)
	switch {
	case cfg.KeepDir:
		fmt.Fprintf(out, "\nsubprocess logs and database kept in %s\n", dir)
	case !rep.ok():
		fmt.Fprintln(out, "\nrun again with -keep to keep the subprocess logs and the database")
	}
	return rep, nil
}

// startEmbeddedNATS runs nats-server in this process with JetStream stored
// in dir, on a free loopback port.
func startEmbeddedNATS(dir string) (*server.Server, error) {
	srv, err := server.NewServer(&server.Options{
		ServerName: "idemq-payments-demo",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   dir,
		NoLog:      true,
		NoSigs:     true,
	})
	if err != nil {
		return nil, fmt.Errorf("embedded nats-server: %w", err)
	}
	srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		srv.Shutdown()
		return nil, errors.New("embedded nats-server did not become ready within 10s")
	}
	return srv, nil
}

// setup creates the schema, the streams and this run's funded accounts.
func (d *demo) setup(ctx context.Context) error {
	db, err := openDB(ctx, d.cfg.DBURL)
	if err != nil {
		return err
	}
	db.nm = d.nm
	d.db = db
	if err := ensureSchema(ctx, db); err != nil {
		return err
	}
	d.nc, err = nats.Connect(d.cfg.NATSURL, nats.Name("payments-demo"), nats.MaxReconnects(-1))
	if err != nil {
		return fmt.Errorf("connect to nats: %w", err)
	}
	d.js, err = jetstream.New(d.nc)
	if err != nil {
		return err
	}
	if err := ensureStreams(ctx, d.js, d.nm); err != nil {
		return err
	}
	for _, name := range []string{d.nm.paymentsStream(), d.nm.dlqStream()} {
		s, err := d.js.Stream(ctx, name)
		if err != nil {
			return err
		}
		d.startSeq[name] = s.CachedInfo().State.LastSeq + 1
	}
	// The caller creates and funds the accounts (the contract).
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	for i := 1; i <= demoAccounts; i++ {
		id := fmt.Sprintf("acc-%s-%02d", d.run, i)
		if _, err := tx.ExecContext(ctx, db.q(`INSERT INTO accounts (id, balance) VALUES (?, ?)`), id, demoInitialBalance); err != nil {
			return fmt.Errorf("fund account %s: %w", id, err)
		}
		d.accounts = append(d.accounts, id)
		d.initial += demoInitialBalance
	}
	return tx.Commit()
}

// apiAddr is the API's listen address, chosen once so that a restarted API
// comes back on the same port.
func (d *demo) apiAddr() string { return d.api.args[2] }

// startProcesses starts the API, then the workers one at a time, each after
// the previous one is ready (so that they do not race to create tables).
func (d *demo) startProcesses(ctx context.Context) error {
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	d.api = &proc{
		name: "api", exe: d.cfg.Exe, events: d.events, logw: d.logf,
		// A short lease: requests the killed API leaves in flight are taken
		// over by the client's retries two seconds later.
		args: []string{"api", "-addr", addr, "-nats", d.cfg.NATSURL, "-db", d.cfg.DBURL, "-lease", "2s", "-log-format", "json"},
	}
	if d.nm.prefix != "" {
		d.api.args = append(d.api.args, "-prefix", d.nm.prefix)
	}
	if err := d.startAndWait(ctx, d.api, "api_ready"); err != nil {
		return err
	}
	for i := 1; i <= d.cfg.Workers; i++ {
		w := &proc{
			name: "worker-" + strconv.Itoa(i), exe: d.cfg.Exe, events: d.events, logw: d.logf,
			args: []string{"worker", "-nats", d.cfg.NATSURL, "-db", d.cfg.DBURL,
				"-concurrency", strconv.Itoa(d.cfg.Concurrency), "-ack-wait", d.cfg.AckWait.String(), "-log-format", "json"},
		}
		if d.nm.prefix != "" {
			w.args = append(w.args, "-prefix", d.nm.prefix)
		}
		d.workers = append(d.workers, w)
		if err := d.startAndWait(ctx, w, "worker_ready"); err != nil {
			return err
		}
	}
	return nil
}

// startAndWait starts p and waits until it logs the ready event once more.
func (d *demo) startAndWait(ctx context.Context, p *proc, ready string) error {
	before := d.events.get(ready)
	if err := p.start(); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for d.events.get(ready) <= before {
		if !p.running() {
			if last := p.lastWords(); last != "" {
				return fmt.Errorf("%s exited during start-up; its last lines:\n  %s\n(all in %s, kept with -keep)", p.name, last, d.logf.Name())
			}
			return fmt.Errorf("%s exited during start-up; see %s (kept with -keep)", p.name, d.logf.Name())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w; see %s", p.name, ctx.Err(), d.logf.Name())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// stopAll stops every subprocess gracefully.
func (d *demo) stopAll() error {
	procs := append([]*proc(nil), d.workers...)
	if d.api != nil {
		procs = append(procs, d.api)
	}
	errs := make([]error, len(procs))
	var wg sync.WaitGroup
	for i, p := range procs {
		wg.Go(func() { errs[i] = p.stop(shutdownTimeout) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// crashWorker SIGKILLs worker i and starts it again, as a supervisor would.
func (d *demo) crashWorker(ctx context.Context, i int) error {
	w := d.workers[i]
	if err := w.kill(); err != nil {
		return err
	}
	d.crashes.workers.Add(1)
	d.note("%s SIGKILL %s", killMark, w.name)
	sleepCtx(ctx, 150*time.Millisecond)
	return d.startAndWait(ctx, w, "worker_ready")
}

// crashAPI SIGKILLs the API and starts it again on the same address.
func (d *demo) crashAPI(ctx context.Context) error {
	if err := d.api.kill(); err != nil {
		return err
	}
	d.crashes.api.Add(1)
	d.note("%s SIGKILL api", killMark)
	sleepCtx(ctx, 300*time.Millisecond)
	return d.startAndWait(ctx, d.api, "api_ready")
}

// printInspect says how to look at what the run left behind with the
// operator CLI: its commands when the servers outlive the demo, else how to
// keep them.
func (d *demo) printInspect(out io.Writer, embeddedNATS bool) {
	if embeddedNATS || strings.HasPrefix(d.cfg.DBURL, "sqlite:"+d.dir) {
		fmt.Fprintln(out, "\nthe embedded NATS server and the temporary SQLite database end with the demo; to inspect a run with")
		fmt.Fprintln(out, "cmd/idemq afterwards, run it against servers you keep: -nats URL -db URL (and -prefix on shared ones)")
		return
	}
	db := shellQuote(d.cfg.DBURL)
	fmt.Fprintln(out, "\ninspect this run with the operator CLI:")
	fmt.Fprintf(out, "  go run ./cmd/idemq dlq list -nats %s -stream %s\n", shellQuote(d.cfg.NATSURL), d.nm.dlqStream())
	fmt.Fprintf(out, "  go run ./cmd/idemq dedupe count -db %s -table %s\n", db, d.nm.table(sqlstore.DefaultTable))
	fmt.Fprintf(out, "  go run ./cmd/idemq outbox stats -db %s -table %s\n", db, d.nm.table(outbox.DefaultTable))
}

// shellQuote quotes s for a POSIX shell when it holds anything but safe
// characters.
func shellQuote(s string) string {
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_./:@=%+,", r)) {
			return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
		}
	}
	return s
}

// killMark marks a SIGKILL in the progress lines: a lightning bolt, not the
// ✗ that marks an invariant that did not hold.
const killMark = "⚡"

// note prints a line prefixed with the elapsed time.
func (d *demo) note(format string, args ...any) {
	d.outMu.Lock()
	defer d.outMu.Unlock()
	fmt.Fprintf(d.cfg.Out, "[%5.1fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

// load runs the client, the misbehaving producer and the crash schedule
// together, printing progress, until every request has an answer.
func (d *demo) load(ctx context.Context) error {
	jobs := d.plan()
	d.cl = newClient("http://"+d.apiAddr(), d.cfg.DropRate, d.cfg.Clients)
	defer d.cl.close()
	d.producer = newProducer(d)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errc := make(chan error, 4)

	// Client: Clients goroutines draining the job list; reused keys are held
	// back until their original was accepted.
	queue := make(chan *job)
	for range d.cfg.Clients {
		wg.Go(func() {
			for j := range queue {
				d.cl.do(ctx, j)
			}
		})
	}
	feederDone := make(chan struct{})
	go func() {
		defer close(feederDone)
		defer close(queue)
		// A reused key is sent only once its original was accepted, so the
		// 409 is certain; those not ready yet go at the end.
		var later []*job
		send := func(j *job) bool {
			select {
			case queue <- j:
				return true
			case <-ctx.Done():
				return false
			}
		}
		for _, j := range jobs {
			if j.kind == jobReuse && !d.cl.isAccepted(j.reuseOf.key) {
				later = append(later, j)
				continue
			}
			if !send(j) {
				return
			}
		}
		for _, j := range later {
			for !d.cl.isAccepted(j.reuseOf.key) && !d.cl.isSettled(j.reuseOf.key) {
				sleepCtx(ctx, 20*time.Millisecond)
				if ctx.Err() != nil {
					return
				}
			}
			if !send(j) {
				return
			}
		}
	}()

	// Crash schedule, keyed to progress so it is the same on any machine:
	// a worker every 11% of the requests, the API once at 50%.
	chaosDone := make(chan struct{})
	go func() {
		defer close(chaosDone)
		total := int64(len(jobs))
		next, apiDone := 0.08, false
		victim := 0
		for {
			select {
			case <-feederDone:
				return
			case <-ctx.Done():
				return
			case <-time.After(20 * time.Millisecond):
			}
			frac := float64(d.cl.stats.sent.Load()) / float64(total)
			if frac >= next && next < 0.95 {
				if err := d.crashWorker(ctx, victim%len(d.workers)); err != nil {
					errc <- err
					return
				}
				victim++
				next += 0.11
			}
			if !apiDone && frac >= 0.5 {
				apiDone = true
				if err := d.crashAPI(ctx); err != nil {
					errc <- err
					return
				}
			}
		}
	}()

	// Misbehaving producer: malformed messages, conflicts and duplicates
	// straight to JetStream.
	prodDone := make(chan error, 1)
	go func() { prodDone <- d.producer.run(ctx, feederDone) }()

	// Progress.
	progDone := make(chan struct{})
	go func() {
		defer close(progDone)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-feederDone:
				return
			case <-t.C:
				d.progress(ctx)
			}
		}
	}()

	<-feederDone
	wg.Wait()
	<-chaosDone
	<-progDone
	if err := <-prodDone; err != nil {
		return err
	}
	select {
	case err := <-errc:
		return err
	default:
	}
	// One more worker crash while the backlog drains.
	if err := d.crashWorker(ctx, len(d.workers)-1); err != nil {
		return err
	}
	d.progress(ctx)
	return ctx.Err()
}

// progress prints one progress line.
func (d *demo) progress(ctx context.Context) {
	s := d.cl.stats
	applied, rejected, _ := d.countTransfers(ctx)
	d.note("sent %d/%d  accepted %d  retried %d  lost %d  409 %d  applied %d  rejected(402) %d  dlq %d  crashes %d",
		s.sent.Load(), d.jobCount(), s.accepted.Load(), s.retries.Load(), s.lost.Load(),
		s.conflicts.Load()+s.inFlight409.Load(), applied, rejected, d.streamCount(ctx, d.nm.dlqStream()),
		d.crashes.workers.Load()+d.crashes.api.Load())
}

// streamCount returns how many messages stream received since this run
// started (all subjects, all producers: on a shared server, an estimate).
func (d *demo) streamCount(ctx context.Context, stream string) uint64 {
	s, err := d.js.Stream(ctx, stream)
	if err != nil {
		return 0
	}
	last := s.CachedInfo().State.LastSeq
	if last < d.startSeq[stream] {
		return 0
	}
	return last - d.startSeq[stream] + 1
}

// drain waits until the workers have applied every accepted payment, the
// outbox relays have published every outcome and the producer's messages are
// dead-lettered, or until cfg.Drain passes. It reports whether it finished.
func (d *demo) drain(ctx context.Context) bool {
	ctx, cancel := context.WithTimeout(ctx, d.cfg.Drain)
	defer cancel()
	accepted := d.cl.acceptedJobs()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	last := time.Now()
	for {
		applied, rejected, err := d.countTransfers(ctx)
		if err == nil && applied+rejected >= int64(len(accepted)) {
			if st, err := d.scan(ctx); err == nil && st.settled(applied, rejected, d.producer) {
				d.note("drained: every accepted payment applied, every event published")
				return true
			}
		}
		if time.Since(last) >= time.Second {
			d.progress(ctx)
			last = time.Now()
		}
		select {
		case <-ctx.Done():
			d.note("gave up waiting after %s", d.cfg.Drain)
			return false
		case <-t.C:
		}
	}
}

// countTransfers counts this run's ledger rows by outcome.
func (d *demo) countTransfers(ctx context.Context) (completed, rejected int64, err error) {
	rows, err := d.db.QueryContext(ctx, d.db.q(`SELECT outcome, count(*) FROM transfers WHERE idempotency_key LIKE ? GROUP BY outcome`), d.run+"-%")
	if err != nil {
		return 0, 0, err
	}
	defer rows.Close()
	for rows.Next() {
		var o string
		var n int64
		if err := rows.Scan(&o, &n); err != nil {
			return 0, 0, err
		}
		switch o {
		case outcomeCompleted:
			completed = n
		case outcomeRejected:
			rejected = n
		}
	}
	return completed, rejected, rows.Err()
}

// plan builds the client's requests: payments (some overdrafts), reused keys
// with a changed amount, and a few bodies that are not payments.
func (d *demo) plan() []*job {
	n := d.cfg.Payments
	var jobs []*job
	var pays []*job
	now := time.Now().Unix()
	for i := range n {
		from := d.accounts[mrand.IntN(len(d.accounts))]
		to := d.accounts[mrand.IntN(len(d.accounts))]
		for to == from {
			to = d.accounts[mrand.IntN(len(d.accounts))]
		}
		p := payment{
			PaymentID: fmt.Sprintf("pay-%s-%05d", d.run, i),
			From:      from, To: to,
			Amount:    1 + mrand.Int64N(demoMaxAmount),
			Currency:  "GBP",
			Timestamp: now,
		}
		j := &job{kind: jobPay, key: fmt.Sprintf("%s-p%05d", d.run, i), pay: p}
		if i%33 == 7 { // ~3%: more than anyone has
			j.pay.Amount = demoOverdraft
			j.overdraft = true
		}
		if i%10 == 3 { // some clients let the API choose the payment id
			j.pay.PaymentID = ""
		}
		j.body = requestBody(j.pay)
		jobs = append(jobs, j)
		pays = append(pays, j)
		// ~2%: a little later, the same key again with a changed amount.
		if i%50 == 11 && i > 0 {
			orig := pays[mrand.IntN(len(pays))]
			r := &job{kind: jobReuse, key: orig.key, pay: orig.pay, reuseOf: orig}
			r.pay.Amount = orig.pay.Amount + 1 + mrand.Int64N(100)
			r.body = requestBody(r.pay)
			jobs = append(jobs, r)
		}
		// A few bodies that are not payments.
		if i%300 == 150 {
			b := &job{kind: jobBadRequest, key: fmt.Sprintf("%s-b%05d", d.run, i)}
			b.body = []byte(fmt.Sprintf(`{"from":%q,"to":%q,"amount":-5,"currency":"GBP"}`, from, to))
			jobs = append(jobs, b)
		}
	}
	d.jobsTotal.Store(int64(len(jobs)))
	return jobs
}

func (d *demo) jobCount() int64 { return d.jobsTotal.Load() }

// requestBody is the PUT /payments body for p: the contract's payment, with
// payment_id left out when empty (the API then derives one from the key).
func requestBody(p payment) []byte {
	if p.PaymentID == "" {
		return mustJSON(struct {
			From      string `json:"from"`
			To        string `json:"to"`
			Amount    int64  `json:"amount"`
			Currency  string `json:"currency"`
			Timestamp int64  `json:"timestamp"`
		}{p.From, p.To, p.Amount, p.Currency, p.Timestamp})
	}
	return mustJSON(p)
}

// freeAddr returns a free loopback address for the API.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// newRunID returns a short random id for this run.
func newRunID() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return "r" + hex.EncodeToString(b[:])
}

// sleepCtx sleeps d or until ctx is done.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// pounds formats minor units as pounds: 50000 → "500.00".
func pounds(minor int64) string {
	sign := ""
	if minor < 0 {
		sign, minor = "-", -minor
	}
	return fmt.Sprintf("%s%d.%02d", sign, minor/100, minor%100)
}

// redactDB hides a password in a database URL.
func redactDB(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.Scheme != "" {
		return u.Redacted()
	}
	return raw
}
