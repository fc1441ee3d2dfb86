package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Coalesced wake-ups (Postgres). A transaction that NOTIFYs takes a
// database-wide lock at commit and holds it through the commit's WAL flush,
// so producers that all NOTIFY commit one at a time. AddTx therefore skips
// the NOTIFY while a relay is awake — polling on its own every awakeLinger
// — and still never strands a row. Two advisory locks per table make that
// safe:
//
//   - awake (exclusive, session): held by at most one relay while it polls
//     on its own. A writer whose statement finds it held skips the NOTIFY.
//   - inflight (shared, transaction): taken by every writer's statement
//     before it looks at awake and held until the writer's transaction
//     ends. If the writer cannot take it (a relay holds it or waits for
//     it), the writer NOTIFYs.
//
// An awake relay that falls idle releases awake and then takes and drops
// inflight exclusively, which waits for every writer still in a
// transaction that may have skipped its NOTIFY; then every worker claims
// once more, so those writers' rows (committed by then) are claimed. A
// writer that looks after awake was released finds it free and NOTIFYs; the
// workers keep claiming while the relay waits. A relay whose lock
// connection is lost loses the session lock with it once the server
// notices (short TCP keepalives on that connection: about 25 s); the
// writers then NOTIFY again. Rows of writers that skipped their NOTIFY
// when a spell ends on an error instead (the connection dropped, a
// statement timeout while waiting for a long writer) are claimed by the
// next poll (RelayConfig.PollInterval): late, never lost. Coalescing is off
// when the pool's MaxOpenConns leaves no connection for the lock (fewer
// than Workers + 2), and the lock connection goes back to the pool between
// spells. Writers of older versions always NOTIFY;
// relays of older versions never hold awake, so writers NOTIFY for them.
const (
	// awakeLock and inflightLock are the high 32 bits of the two bigint
	// advisory lock keys; the low 32 are the table's oid.
	awakeLock    = 0x69646d61 // "idma"
	inflightLock = 0x69646d69 // "idmi"

	// awakeLinger is how often an awake relay's workers claim without
	// being woken.
	awakeLinger = time.Millisecond
	// awakeGap: two rounds that find rows at most this far apart make the
	// relay try to stay awake (a rate of about 200 rows a second or more);
	// below that each commit's NOTIFY wakes it, as it costs little.
	awakeGap = 5 * time.Millisecond
	// awakeIdle is how long an awake relay goes without finding rows
	// before it lets writers NOTIFY again.
	awakeIdle = 50 * time.Millisecond
)

// lockKey is the SQL expression of the advisory lock key of kind for
// table; the table resolves as the statement's own references to it do.
func lockKey(kind int64, table string) string {
	return "((" + strconv.FormatInt(kind, 10) + "::bigint << 32) | '" + table + "'::regclass::oid::bigint)"
}

// notifySelect is the statement tail that signals channel (argument ph)
// unless a relay of table is awake and will claim after this transaction
// ends (see awakeLock).
func notifySelect(table, ph string) string {
	in, aw := lockKey(inflightLock, table), lockKey(awakeLock, table)
	return " SELECT pg_notify(" + ph + ", '') WHERE CASE WHEN pg_try_advisory_xact_lock_shared(" + in + ")" +
		" THEN CASE WHEN pg_try_advisory_lock_shared(" + aw + ") THEN pg_advisory_unlock_shared(" + aw + ") ELSE false END" +
		" ELSE true END"
}

// wakeState is a listening Postgres relay's part in coalesced wake-ups.
type wakeState struct {
	epoch    time.Time
	awake    atomic.Bool  // holding awakeLock (or releasing it)
	lastRows atomic.Int64 // nanoseconds since epoch of the last round with rows
	idle     atomic.Int64 // awakeIdle; tests change it
	busy     chan struct{}
}

func newWakeState() *wakeState {
	w := &wakeState{epoch: time.Now(), busy: make(chan struct{}, 1)}
	w.idle.Store(int64(awakeIdle))
	return w
}

// noteRows records a round that found rows and asks the coordinator to
// stay awake when the previous one was at most awakeGap before.
func (r *Relay) noteRows() {
	w := r.wake
	if w == nil {
		return
	}
	now := int64(time.Since(w.epoch))
	prev := w.lastRows.Swap(now)
	if now-prev <= int64(awakeGap) && !w.awake.Load() {
		signal(w.busy)
	}
}

// awake reports whether the relay holds the table's awake lock, polling on
// its own so that writers need not NOTIFY (Postgres with LISTEN only).
func (r *Relay) awake() bool { return r.wake != nil && r.wake.awake.Load() }

// tooFewConns reports whether db's pool is capped below what a relay of
// workers needs with coalesced wake-ups from the pool: one connection per
// worker, the LISTEN connection and the wake-up lock's.
func tooFewConns(db *sql.DB, workers int) bool {
	n := db.Stats().MaxOpenConnections
	return n > 0 && n < workers+2
}

// stayAwake runs the relay's side of coalesced wake-ups until ctx is done.
// A lock connection taken from the pool goes back to it after each spell
// (it holds no lock then), so that it is not kept from the workers; a
// dedicated one (ListenURL) is kept.
func (r *Relay) stayAwake(ctx context.Context, wakeAll func()) {
	var lc lockConn
	defer lc.close()
	failures := 0
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake.busy:
		}
		err := r.awakeSpell(ctx, &lc, wakeAll)
		if ctx.Err() != nil {
			return
		}
		if err == nil {
			failures = 0
			lc.release()
			continue
		}
		// The session lock, if held, goes with the connection.
		lc.close()
		r.wake.awake.Store(false)
		wakeAll()
		failures++
		delay := r.o.Backoff.Delay(failures)
		r.log.Debug("relay wake-up lock failed; writers NOTIFY on every commit until it is back", "err", err, "retry_in", delay)
		if !sleep(ctx, delay) {
			return
		}
	}
}

// awakeSpell takes the awake lock if it is free, polls every awakeLinger
// until no round found rows for awakeIdle, then releases it, waits for the
// writers that may have skipped their NOTIFY and wakes every worker.
func (r *Relay) awakeSpell(ctx context.Context, lc *lockConn, wakeAll func()) error {
	if err := lc.open(ctx, r); err != nil {
		return err
	}
	var got bool
	if err := lc.scan(ctx, "SELECT pg_try_advisory_lock("+lockKey(awakeLock, r.o.Table)+")", &got); err != nil {
		return err
	}
	if !got {
		// Another relay is awake, or a writer is between its checks:
		// writers NOTIFY meanwhile; look again after a while.
		sleep(ctx, awakeIdle)
		return nil
	}
	r.wake.awake.Store(true)
	wakeAll()
	t := time.NewTicker(awakeLinger)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		if int64(time.Since(r.wake.epoch))-r.wake.lastRows.Load() >= r.wake.idle.Load() {
			break
		}
		wakeAll()
	}
	// One statement, evaluated in order: release awake, then wait until
	// no writer holds inflight and drop it again. The workers keep claiming
	// meanwhile: a writer that skipped its NOTIFY may commit while the
	// statement waits for a longer one.
	in := lockKey(inflightLock, r.o.Table)
	stop := make(chan struct{})
	var ticking sync.WaitGroup
	ticking.Go(func() {
		t := time.NewTicker(awakeLinger)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				wakeAll()
			}
		}
	})
	err := lc.exec(ctx, "SELECT pg_advisory_unlock("+lockKey(awakeLock, r.o.Table)+"), pg_advisory_lock("+in+"), pg_advisory_unlock("+in+")")
	close(stop)
	ticking.Wait()
	if err != nil {
		return err
	}
	r.wake.awake.Store(false)
	wakeAll() // the final claim: every row of a writer that skipped is committed
	return nil
}

// lockConn is the relay's connection for the awake lock: a pgx connection
// to RelayConfig.ListenURL when set (so a pooler between the program and
// Postgres cannot move the session lock), else one taken from the pool.
// Closing it discards it, so the session's locks end with it.
type lockConn struct {
	sc *sql.Conn
	pc *pgxConn
}

func (c *lockConn) open(ctx context.Context, r *Relay) error {
	if c.sc != nil || c.pc != nil {
		return nil
	}
	if r.o.ListenURL != "" {
		pc, err := pgxConnect(ctx, r.o.ListenURL)
		if err != nil {
			return err
		}
		c.pc = pc
	} else {
		sc, err := r.db.Conn(ctx)
		if err != nil {
			return fmt.Errorf("outbox: wake-up lock connection: %w", err)
		}
		c.sc = sc
	}
	// A relay that dies with its host leaves the awake lock to the server
	// until it notices the connection is gone; meanwhile writers skip their
	// NOTIFY and rows wait for the poll. Short keepalives bound that to
	// about 25 seconds instead of the system's default two hours. (Harmless
	// in the pooled session this connection goes back to.)
	if err := c.exec(ctx, "SELECT set_config('tcp_keepalives_idle', '10', false), set_config('tcp_keepalives_interval', '5', false), set_config('tcp_keepalives_count', '3', false)"); err != nil {
		c.close()
		return err
	}
	return nil
}

// release hands a connection taken from the pool back to it (it holds no
// lock between spells); a dedicated one is kept.
func (c *lockConn) release() {
	if c.sc != nil {
		_ = c.sc.Close()
		c.sc = nil
	}
}

func (c *lockConn) scan(ctx context.Context, q string, dst *bool) error {
	var err error
	if c.pc != nil {
		err = c.pc.QueryRow(ctx, q).Scan(dst)
	} else {
		err = c.sc.QueryRowContext(ctx, q).Scan(dst)
	}
	if err != nil {
		return fmt.Errorf("outbox: wake-up lock: %w", err)
	}
	return nil
}

func (c *lockConn) exec(ctx context.Context, q string) error {
	var err error
	if c.pc != nil {
		_, err = c.pc.Exec(ctx, q)
	} else {
		_, err = c.sc.ExecContext(ctx, q)
	}
	if err != nil {
		return fmt.Errorf("outbox: wake-up lock: %w", err)
	}
	return nil
}

// close discards the connection, ending its session and its locks.
func (c *lockConn) close() {
	if c.pc != nil {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = c.pc.Close(cctx)
		cancel()
		c.pc = nil
	}
	if c.sc != nil {
		_ = c.sc.Raw(func(any) error { return errBadConn })
		_ = c.sc.Close()
		c.sc = nil
	}
}
