package sqlstore_test

import (
	"database/sql"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/dedupe/storekit"
	"github.com/idemq/idemq/dedupe/storetest"
)

// TestAddsLaterColumns checks that New adds the attempts and fence columns
// to a table of the first version, whose records then read as attempt 0 and
// fence 0 and continue from there.
func TestAddsLaterColumns(t *testing.T) {
	dialects(t, func(t *testing.T, db *sql.DB) {
		ctx := testCtx(t)
		blob, integer := "bytea", "bigint"
		if sqlstore.DetectDialect(db) == sqlstore.SQLite {
			blob, integer = "BLOB", "INTEGER"
		}
		table := nextTable()
		if _, err := db.ExecContext(ctx, `CREATE TABLE "`+table+`" (
			key `+blob+` PRIMARY KEY, fingerprint `+blob+` NOT NULL, state text NOT NULL, token text NOT NULL,
			lease_until `+integer+` NOT NULL, result `+blob+`, created_at `+integer+` NOT NULL, expires_at `+integer+` NOT NULL)`); err != nil {
			t.Fatal(err)
		}
		var clock storetest.Clock
		now := clock.Now().UnixNano()
		// A released in-progress record, kept for an hour.
		if _, err := db.ExecContext(ctx, `INSERT INTO "`+table+`" VALUES ($1, $2, 'in_progress', '', 0, NULL, $3, $4)`,
			[]byte("k"), []byte("fp"), now, now+int64(time.Hour)); err != nil {
			t.Fatal(err)
		}
		s, err := sqlstore.New(ctx, db, sqlstore.Config{Table: table, Now: clock.Now})
		if err != nil {
			t.Fatalf("New on a first-version table: %v", err)
		}
		r, err := s.Get(ctx, "k")
		if err != nil || r.Attempts != 0 || r.Fence != 0 {
			t.Fatalf("Get of a first-version record: %+v, %v; want attempts 0, fence 0", r, err)
		}
		c, err := s.Claim(ctx, "k", "fp", time.Second, time.Hour)
		if err != nil || c.Status != dedupe.Acquired || c.Attempt != 1 || c.Fence != storekit.NextFence(0, clock.Now()) {
			t.Fatalf("claim of a first-version record: %+v, %v; want acquired, attempt 1, fence from the clock", c, err)
		}
		// New again finds both columns and changes nothing.
		if _, err := sqlstore.New(ctx, db, sqlstore.Config{Table: table, Now: clock.Now}); err != nil {
			t.Fatalf("second New: %v", err)
		}
		if r, err := s.Get(ctx, "k"); err != nil || r.Fence != c.Fence || r.Attempts != 1 {
			t.Fatalf("record after the claim: %+v, %v; want fence %d, attempts 1", r, err, c.Fence)
		}
	})
}
