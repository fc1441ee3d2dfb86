package sqlstore_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/dedupe/storetest"
)

func TestCleanup(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB) {
		var clock storetest.Clock
		ctx := testCtx(t)
		table := nextTable()
		s, err := sqlstore.New(ctx, db, sqlstore.Config{Table: table, Now: clock.Now})
		if err != nil {
			t.Fatal(err)
		}
		// 7 records kept for 1 minute, 3 for 1 hour.
		for i := range 10 {
			ret := time.Minute
			if i >= 7 {
				ret = time.Hour
			}
			c, err := s.Claim(ctx, fmt.Sprint("k", i), "fp", time.Second, ret)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Complete(ctx, fmt.Sprint("k", i), c.Token, dedupe.Result{}, ret); err != nil {
				t.Fatal(err)
			}
		}
		if n, err := s.Cleanup(ctx, 3); err != nil || n != 0 {
			t.Fatalf("Cleanup before expiry: %d, %v; want 0", n, err)
		}
		clock.Advance(time.Minute) // retention of k0..k6 ends exactly now
		if _, err := s.Get(ctx, "k0"); !errors.Is(err, sqlstore.ErrNotFound) {
			t.Fatalf("Get of an expired record: %v, want ErrNotFound", err)
		}
		n, err := s.Cleanup(ctx, 3) // batches of 3, 3, 1
		if err != nil || n != 7 {
			t.Fatalf("Cleanup: %d, %v; want 7", n, err)
		}
		if got := countRows(t, db, table); got != 3 {
			t.Fatalf("%d rows left, want 3", got)
		}
		for i := 7; i < 10; i++ {
			if r, err := s.Get(ctx, fmt.Sprint("k", i)); err != nil || r.State != dedupe.StateDone {
				t.Fatalf("Get(k%d) after cleanup: %+v, %v", i, r, err)
			}
		}
		if n, err := s.Cleanup(ctx, 0); err != nil || n != 0 {
			t.Fatalf("second Cleanup: %d, %v; want 0", n, err)
		}
		cancelled, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := s.Cleanup(cancelled, 0); !errors.Is(err, context.Canceled) {
			t.Fatalf("Cleanup with a cancelled context: %v", err)
		}
	})
}

func TestGet(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB) {
		var clock storetest.Clock
		s := newStore(t, db, clock.Now)
		ctx := testCtx(t)
		if _, err := s.Get(ctx, "nope"); !errors.Is(err, sqlstore.ErrNotFound) {
			t.Fatalf("Get of an absent key: %v, want ErrNotFound", err)
		}
		key := "k\x00\xff"
		c, err := s.Claim(ctx, key, "fp\xfe", lease, retention)
		if err != nil {
			t.Fatal(err)
		}
		r, err := s.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		want := dedupe.Record{
			Key: key, Fingerprint: "fp\xfe", State: dedupe.StateInProgress, Token: c.Token,
			LeaseUntil: storetest.Epoch.Add(lease), CreatedAt: storetest.Epoch, ExpiresAt: storetest.Epoch.Add(retention),
		}
		if r.Key != want.Key || r.Fingerprint != want.Fingerprint || r.State != want.State || r.Token != want.Token ||
			!r.LeaseUntil.Equal(want.LeaseUntil) || !r.CreatedAt.Equal(want.CreatedAt) || !r.ExpiresAt.Equal(want.ExpiresAt) || r.Result != nil {
			t.Fatalf("Get = %+v, want %+v", r, want)
		}
		clock.Advance(time.Second)
		if err := s.Complete(ctx, key, c.Token, dedupe.Result{Failed: true, Data: []byte("402")}, 2*time.Hour); err != nil {
			t.Fatal(err)
		}
		r, err = s.Get(ctx, key)
		if err != nil {
			t.Fatal(err)
		}
		if r.State != dedupe.StateFailed || string(r.Result) != "402" || !r.LeaseUntil.IsZero() ||
			!r.CreatedAt.Equal(storetest.Epoch) || !r.ExpiresAt.Equal(storetest.Epoch.Add(time.Second+2*time.Hour)) {
			t.Fatalf("Get after Complete = %+v", r)
		}
	})
}

func TestTableName(t *testing.T) {
	db := openSQLite(t, 1)
	ctx := testCtx(t)
	bad := []string{
		"1table", "a.b.c", "a-b", "x;DROP TABLE y", "t ", `"t"`, ".t", "t.", "тable",
		strings.Repeat("a", 49), "main." + strings.Repeat("a", 49),
	}
	for _, name := range bad {
		if _, err := sqlstore.New(ctx, db, sqlstore.Config{Table: name}); !errors.Is(err, sqlstore.ErrInvalidTable) {
			t.Errorf("New with table %q: %v, want ErrInvalidTable", name, err)
		}
	}
	for _, name := range []string{"", "idemq_dedupe", "Mixed_Case", "select", "main.qualified", strings.Repeat("a", 48)} {
		s, err := sqlstore.New(ctx, db, sqlstore.Config{Table: name})
		if err != nil {
			t.Errorf("New with table %q: %v", name, err)
			continue
		}
		if c, err := s.Claim(ctx, "k-"+name, "fp", lease, retention); err != nil || c.Status != dedupe.Acquired {
			t.Errorf("table %q: Claim = %+v, %v", name, c, err)
		}
	}
	// The default table is "idemq_dedupe": "" and the explicit name share it.
	if got := countRows(t, db, "idemq_dedupe"); got != 2 {
		t.Errorf("idemq_dedupe holds %d rows, want 2", got)
	}
}

func TestSchemaQualifiedPostgres(t *testing.T) {
	db := postgresDB(t)
	ctx := testCtx(t)
	var schema string
	if err := db.QueryRowContext(ctx, "SELECT current_schema()").Scan(&schema); err != nil {
		t.Fatal(err)
	}
	s, err := sqlstore.New(ctx, db, sqlstore.Config{Table: schema + ".Qualified"})
	if err != nil {
		t.Fatal(err)
	}
	if s.Dialect() != sqlstore.Postgres {
		t.Fatalf("detected dialect %v, want postgres", s.Dialect())
	}
	if _, err := s.Claim(ctx, "k", "fp", lease, retention); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM "`+schema+`"."Qualified"`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("rows in the qualified table: %d, %v", n, err)
	}
}

// TestConcurrentNew: several processes starting at once all create (or
// find) the table without error.
func TestConcurrentNew(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB) {
		ctx := testCtx(t)
		table := nextTable()
		var wg sync.WaitGroup
		errs := make([]error, 8)
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = sqlstore.New(ctx, db, sqlstore.Config{Table: table})
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Errorf("New #%d: %v", i, err)
			}
		}
	})
}

func TestIncompatibleTable(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB) {
		ctx := testCtx(t)
		table := nextTable()
		if _, err := db.ExecContext(ctx, "CREATE TABLE "+table+" (id integer PRIMARY KEY)"); err != nil {
			t.Fatal(err)
		}
		if _, err := sqlstore.New(ctx, db, sqlstore.Config{Table: table}); err == nil {
			t.Fatal("New on a table without the dedupe columns succeeded")
		}
	})
}

// TestClosedDB: every call on a closed *sql.DB fails with an error, and
// never with one a caller would act on as a dedupe answer.
func TestClosedDB(t *testing.T) {
	db := openSQLite(t, 1)
	s := newStore(t, db, nil)
	ctx := testCtx(t)
	c, err := s.Claim(ctx, "k", "fp", lease, retention)
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	check := func(op string, err error) {
		t.Helper()
		if err == nil || errors.Is(err, dedupe.ErrLeaseLost) || errors.Is(err, sqlstore.ErrNotFound) {
			t.Errorf("%s on a closed DB: %v, want an error that is not a dedupe answer", op, err)
		}
		if err != nil && !strings.HasPrefix(err.Error(), "sqlstore: ") {
			t.Errorf("%s on a closed DB: %q does not say which package failed", op, err)
		}
	}
	_, err = s.Claim(ctx, "k2", "fp", lease, retention)
	check("Claim", err)
	check("Complete", s.Complete(ctx, "k", c.Token, dedupe.Result{}, retention))
	check("Release", s.Release(ctx, "k", c.Token))
	check("Extend", s.Extend(ctx, "k", c.Token, lease))
	_, err = s.Get(ctx, "k")
	check("Get", err)
	_, err = s.Cleanup(ctx, 0)
	check("Cleanup", err)
	_, err = sqlstore.New(ctx, db, sqlstore.Config{})
	check("New", err)
}

func TestDialect(t *testing.T) {
	s := newStore(t, openSQLite(t, 1), nil)
	if s.Dialect() != sqlstore.SQLite {
		t.Fatalf("detected dialect %v, want sqlite", s.Dialect())
	}
	for d, want := range map[sqlstore.Dialect]string{sqlstore.Auto: "auto", sqlstore.Postgres: "postgres", sqlstore.SQLite: "sqlite", 9: "Dialect(9)"} {
		if got := d.String(); got != want {
			t.Errorf("Dialect(%d).String() = %q, want %q", int(d), got, want)
		}
	}
	// A driver it does not know needs an explicit dialect.
	unknown := sql.OpenDB(fakeConnector{})
	defer unknown.Close()
	if _, err := sqlstore.New(testCtx(t), unknown, sqlstore.Config{}); !errors.Is(err, sqlstore.ErrUnknownDialect) {
		t.Fatalf("New on an unknown driver: %v, want ErrUnknownDialect", err)
	}
	if _, err := sqlstore.New(testCtx(t), unknown, sqlstore.Config{Dialect: 9}); !errors.Is(err, sqlstore.ErrUnknownDialect) {
		t.Fatalf("New with Dialect(9): %v, want ErrUnknownDialect", err)
	}
}

func TestInvalidArguments(t *testing.T) {
	s := newStore(t, openSQLite(t, 1), nil)
	ctx := testCtx(t)
	c, err := s.Claim(ctx, "k", "fp", lease, retention)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Complete(ctx, "k", c.Token, dedupe.Result{}, 0); !errors.Is(err, dedupe.ErrInvalidLease) {
		t.Errorf("Complete with zero retention: %v, want ErrInvalidLease", err)
	}
	if err := s.Extend(ctx, "k", c.Token, -time.Second); !errors.Is(err, dedupe.ErrInvalidLease) {
		t.Errorf("Extend with a negative lease: %v, want ErrInvalidLease", err)
	}
	for _, tok := range []string{"", "\xff", "a\x00b", c.Token + "x"} {
		if err := s.Complete(ctx, "k", tok, dedupe.Result{}, retention); !errors.Is(err, dedupe.ErrLeaseLost) {
			t.Errorf("Complete with token %q: %v, want ErrLeaseLost", tok, err)
		}
	}
	if _, err := sqlstore.New(ctx, nil, sqlstore.Config{}); err == nil {
		t.Error("New with a nil *sql.DB succeeded")
	}
}

// fakeConnector is a driver.Connector of a driver sqlstore does not know.
// It is never asked for a connection.
type fakeConnector struct{}

func (fakeConnector) Connect(context.Context) (driver.Conn, error) {
	return nil, errors.New("fake driver: no connections")
}
func (fakeConnector) Driver() driver.Driver { return fakeDriver{} }

type fakeDriver struct{}

func (fakeDriver) Open(string) (driver.Conn, error) {
	return nil, errors.New("fake driver: no connections")
}

// TestClaimReleaseChurn: claimers race with holders that release at once,
// so rows vanish between a claimer's INSERT and its SELECT. Every call must
// succeed, and the lease must stay exclusive: never two holders at once.
func TestClaimReleaseChurn(t *testing.T) {
	churn := func(t *testing.T, db *sql.DB) {
		s := newStore(t, db, nil)
		ctx := testCtx(t)
		var holders, acquired atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, 8)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for range 40 {
					c, err := s.Claim(ctx, "hot", "fp", time.Minute, time.Hour)
					if err != nil {
						errs <- err
						return
					}
					if c.Status != dedupe.Acquired {
						continue
					}
					acquired.Add(1)
					if n := holders.Add(1); n != 1 {
						errs <- fmt.Errorf("%d holders at once", n)
					}
					holders.Add(-1)
					if err := s.Release(ctx, "hot", c.Token); err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
		if acquired.Load() == 0 {
			t.Fatal("no claim ever acquired the key")
		}
	}
	t.Run("sqlite", func(t *testing.T) { churn(t, openSQLite(t, 4)) })
	t.Run("postgres", func(t *testing.T) { churn(t, postgresDB(t)) })
}
