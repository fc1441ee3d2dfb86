package pgxconn_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/dedupe/sqlstore/pgxconn"
	"github.com/idemq/idemq/dedupe/storetest"
	"github.com/idemq/idemq/integration/harness"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// pgPool returns a pgx pool on the harness' fresh schema (its URL carries
// search_path), closed in cleanup, and the harness env.
func pgPool(t testing.TB) (*pgxpool.Pool, *harness.PostgresEnv) {
	t.Helper()
	env := harness.Postgres(t)
	cfg, err := pgxpool.ParseConfig(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 40
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool, env
}

var tableSeq atomic.Int64

func nextTable() string { return fmt.Sprintf("pgx_dedupe_%d", tableSeq.Add(1)) }

func ctxFor(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestConformancePgxPool runs the conformance suite on a Store whose every
// statement goes through pgx (a pool), not database/sql.
func TestConformancePgxPool(t *testing.T) {
	pool, _ := pgPool(t)
	storetest.Run(t, func(t *testing.T, now func() time.Time) dedupe.Store {
		s, err := sqlstore.NewOn(ctxFor(t), pgxconn.Pool(pool), sqlstore.Config{Table: nextTable(), Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return s
	})
}

// TestClaimInPgxTx checks the inbox mode on a pgx transaction: a rollback
// takes the claim back, a commit makes the key a Duplicate, and records
// written through pgx are the records database/sql reads.
func TestClaimInPgxTx(t *testing.T) {
	pool, env := pgPool(t)
	ctx := ctxFor(t)
	table := nextTable()
	s, err := sqlstore.NewOn(ctx, pgxconn.Pool(pool), sqlstore.Config{Table: table})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ClaimIn(ctx, pgxconn.Of(pool), "k", "fp", time.Minute, time.Hour); !errors.Is(err, sqlstore.ErrNotInTx) {
		t.Fatalf("ClaimIn on a pool: %v, want ErrNotInTx", err)
	}
	if _, err := pool.Exec(ctx, "CREATE TABLE effects (key text, n int)"); err != nil {
		t.Fatal(err)
	}
	run := func(commit bool) dedupe.Claim {
		t.Helper()
		tx, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback(ctx) }()
		c, err := s.ClaimIn(ctx, pgxconn.Tx(tx), "k", "fp", time.Minute, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		if c.Status != dedupe.Acquired {
			return c
		}
		if _, err := tx.Exec(ctx, "INSERT INTO effects VALUES ('k', 1)"); err != nil {
			t.Fatal(err)
		}
		if err := s.CompleteIn(ctx, pgxconn.Tx(tx), "k", c.Token, dedupe.Result{Data: []byte("done")}, time.Hour); err != nil {
			t.Fatal(err)
		}
		if commit {
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
		return c
	}
	if c := run(false); c.Status != dedupe.Acquired || c.Fence == 0 {
		t.Fatalf("first claim: %+v", c)
	}
	if c := run(true); c.Status != dedupe.Acquired || c.Attempt != 1 {
		t.Fatalf("claim after the rollback: %+v, want acquired at attempt 1 (the rollback took it back)", c)
	}
	if c := run(true); c.Status != dedupe.Duplicate || string(c.Result.Data) != "done" {
		t.Fatalf("claim after the commit: %+v, want a duplicate replaying %q", c, "done")
	}
	var n int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM effects").Scan(&n); err != nil || n != 1 {
		t.Fatalf("effects: %d rows (%v), want exactly 1", n, err)
	}
	// The same table read through database/sql.
	sq, err := sqlstore.New(ctx, env.DB, sqlstore.Config{Table: table})
	if err != nil {
		t.Fatal(err)
	}
	if r, err := sq.Get(ctx, "k"); err != nil || r.State != dedupe.StateDone || string(r.Result) != "done" {
		t.Fatalf("database/sql reads %+v, %v", r, err)
	}
	// Batches on a pgx transaction.
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	claims, err := s.ClaimManyIn(ctx, pgxconn.Tx(tx), []sqlstore.ClaimRequest{
		{Key: "b1", Fingerprint: "fp", Lease: time.Minute, Retention: time.Hour},
		{Key: "b2", Fingerprint: "fp", Lease: time.Minute, Retention: time.Hour},
		{Key: "k", Fingerprint: "fp", Lease: time.Minute, Retention: time.Hour},
	})
	if err != nil || claims[0].Status != dedupe.Acquired || claims[1].Status != dedupe.Acquired || claims[2].Status != dedupe.Duplicate {
		t.Fatalf("ClaimManyIn: %+v, %v", claims, err)
	}
	errs, err := s.CompleteManyIn(ctx, pgxconn.Tx(tx), []sqlstore.CompleteRequest{
		{Key: "b1", Token: claims[0].Token, Retention: time.Hour},
		{Key: "b2", Token: "stale", Retention: time.Hour},
	})
	if err != nil || errs[0] != nil || !errors.Is(errs[1], dedupe.ErrLeaseLost) {
		t.Fatalf("CompleteManyIn: %v, %v", errs, err)
	}
}

// BenchmarkInboxClaimComplete runs, in one benchmark, the inbox mode's
// statements for a fresh key — begin, ClaimIn, one effect row, CompleteIn,
// commit — through pgx directly and through database/sql on pgx's stdlib
// driver, alternating, and reports both rates and their ratio (pgx ÷
// database/sql): once as is (each commit waits for its WAL flush), once
// with SET LOCAL synchronous_commit = off in every transaction, so that
// the drivers' own cost shows. go test -run '^$' -bench InboxClaimComplete
// ./dedupe/sqlstore/pgxconn/
func BenchmarkInboxClaimComplete(b *testing.B) {
	pool, env := pgPool(b)
	ctx := context.Background()
	table := nextTable()
	onPgx, err := sqlstore.NewOn(ctx, pgxconn.Pool(pool), sqlstore.Config{Table: table})
	if err != nil {
		b.Fatal(err)
	}
	onSQL, err := sqlstore.New(ctx, env.DB, sqlstore.Config{Table: table})
	if err != nil {
		b.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "CREATE TABLE effects (key text, n int)"); err != nil {
		b.Fatal(err)
	}
	const perRound = 200
	seq := 0
	key := func() string { seq++; return fmt.Sprint("bench-", seq) }
	nosync := false
	viaPgx := func() {
		k := key()
		err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			if nosync {
				if _, err := tx.Exec(ctx, "SET LOCAL synchronous_commit = off"); err != nil {
					return err
				}
			}
			c, err := onPgx.ClaimIn(ctx, pgxconn.Tx(tx), k, "fp", time.Minute, time.Hour)
			if err != nil || c.Status != dedupe.Acquired {
				return fmt.Errorf("claim %+v: %w", c, err)
			}
			if _, err := tx.Exec(ctx, "INSERT INTO effects VALUES ($1, 1)", k); err != nil {
				return err
			}
			return onPgx.CompleteIn(ctx, pgxconn.Tx(tx), k, c.Token, dedupe.Result{Data: []byte("ok")}, time.Hour)
		})
		if err != nil {
			b.Fatal(err)
		}
	}
	viaSQL := func() {
		k := key()
		tx, err := env.DB.BeginTx(ctx, nil)
		if err != nil {
			b.Fatal(err)
		}
		if nosync {
			if _, err := tx.ExecContext(ctx, "SET LOCAL synchronous_commit = off"); err != nil {
				b.Fatal(err)
			}
		}
		c, err := onSQL.ClaimTx(ctx, tx, k, "fp", time.Minute, time.Hour)
		if err != nil || c.Status != dedupe.Acquired {
			b.Fatalf("claim %+v: %v", c, err)
		}
		if _, err := tx.ExecContext(ctx, "INSERT INTO effects VALUES ($1, 1)", k); err != nil {
			b.Fatal(err)
		}
		if err := onSQL.CompleteTx(ctx, tx, k, c.Token, dedupe.Result{Data: []byte("ok")}, time.Hour); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			b.Fatal(err)
		}
	}
	rate := func(fn func()) float64 {
		start := time.Now()
		for range perRound {
			fn()
		}
		return perRound / time.Since(start).Seconds()
	}
	rate(viaPgx) // warm both pools and statement caches
	rate(viaSQL)
	b.ResetTimer()
	var pgxRate, sqlRate, pgxNoSync, sqlNoSync float64
	for i := range b.N {
		for _, ns := range []bool{false, true} {
			nosync = ns
			p, q := &pgxRate, &sqlRate
			if ns {
				p, q = &pgxNoSync, &sqlNoSync
			}
			if i%2 == 0 { // alternate which goes first
				*p += rate(viaPgx)
				*q += rate(viaSQL)
			} else {
				*q += rate(viaSQL)
				*p += rate(viaPgx)
			}
		}
	}
	b.ReportMetric(pgxRate/float64(b.N), "pgx_msg/s")
	b.ReportMetric(sqlRate/float64(b.N), "database_sql_msg/s")
	b.ReportMetric(pgxRate/sqlRate, "pgx/database_sql")
	b.ReportMetric(pgxNoSync/float64(b.N), "pgx_nosync_msg/s")
	b.ReportMetric(sqlNoSync/float64(b.N), "database_sql_nosync_msg/s")
	b.ReportMetric(pgxNoSync/sqlNoSync, "pgx/database_sql_nosync")
}
