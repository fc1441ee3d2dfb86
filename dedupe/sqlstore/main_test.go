package sqlstore_test

import (
	"context"
	"database/sql"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	_ "modernc.org/sqlite" // registers the "sqlite" database/sql driver

	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/integration/harness"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// sqliteDSN is the recommended DSN for a database file: WAL, a busy
// timeout of 5s, and synchronous=NORMAL (durable across process crashes,
// which is what the tests exercise, and much faster than FULL in WAL mode).
func sqliteDSN(path string) string {
	return "file:" + path + "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)"
}

// openSQLite opens a fresh database file in t.TempDir with at most maxConns
// connections; it is closed in cleanup.
func openSQLite(t testing.TB, maxConns int) *sql.DB {
	t.Helper()
	db, err := sql.Open("sqlite", sqliteDSN(filepath.Join(t.TempDir(), "dedupe.db")))
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(maxConns)
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// postgresDB returns the harness' fresh-schema database, skipping (or
// failing under CI) without IDEMQ_POSTGRES_URL.
func postgresDB(t testing.TB) *sql.DB {
	t.Helper()
	env := harness.Postgres(t)
	env.DB.SetMaxOpenConns(40)
	return env.DB
}

// tableSeq makes table names unique within a test binary.
var tableSeq atomic.Int64

func nextTable() string { return fmt.Sprintf("dedupe_%d", tableSeq.Add(1)) }

// newStore creates a store in a fresh table on db.
func newStore(t testing.TB, db *sql.DB, now func() time.Time) *sqlstore.Store {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := sqlstore.New(ctx, db, sqlstore.Config{Table: nextTable(), Now: now})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return s
}

// dialects runs fn once per dialect, each with its own database.
func dialects(t *testing.T, fn func(t *testing.T, db *sql.DB)) {
	t.Run("sqlite", func(t *testing.T) { fn(t, openSQLite(t, 1)) })
	t.Run("postgres", func(t *testing.T) { fn(t, postgresDB(t)) })
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
