package sqlstore_test

import (
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/dedupe/storetest"
)

const (
	lease     = 10 * time.Second
	retention = time.Hour
)

// effects creates a table standing for the handler's own writes.
func effects(t *testing.T, db *sql.DB) string {
	t.Helper()
	name := nextTable() + "_effects"
	if _, err := db.ExecContext(testCtx(t), "CREATE TABLE "+name+" (key text PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	return name
}

func countRows(t *testing.T, db *sql.DB, table string) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(testCtx(t), "SELECT count(*) FROM "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func claimTx(t *testing.T, s *sqlstore.Store, tx sqlstore.Querier, key, fp string) dedupe.Claim {
	t.Helper()
	c, err := s.ClaimTx(testCtx(t), tx, key, fp, lease, retention)
	if err != nil {
		t.Fatalf("ClaimTx(%q): %v", key, err)
	}
	return c
}

// TestClaimTxRollback: a handler whose transaction rolls back leaves neither
// its writes nor a record, so the redelivery is Acquired (not a takeover).
func TestClaimTxRollback(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB) {
		var clock storetest.Clock
		s := newStore(t, db, clock.Now)
		fx := effects(t, db)
		ctx := testCtx(t)

		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if c := claimTx(t, s, tx, "msg-1", "fp"); c.Status != dedupe.Acquired || c.Takeover {
			t.Fatalf("first ClaimTx: %+v, want acquired", c)
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO "+fx+" (key) VALUES ('msg-1')"); err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		if n := countRows(t, db, fx); n != 0 {
			t.Fatalf("%d effect rows after rollback, want 0", n)
		}
		if _, err := s.Get(ctx, "msg-1"); !errors.Is(err, sqlstore.ErrNotFound) {
			t.Fatalf("Get after rollback: %v, want ErrNotFound", err)
		}
		c, err := s.Claim(ctx, "msg-1", "fp", lease, retention)
		if err != nil || c.Status != dedupe.Acquired || c.Takeover {
			t.Fatalf("redelivery after rollback: %+v, %v; want acquired, no takeover", c, err)
		}
	})
}

// TestClaimTxCommit: ClaimTx, the handler's write and CompleteTx commit
// together; the redelivery is a Duplicate with the stored result, and the
// effect exists once.
func TestClaimTxCommit(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB) {
		var clock storetest.Clock
		s := newStore(t, db, clock.Now)
		fx := effects(t, db)
		ctx := testCtx(t)

		deliver := func() dedupe.Claim {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tx.Rollback() }()
			c := claimTx(t, s, tx, "msg-1", "fp")
			if c.Status != dedupe.Acquired {
				return c
			}
			if _, err := tx.ExecContext(ctx, "INSERT INTO "+fx+" (key) VALUES ('msg-1')"); err != nil {
				t.Fatal(err)
			}
			if err := s.CompleteTx(ctx, tx, "msg-1", c.Token, dedupe.Result{Data: []byte("200 OK")}, retention); err != nil {
				t.Fatalf("CompleteTx: %v", err)
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			return c
		}
		if c := deliver(); c.Status != dedupe.Acquired {
			t.Fatalf("first delivery: %+v, want acquired", c)
		}
		c := deliver()
		if c.Status != dedupe.Duplicate || string(c.Result.Data) != "200 OK" || c.Result.Failed {
			t.Fatalf("redelivery: %+v, want duplicate with the stored result", c)
		}
		if n := countRows(t, db, fx); n != 1 {
			t.Fatalf("%d effect rows, want exactly 1", n)
		}
		rec, err := s.Get(ctx, "msg-1")
		if err != nil {
			t.Fatal(err)
		}
		if rec.State != dedupe.StateDone || !rec.ExpiresAt.Equal(storetest.Epoch.Add(retention)) || !rec.LeaseUntil.IsZero() {
			t.Fatalf("stored record %+v, want done, expiring at epoch+retention, no lease", rec)
		}
	})
}

// TestReleaseAndExtendTx: the other Tx variants act on the caller's
// transaction and follow it.
func TestReleaseAndExtendTx(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB) {
		var clock storetest.Clock
		s := newStore(t, db, clock.Now)
		ctx := testCtx(t)
		c, err := s.Claim(ctx, "k", "fp", lease, retention)
		if err != nil || c.Status != dedupe.Acquired {
			t.Fatalf("Claim: %+v, %v", c, err)
		}

		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.ExtendTx(ctx, tx, "k", c.Token, time.Minute); err != nil {
			t.Fatalf("ExtendTx: %v", err)
		}
		if err := s.ReleaseTx(ctx, tx, "k", c.Token); err != nil {
			t.Fatalf("ReleaseTx: %v", err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		// Both rolled back: the original lease is still held.
		if got, err := s.Claim(ctx, "k", "fp", lease, retention); err != nil || got.Status != dedupe.Busy || got.RetryAfter != lease {
			t.Fatalf("claim after rolled-back extend+release: %+v, %v; want busy for %v", got, err, lease)
		}

		tx, err = db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.ReleaseTx(ctx, tx, "k", c.Token); err != nil {
			t.Fatalf("ReleaseTx: %v", err)
		}
		if err := s.ReleaseTx(ctx, tx, "k", c.Token); !errors.Is(err, dedupe.ErrLeaseLost) {
			t.Fatalf("second ReleaseTx: %v, want ErrLeaseLost", err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if got, err := s.Claim(ctx, "k", "fp", lease, retention); err != nil || got.Status != dedupe.Acquired || got.Takeover {
			t.Fatalf("claim after committed release: %+v, %v; want acquired", got, err)
		}
	})
}

// TestClaimTxRefusesDB: a claim "in the caller's transaction" on a *sql.DB
// would not be atomic.
func TestClaimTxRefusesDB(t *testing.T) {
	db := openSQLite(t, 1)
	s := newStore(t, db, nil)
	if _, err := s.ClaimTx(testCtx(t), db, "k", "fp", lease, retention); !errors.Is(err, sqlstore.ErrNotInTx) {
		t.Fatalf("ClaimTx on a *sql.DB: %v, want ErrNotInTx", err)
	}
}

// TestClaimTxConn: a *sql.Conn inside BEGIN is a transaction too.
func TestClaimTxConn(t *testing.T) {
	db := postgresDB(t)
	s := newStore(t, db, nil)
	ctx := testCtx(t)
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if c := claimTx(t, s, conn, "k", "fp"); c.Status != dedupe.Acquired {
		t.Fatalf("ClaimTx on a conn: %+v", c)
	}
	if _, err := conn.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Get(ctx, "k"); !errors.Is(err, sqlstore.ErrNotFound) {
		t.Fatalf("Get after ROLLBACK: %v, want ErrNotFound", err)
	}
}

// TestConcurrentClaimTxPostgres: two real transactions deliver the same key.
// The second blocks in ClaimTx on the primary key while the first is open,
// then sees the first's outcome: Duplicate after a commit, Acquired after a
// rollback. That is the inbox behaviour.
func TestConcurrentClaimTxPostgres(t *testing.T) {
	db := postgresDB(t)
	for _, commit := range []bool{true, false} {
		name := map[bool]string{true: "FirstCommits", false: "FirstRollsBack"}[commit]
		t.Run(name, func(t *testing.T) {
			s := newStore(t, db, nil)
			ctx := testCtx(t)
			tx1, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tx1.Rollback() }()
			c1 := claimTx(t, s, tx1, "order-7", "fp")
			if c1.Status != dedupe.Acquired {
				t.Fatalf("first ClaimTx: %+v", c1)
			}

			tx2, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tx2.Rollback() }()
			var pid int
			if err := tx2.QueryRowContext(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
				t.Fatal(err)
			}
			type answer struct {
				c   dedupe.Claim
				err error
			}
			done := make(chan answer, 1)
			go func() {
				c, err := s.ClaimTx(ctx, tx2, "order-7", "fp", lease, retention)
				done <- answer{c, err}
			}()

			waitForLock(t, db, pid)
			select {
			case a := <-done:
				t.Fatalf("second ClaimTx returned while the first transaction was open: %+v, %v", a.c, a.err)
			default:
			}

			if commit {
				if err := s.CompleteTx(ctx, tx1, "order-7", c1.Token, dedupe.Result{Data: []byte("shipped")}, retention); err != nil {
					t.Fatal(err)
				}
				if err := tx1.Commit(); err != nil {
					t.Fatal(err)
				}
			} else if err := tx1.Rollback(); err != nil {
				t.Fatal(err)
			}

			a := <-done
			if a.err != nil {
				t.Fatalf("second ClaimTx: %v", a.err)
			}
			if commit {
				if a.c.Status != dedupe.Duplicate || string(a.c.Result.Data) != "shipped" {
					t.Fatalf("second ClaimTx after commit: %+v, want duplicate with the result", a.c)
				}
				return
			}
			if a.c.Status != dedupe.Acquired || a.c.Takeover || a.c.Token == c1.Token {
				t.Fatalf("second ClaimTx after rollback: %+v, want acquired with its own token", a.c)
			}
			if err := s.CompleteTx(ctx, tx2, "order-7", a.c.Token, dedupe.Result{Data: []byte("second")}, retention); err != nil {
				t.Fatal(err)
			}
			if err := tx2.Commit(); err != nil {
				t.Fatal(err)
			}
			if c, err := s.Claim(ctx, "order-7", "fp", lease, retention); err != nil || string(c.Result.Data) != "second" {
				t.Fatalf("claim after the second committed: %+v, %v", c, err)
			}
		})
	}
}

// waitForLock waits until the backend pid is waiting for a lock. It polls
// pg_stat_activity; no timing is asserted, the test context bounds it.
func waitForLock(t *testing.T, db *sql.DB, pid int) {
	t.Helper()
	ctx := testCtx(t)
	for {
		var waiting bool
		err := db.QueryRowContext(ctx,
			"SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1", pid).Scan(&waiting)
		if err != nil {
			t.Fatalf("pg_stat_activity: %v", err)
		}
		if waiting {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("backend %d never waited for a lock: %v", pid, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// TestClaimTxSQLiteImmediate: with _txlock=immediate several connections
// may hold inbox transactions; each BEGIN takes the write lock, so a second
// delivery waits (busy_timeout) and then sees the committed record.
func TestClaimTxSQLiteImmediate(t *testing.T) {
	db, err := sql.Open("sqlite", sqliteDSN(t.TempDir()+"/inbox.db")+"&_txlock=immediate")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(4)
	s := newStore(t, db, nil)
	ctx := testCtx(t)

	const workers = 8
	type answer struct {
		st  dedupe.Status
		err error
	}
	answers := make(chan answer, workers)
	for range workers {
		go func() {
			st, err := func() (dedupe.Status, error) {
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					return 0, err
				}
				defer func() { _ = tx.Rollback() }()
				c, err := s.ClaimTx(ctx, tx, "k", "fp", lease, retention)
				if err != nil || c.Status != dedupe.Acquired {
					return c.Status, err
				}
				if err := s.CompleteTx(ctx, tx, "k", c.Token, dedupe.Result{Data: []byte("once")}, retention); err != nil {
					return 0, err
				}
				return c.Status, tx.Commit()
			}()
			answers <- answer{st, err}
		}()
	}
	acquired := 0
	for range workers {
		a := <-answers
		if a.err != nil {
			t.Errorf("worker: %v", a.err)
		}
		switch a.st {
		case dedupe.Acquired:
			acquired++
		case dedupe.Duplicate:
		default:
			t.Errorf("worker status %v, want acquired or duplicate", a.st)
		}
	}
	if acquired != 1 {
		t.Fatalf("%d workers acquired, want 1", acquired)
	}
}
