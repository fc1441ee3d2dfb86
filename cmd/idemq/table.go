package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/idemq/idemq/dedupe/sqlstore"
)

// tableRE is the table name syntax sqlstore and outbox accept: an
// identifier, optionally schema-qualified.
var tableRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// errNoTable is returned when the table a command reads does not exist.
var errNoTable = errors.New("table does not exist")

// requireTable fails when table does not exist in db, so that inspecting
// never creates one (sqlstore.New and outbox.New create missing tables)
// and a fresh database gets a sentence instead of the driver's "relation
// does not exist". what names the table's role ("outbox", "dedupe"), and
// creator says what would have created it. The record format stays the
// packages' business: only existence is checked.
func requireTable(ctx context.Context, db *sql.DB, dbURL, what, table, creator string) error {
	if !tableRE.MatchString(table) {
		return fmt.Errorf("-table: %w: %q", sqlstore.ErrInvalidTable, table)
	}
	schema, name, qualified := strings.Cut(table, ".")
	if !qualified {
		schema, name = "", table
	}
	var n int
	var err error
	switch sqlstore.DetectDialect(db) {
	case sqlstore.Postgres:
		err = db.QueryRowContext(ctx, "SELECT count(*) FROM information_schema.tables "+
			"WHERE table_schema = COALESCE(NULLIF($1, ''), current_schema()) AND table_name = $2", schema, name).Scan(&n)
	default: // SQLite; names are validated identifiers, safe to inline
		master := "sqlite_master"
		if qualified {
			master = `"` + schema + `".sqlite_master`
		}
		err = db.QueryRowContext(ctx, "SELECT count(*) FROM "+master+" WHERE type = 'table' AND name = $1", name).Scan(&n)
	}
	if err != nil {
		return fmt.Errorf("look up the %s table %s: %w", what, table, err)
	}
	if n == 0 {
		return fmt.Errorf("%w: no %s table %q in the database %s: %s creates it on first use, so either nothing "+
			"has used this database yet, or the program uses another table or database (name them with -table NAME and -db URL)",
			errNoTable, what, table, redactURL(dbURL), creator)
	}
	return nil
}
