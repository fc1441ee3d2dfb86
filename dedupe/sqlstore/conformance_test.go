package sqlstore_test

import (
	"strings"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/storetest"
)

// TestConformanceSQLite runs the shared suite on SQLite with the recommended
// setup: one connection per *sql.DB.
func TestConformanceSQLite(t *testing.T) {
	storetest.Run(t, func(t *testing.T, now func() time.Time) dedupe.Store {
		return newStore(t, openSQLite(t, 1), now)
	})
}

// TestConformanceSQLitePool runs the suite on SQLite with several
// connections to one file, so that concurrent claims contend for SQLite's
// write lock and rely on busy_timeout. ManyKeys is left to the
// one-connection run: on a contended pool it only measures SQLite's busy
// backoff, and it is the slowest subtest by far under -race.
func TestConformanceSQLitePool(t *testing.T) {
	storetest.Run(t, func(t *testing.T, now func() time.Time) dedupe.Store {
		if strings.HasSuffix(t.Name(), "/ManyKeys") {
			t.Skip("ManyKeys runs in TestConformanceSQLite")
		}
		return newStore(t, openSQLite(t, 8), now)
	})
}

// TestConformancePostgres runs the suite on Postgres, one table per subtest
// in the test's own schema.
func TestConformancePostgres(t *testing.T) {
	db := postgresDB(t)
	storetest.Run(t, func(t *testing.T, now func() time.Time) dedupe.Store {
		return newStore(t, db, now)
	})
}
