package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/retry"
)

// Relay defaults.
const (
	// DefaultBatchSize is RelayConfig.BatchSize when zero: 2000 rows, so
	// that a round's fixed costs weigh little per row, and
	// DefaultRelayWorkers rounds together stay within nats.go's default
	// async publish window (4000) where a wrapped JetStream context
	// publishes through it (see JetStreamPublisher).
	DefaultBatchSize = 2000
	// DefaultPostgresPoll is the Postgres polling interval when zero: 1s
	// (a fallback; LISTEN/NOTIFY wakes the relay within milliseconds).
	DefaultPostgresPoll = time.Second
	// DefaultSQLitePoll is the SQLite polling interval when zero: 100ms.
	DefaultSQLitePoll = 100 * time.Millisecond
	// DefaultRelayWorkers is RelayConfig.Workers when zero on Postgres: 2.
	DefaultRelayWorkers = 2
	// DefaultPublishTimeout is RelayConfig.PublishTimeout when zero: 5s.
	DefaultPublishTimeout = 5 * time.Second
	// DefaultRetention is how long sent rows are kept when
	// RelayConfig.Retention is zero: 7 days.
	DefaultRetention = 7 * 24 * time.Hour
	// DefaultCleanupInterval is RelayConfig.CleanupInterval when zero: 1m.
	DefaultCleanupInterval = time.Minute
	// DefaultCleanupBatch is RelayConfig.CleanupBatch when zero: 1000 rows
	// per DELETE.
	DefaultCleanupBatch = 1000
	// CrashAllowance is the part of RedeliveryHorizon that covers a relay
	// dying between publish and mark: the time for the database to roll back
	// the dead relay's transaction and for another relay to claim the rows
	// again: 30s.
	CrashAllowance = 30 * time.Second
)

// ErrDuplicatesWindow is returned by Run when a stream listed in
// RelayConfig.Streams keeps message ids for less than the relay's
// RedeliveryHorizon: a republished row could then slip past the broker's
// deduplication.
var ErrDuplicatesWindow = errors.New("outbox: stream duplicates window shorter than the relay's redelivery horizon")

// ErrPublishTimeout is recorded as a row's last error when its PubAck did
// not arrive within RelayConfig.PublishTimeout; the row is retried.
var ErrPublishTimeout = errors.New("outbox: timed out waiting for PubAck")

// RelayConfig configures a Relay. A nil *RelayConfig means defaults.
type RelayConfig struct {
	// Table is the outbox table. Default DefaultTable.
	Table string
	// Dialect of db. Default: detected from the driver.
	Dialect sqlstore.Dialect
	// Channel is the Postgres LISTEN channel. Default: the table name
	// without schema, as Outbox uses.
	Channel string
	// BatchSize is the most rows claimed and published per round.
	// Default DefaultBatchSize (2000). Through a wrapped JetStream context
	// (not nats.go's own; see JetStreamPublisher), keep it at most the
	// context's async publish window (PublishAsyncMaxPending, default
	// 4000); see Workers.
	BatchSize int
	// PollInterval is how often the relay looks for rows when nothing woke
	// it. Default DefaultPostgresPoll (1s) on Postgres, DefaultSQLitePoll
	// (100ms) on SQLite.
	PollInterval time.Duration
	// Workers is the number of rounds (claim, publish, mark) run at once,
	// each in its own transaction, so one round publishes while another
	// marks. Concurrent rounds never share a row, and ordering keys are kept
	// as between relays. Default 2 on
	// Postgres; always 1 on SQLite, whose rounds serialise on the write
	// lock. 4 drains a backlog faster (BenchmarkRelayVsRawPublish) but, on a
	// busy machine, adds concurrent small rounds that raise
	// commit-to-publish latency. Through a wrapped JetStream context,
	// Workers × BatchSize above its PublishAsyncMaxPending makes rounds
	// wait for room in the async window (up to PublishTimeout); nats.go's
	// own context has no such window here.
	Workers int
	// DeleteSent deletes each acknowledged row in the transaction that
	// would otherwise mark it sent. On Postgres a DELETE costs a fraction of
	// the UPDATE to 'sent' (no new row version, no index entries), which
	// raises the relay's throughput. The price: sent rows are not kept for
	// inspection, Retention applies only to rows marked sent before, and an
	// id added again after its row was deleted is inserted and published
	// again, so the stream's Duplicates window becomes the only guard against
	// such a re-add. Its rounds delete the rows after the PubAcks are in,
	// where the default marks them while the PubAcks are awaited (a deleted
	// row could not be put back if its publish failed). Default false: rows
	// are marked sent and kept for Retention.
	DeleteSent bool
	// NoListen turns LISTEN/NOTIFY off on Postgres: polling only. Such a
	// relay never takes the awake lock, so writers keep notifying for the
	// relays that listen.
	NoListen bool
	// ListenURL, when set, is a Postgres URL for the relay's dedicated pgx
	// connections: one used for LISTEN and one holding the awake lock of
	// coalesced wake-ups (see the package documentation); set it when db
	// goes through a pooler in transaction mode. Default: both connections
	// are taken from db for the relay's lifetime (make sure db's pool
	// allows two beyond the workers').
	ListenURL string
	// PublishTimeout bounds the wait for the PubAcks of one round of
	// publishes; rows without a PubAck by then are retried. Default
	// DefaultPublishTimeout (5s).
	PublishTimeout time.Duration
	// Backoff spaces the retries of a row whose publish failed transiently
	// (attempt counts from 1). Default retry.Exponential{Initial: 100ms,
	// Max: 30s} with full jitter. The relay never gives up on a transient
	// failure: the row stays pending.
	Backoff retry.Backoff
	// Retention is how long sent rows are kept before cleanup deletes them.
	// Default DefaultRetention (7 days); negative disables cleanup.
	Retention time.Duration
	// CleanupInterval is how often cleanup runs. Default
	// DefaultCleanupInterval (1m).
	CleanupInterval time.Duration
	// CleanupBatch is the most rows one cleanup DELETE removes. Default
	// DefaultCleanupBatch (1000).
	CleanupBatch int
	// Streams lists JetStream streams the relay publishes to. Run checks at
	// start that each keeps message ids (its Duplicates window) at least
	// RedeliveryHorizon, and fails with ErrDuplicatesWindow otherwise.
	// Streams that are not listed are checked the first time a PubAck names
	// them, with a warning in the log.
	Streams []string
	// Logger receives warnings (broker rejections, lost database
	// connections). Default slog.Default().
	Logger *slog.Logger
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Observer receives each row the relay publishes and each round (see
	// RelayObserver), for metrics and traces (idemqotel.Telemetry.Relay).
	// Nil (the default) costs nothing.
	Observer RelayObserver
}

// RelayStats counts what a Relay did since it was created.
type RelayStats struct {
	// Published is the number of rows marked sent.
	Published int64
	// Duplicates is how many of those the broker reported as duplicates
	// (already stored under the same Nats-Msg-Id).
	Duplicates int64
	// Failed is the number of rows marked failed (permanent rejection).
	Failed int64
	// Retried is the number of transient publish failures (rows left
	// pending with a backoff).
	Retried int64
	// Rounds is the number of claim rounds that found rows.
	Rounds int64
	// Deleted is the number of sent rows removed by cleanup.
	Deleted int64
}

// Relay publishes committed outbox rows to JetStream. Run it in one or more
// processes; see the package documentation for ordering and deduplication.
type Relay struct {
	db  *sql.DB
	pub Publisher
	o   RelayConfig
	d   dialect
	log *slog.Logger
	obs RelayObserver

	published, duplicates, failed, retried, rounds, deleted atomic.Int64

	checked sync.Map // stream name → struct{}

	// wake is the relay's part in coalesced wake-ups (see awakeLock); nil
	// unless it LISTENs on Postgres.
	wake *wakeState

	// floor is the lowest seq the next claim of a worker looks at, 0 for
	// all: raised past each full batch so that, while a backlog drains,
	// claims do not walk the index entries of the rows already sent (on
	// Postgres those stay in the pending index until the old row versions
	// are dead to every transaction, which a concurrent round or any long
	// transaction delays, making each claim slower than the last). A claim
	// that finds less than a batch above the floor resets it and is
	// followed at once by a claim of all rows; so is a claim more than
	// PollInterval after the last claim of all rows, so rows below the
	// floor (committed late, left pending or due after a backoff) wait at
	// most that long.
	floor atomic.Int64
	// lastFull is the time of the last claim without a floor, in Unix
	// nanoseconds of RelayConfig.Now.
	lastFull atomic.Int64
	// backlog is set by a claim that found BatchSize rows and cleared by
	// one that found fewer: while it is set, claims on Postgres are
	// planned without bitmap scans (see begin). Set at first, for the
	// backlog a restarted relay finds; the first claim of a backlog that
	// builds up later may still read and sort every pending row once.
	backlog atomic.Bool

	// afterPublish, set only by tests, runs after the PubAcks of a round and
	// before its marks are committed; an error aborts the round like a
	// crash.
	afterPublish func(ids []string) error
}

// NewRelay returns a relay for the outbox table in db, publishing through
// pub (JetStream(js) for NATS JetStream). It validates cfg, whose zero
// fields mean the documented defaults; it does not touch the database until
// Run.
func NewRelay(db *sql.DB, pub Publisher, cfg RelayConfig) (*Relay, error) {
	o := cfg
	d, err := resolveTable(db, &o.Dialect, &o.Table, &o.Channel)
	if err != nil {
		return nil, err
	}
	if o.BatchSize <= 0 {
		o.BatchSize = DefaultBatchSize
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPostgresPoll
		if d.kind == sqlstore.SQLite {
			o.PollInterval = DefaultSQLitePoll
		}
	}
	if o.PublishTimeout <= 0 {
		o.PublishTimeout = DefaultPublishTimeout
	}
	if o.Workers <= 0 {
		o.Workers = DefaultRelayWorkers
	}
	if d.kind == sqlstore.SQLite {
		o.Workers = 1
	}
	if o.Backoff == nil {
		o.Backoff = retry.Exponential{Initial: 100 * time.Millisecond, Max: 30 * time.Second}
	}
	if o.Retention == 0 {
		o.Retention = DefaultRetention
	}
	if o.CleanupInterval <= 0 {
		o.CleanupInterval = DefaultCleanupInterval
	}
	if o.CleanupBatch <= 0 {
		o.CleanupBatch = DefaultCleanupBatch
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if pub == nil {
		return nil, errors.New("outbox: NewRelay needs a Publisher (outbox.JetStream(js) for NATS JetStream)")
	}
	if p, ok := pub.(*JetStreamPublisher); ok && p.js == nil {
		return nil, errors.New("outbox: NewRelay: JetStream(nil)")
	}
	r := &Relay{db: db, pub: pub, o: o, d: d, obs: o.Observer, log: o.Logger.With("component", "idemq/outbox.Relay", "table", o.Table)}
	if d.kind == sqlstore.Postgres && !o.NoListen {
		r.wake = newWakeState()
	}
	r.backlog.Store(true) // a relay (re)started may find one
	return r, nil
}

// Stats returns the relay's counters.
func (r *Relay) Stats() RelayStats {
	return RelayStats{
		Published:  r.published.Load(),
		Duplicates: r.duplicates.Load(),
		Failed:     r.failed.Load(),
		Retried:    r.retried.Load(),
		Rounds:     r.rounds.Load(),
		Deleted:    r.deleted.Load(),
	}
}

// RedeliveryHorizon is the longest time between two publishes of the same
// row that the relay itself causes: a PublishTimeout, the largest Backoff
// delay, a PollInterval and CrashAllowance. Every stream the relay publishes
// to needs a Duplicates window at least this long. It does not cover a
// broker outage longer than the backoff cap, during which a copy stored just
// before the outage is older than the window when the row is republished.
func (r *Relay) RedeliveryHorizon() time.Duration {
	return r.o.PublishTimeout + r.o.Backoff.MaxDelay(64) + r.o.PollInterval + CrashAllowance
}

// Run relays until ctx is done, then returns nil once every goroutine it
// started has ended. It returns an error only when it cannot start (a
// stream in RelayConfig.Streams with too short a Duplicates window, or
// unreachable). Database and broker failures are logged and retried with
// backoff; a round interrupted by them leaves its rows pending, to be
// published again and dropped by the broker as duplicates.
func (r *Relay) Run(ctx context.Context) error {
	if err := r.checkStreams(ctx); err != nil {
		return err
	}
	wakes := make([]chan struct{}, r.o.Workers)
	for i := range wakes {
		wakes[i] = make(chan struct{}, 1)
	}
	// A notification wakes every worker: under load, whichever is
	// scheduled first claims the new rows, which measured lower
	// commit-to-publish latency than waking one.
	wakeAll := func() {
		for _, w := range wakes {
			signal(w)
		}
	}
	lctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	if r.d.kind == sqlstore.Postgres && !r.o.NoListen {
		wg.Go(func() { r.listen(lctx, wakeAll) })
	}
	if r.wake != nil && r.o.ListenURL == "" && tooFewConns(r.db, r.o.Workers) {
		// The lock connection would take one the workers need.
		r.log.Info("relay: coalesced wake-ups off: the pool's MaxOpenConns leaves no connection for the wake-up lock (it needs Workers + 2 with LISTEN)",
			"max_open_conns", r.db.Stats().MaxOpenConnections, "workers", r.o.Workers)
	} else if r.wake != nil {
		wg.Go(func() { r.stayAwake(lctx, wakeAll) })
	}
	errs := make(chan error, r.o.Workers)
	for i := range r.o.Workers {
		wg.Go(func() {
			err := r.work(lctx, wakes[i], i == 0)
			if err != nil {
				cancel()
			}
			errs <- err
		})
	}
	var first error
	for range r.o.Workers {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// work runs rounds until ctx is done; the cleaner also runs cleanup.
func (r *Relay) work(ctx context.Context, wake <-chan struct{}, cleaner bool) error {
	timer := time.NewTimer(r.o.PollInterval)
	defer timer.Stop()
	nextCleanup := r.o.Now()
	failures := 0
	var since time.Time
	for {
		if ctx.Err() != nil {
			return nil
		}
		claimed, done, rescan, err := r.roundFrom(ctx, true)
		if err != nil {
			if errors.Is(err, errHook) {
				return err
			}
			if ctx.Err() != nil {
				return nil
			}
			failures++
			var delay time.Duration
			if errors.Is(err, errBrokerUnavailable) {
				delay = min(minBrokerPause<<min(failures-1, 10), maxBrokerPause)
			} else {
				delay = r.o.Backoff.Delay(failures)
			}
			if failures == 1 {
				since = r.o.Now()
				r.log.Warn("relay round failed; pausing and retrying until it succeeds", "err", err, "retry_in", delay)
			} else {
				r.log.Debug("relay round failed again", "err", err, "retry_in", delay, "failures", failures)
			}
			if !sleep(ctx, delay) {
				return nil
			}
			continue
		}
		if failures > 0 {
			r.log.Info("relay rounds succeed again; resumed", "paused_for", r.o.Now().Sub(since).Round(time.Millisecond), "failed_rounds", failures)
		}
		failures = 0
		if claimed > 0 {
			r.noteRows()
		}
		if cleaner && r.o.Retention > 0 && !r.o.Now().Before(nextCleanup) {
			if _, err := r.Cleanup(ctx); err != nil && ctx.Err() == nil {
				r.log.Warn("outbox cleanup failed", "err", err)
			}
			nextCleanup = r.o.Now().Add(r.o.CleanupInterval)
		}
		if rescan || (claimed == r.o.BatchSize && done > 0) {
			continue // more rows are waiting, or may be below the floor
		}
		timer.Reset(r.o.PollInterval)
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-timer.C:
		}
	}
}

// errHook marks an error from the afterPublish test hook.
var errHook = errors.New("outbox: relay stopped by test hook")

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// outcome of one row's publish.
type outcome struct {
	err       error // nil: acknowledged
	permanent bool
	duplicate bool
	stream    string
}

// round claims all due rows, publishes and marks one batch: claimed is the
// number of rows claimed, done the number marked sent or failed.
func (r *Relay) round(ctx context.Context) (claimed, done int, err error) {
	claimed, done, _, err = r.roundFrom(ctx, false)
	return claimed, done, err
}

// roundFrom is round; with useFloor it claims only rows from the relay's
// floor on (see Relay.floor), and rescan reports that such a claim found
// less than a batch, so that rows below the floor may be waiting.
func (r *Relay) roundFrom(ctx context.Context, useFloor bool) (claimed, done int, rescan bool, err error) {
	var st *RelayRound
	if r.obs != nil {
		st = &RelayRound{}
		start := time.Now()
		defer func() {
			if claimed > 0 || err != nil {
				st.Claimed, st.Err, st.Duration = claimed, err, time.Since(start)
				r.obs.Round(ctx, *st)
			}
		}()
	}
	tx, err := r.begin(ctx)
	if err != nil {
		return 0, 0, false, err
	}
	defer tx.rollback()
	now := r.o.Now()
	var floor int64
	if useFloor {
		floor = r.floor.Load()
		if floor > 0 && now.Sub(time.Unix(0, r.lastFull.Load())) >= r.o.PollInterval {
			floor = 0
		}
	}
	rows, err := r.claim(ctx, tx.q, now, floor)
	if err != nil {
		return 0, 0, false, err
	}
	if floor == 0 {
		r.lastFull.Store(now.UnixNano())
	}
	r.backlog.Store(len(rows) == r.o.BatchSize)
	if len(rows) == r.o.BatchSize {
		r.raiseFloor(rows[len(rows)-1].Seq + 1)
	} else {
		r.floor.Store(0)
		rescan = floor > 0
	}
	claimed, done, err = r.finishRound(ctx, tx, rows, st)
	return claimed, done, rescan, err
}

// raiseFloor sets the floor to seq unless it is higher already.
func (r *Relay) raiseFloor(seq int64) {
	for {
		cur := r.floor.Load()
		if cur >= seq || r.floor.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// finishRound publishes and marks the claimed rows in tx and commits it;
// st, when not nil, gets the round's committed counts.
func (r *Relay) finishRound(ctx context.Context, tx *relayTx, rows []row, st *RelayRound) (claimed, done int, err error) {
	if len(rows) == 0 {
		return 0, 0, tx.commit() // read only: nothing to flush
	}
	claimed = len(rows)
	rows, err = r.keepOrder(ctx, tx.q, rows)
	if err != nil {
		return claimed, 0, err
	}
	if len(rows) == 0 {
		if err := r.asyncCommit(ctx, tx.q); err != nil {
			return claimed, 0, err
		}
		return claimed, 0, tx.commit()
	}
	r.rounds.Add(1)
	early := r.markEarly()
	var outs []*outcome
	if early {
		var markErr error
		outs, markErr, err = r.publishMarking(ctx, tx.q, rows)
		if markErr != nil {
			return claimed, 0, markErr
		}
	} else {
		outs, err = r.publish(ctx, rows)
	}
	if err != nil {
		return claimed, 0, err
	}
	if r.afterPublish != nil {
		ids := make([]string, 0, len(rows))
		for i, o := range outs {
			if o != nil && o.err == nil {
				ids = append(ids, rows[i].ID)
			}
		}
		if err := r.afterPublish(ids); err != nil {
			return claimed, 0, fmt.Errorf("%w: %w", errHook, err)
		}
	}
	if early {
		done, err = r.unmark(ctx, tx.q, rows, outs, r.o.Now())
	} else {
		if err := r.asyncCommit(ctx, tx.q); err != nil {
			return claimed, 0, err
		}
		done, err = r.mark(ctx, tx.q, rows, outs, r.o.Now())
	}
	if err != nil {
		return claimed, 0, err
	}
	if err := tx.commit(); err != nil {
		return claimed, 0, err
	}
	// Counted only once committed.
	var published, duplicates, failed, retried int
	var lastErr error
	for _, o := range outs {
		switch {
		case o == nil:
		case o.err == nil:
			published++
			r.published.Add(1)
			if o.duplicate {
				duplicates++
				r.duplicates.Add(1)
			}
		case o.permanent:
			failed++
			r.failed.Add(1)
		default:
			retried++
			lastErr = o.err
			r.retried.Add(1)
		}
	}
	if st != nil {
		st.Published, st.Duplicates, st.Failed, st.Retried = published, duplicates, failed, retried
	}
	r.checkAcked(ctx, outs)
	if published == 0 && retried > 1 {
		// Nothing got through: the broker (or the streams' leaders) is
		// not answering. The rows stay pending; the worker pauses. One
		// row alone failing says nothing of the broker: its own backoff
		// spaces its retries.
		return claimed, done, fmt.Errorf("%w: %d rows left pending: %w", errBrokerUnavailable, retried, lastErr)
	}
	return claimed, done, nil
}

// errBrokerUnavailable is the error of a round in which every publish
// failed transiently.
var errBrokerUnavailable = errors.New("outbox: broker not answering")

// Pause schedule of a worker whose round found the broker not answering:
// MinPause doubling to MaxPause, so that publishing resumes within about
// MaxPause of the broker's return.
const (
	minBrokerPause = 100 * time.Millisecond
	maxBrokerPause = time.Second
)

// asyncCommit lets the claim transaction on Postgres commit without waiting
// for the WAL flush. Losing a mark in a crash only republishes rows the
// broker then drops as duplicates, so rounds need not wait for the disk. It
// is sent after the claim, while or after the rows are published, not at
// BEGIN, so that it costs nothing on the path from commit to publish and
// nothing in an empty round.
func (r *Relay) asyncCommit(ctx context.Context, q Querier) error {
	if r.d.kind != sqlstore.Postgres {
		return nil
	}
	if _, err := q.ExecContext(ctx, "SET LOCAL synchronous_commit TO OFF"); err != nil {
		return fmt.Errorf("outbox: mark: %w", err)
	}
	return nil
}
