package sqlstore

import (
	"context"
	"fmt"
)

// prepareSQL builds the store's statements for its table and dialect.
func (s *Store) prepareSQL() {
	t := s.table
	s.qInsert = "INSERT INTO " + t + " (" + columns + ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (key) DO NOTHING"
	s.qGet = "SELECT " + columns + " FROM " + t + " WHERE key = $1"
	s.qLock = s.qGet + " FOR UPDATE"
	s.qUpdate = "UPDATE " + t + " SET fingerprint = $2, state = $3, token = $4, lease_until = $5, result = $6, created_at = $7, expires_at = $8, attempts = $9, fence = $10 WHERE key = $1"
	// The WHERE clause of the next three is dedupe's ownership rule: the
	// current token of a live in-progress record. An expired lease nobody
	// took over is still owned.
	const owned = " WHERE key = $1 AND token = $2 AND state = 'in_progress' AND expires_at > $3"
	s.qDone = "UPDATE " + t + " SET state = $4, result = $5, lease_until = 0, expires_at = $6" + owned
	s.qRelease = "UPDATE " + t + " SET token = '', lease_until = 0" + owned
	s.qSnooze = "UPDATE " + t + " SET token = '', lease_until = 0, attempts = CASE WHEN attempts > 0 THEN attempts - 1 ELSE 0 END" + owned
	s.qDelete = "DELETE FROM " + t + owned
	s.qExtend = "UPDATE " + t + " SET lease_until = $4, expires_at = CASE WHEN expires_at > $4 THEN expires_at ELSE $4 END" + owned
	if s.dialect == Postgres {
		s.qCleanup = "DELETE FROM " + t + " WHERE key IN (SELECT key FROM " + t +
			" WHERE expires_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED) AND expires_at <= $1"
	} else {
		s.qCleanup = "DELETE FROM " + t + " WHERE rowid IN (SELECT rowid FROM " + t +
			" WHERE expires_at <= $1 LIMIT $2)"
	}
}

func (s *Store) createTable(ctx context.Context, schema, name string) error {
	blob, integer := "bytea", "bigint"
	if s.dialect == SQLite {
		blob, integer = "BLOB", "INTEGER"
	}
	create := "CREATE TABLE IF NOT EXISTS " + s.table + ` (
	key         ` + blob + ` PRIMARY KEY,
	fingerprint ` + blob + ` NOT NULL,
	state       text NOT NULL CHECK (state IN ('in_progress', 'done', 'failed')),
	token       text NOT NULL,
	lease_until ` + integer + ` NOT NULL,
	result      ` + blob + `,
	created_at  ` + integer + ` NOT NULL,
	expires_at  ` + integer + ` NOT NULL,
	attempts    integer NOT NULL DEFAULT 0,
	fence       ` + integer + ` NOT NULL DEFAULT 0
)`
	idx := name + "_expires_at_idx"
	var index string
	if s.dialect == Postgres {
		// A Postgres index lives in its table's schema and takes no qualifier.
		index = "CREATE INDEX IF NOT EXISTS " + quote(idx) + " ON " + s.table + " (expires_at)"
	} else {
		// SQLite qualifies the index name, not the table name.
		qidx := quote(idx)
		if schema != "" {
			qidx = quote(schema) + "." + qidx
		}
		index = "CREATE INDEX IF NOT EXISTS " + qidx + " ON " + quote(name) + " (expires_at)"
	}

	err := s.inTx(ctx, func(tx Conn) error {
		if s.dialect == Postgres {
			// CREATE TABLE IF NOT EXISTS races with itself in Postgres (a
			// unique violation in pg_type); serialise the creators.
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", ddlLockID); err != nil {
				return err
			}
		}
		if _, err := tx.Exec(ctx, create); err != nil {
			return err
		}
		for _, c := range addedColumns {
			if err := s.addColumn(ctx, tx, schema, name, c.name, c.def(s.dialect)); err != nil {
				return err
			}
		}
		_, err := tx.Exec(ctx, index)
		return err
	})
	if err != nil {
		return fmt.Errorf("sqlstore: create table %s: %w", s.table, err)
	}
	rows, err := s.db.Query(ctx, s.qGet+" AND 1 = 0", []byte{})
	if err != nil {
		return fmt.Errorf("sqlstore: table %s exists but does not have the dedupe columns (%s): %w", s.table, columns, err)
	}
	return rows.Close()
}

// addedColumns are the columns added after the table's first version, which
// New adds to a table that lacks them: attempts (records already stored
// count as attempt 0) and fence (their fence counts as 0, and the next lease
// continues from the clock, see storekit.NextFence).
var addedColumns = []struct {
	name string
	def  func(Dialect) string
}{
	{"attempts", func(Dialect) string { return "integer NOT NULL DEFAULT 0" }},
	{"fence", func(d Dialect) string {
		if d == SQLite {
			return "INTEGER NOT NULL DEFAULT 0"
		}
		return "bigint NOT NULL DEFAULT 0"
	}},
}

// addColumn adds column col (definition def) to a table created before it
// existed.
func (s *Store) addColumn(ctx context.Context, tx Conn, schema, name, col, def string) error {
	// Look first: ALTER TABLE would take an exclusive lock on a table that
	// running consumers use, even when the column exists.
	var n int
	var err error
	if s.dialect == Postgres {
		err = tx.QueryRow(ctx, "SELECT count(*) FROM information_schema.columns "+
			"WHERE table_schema = COALESCE(NULLIF($1, ''), current_schema()) AND table_name = $2 AND column_name = $3",
			schema, name, col).Scan(&n)
	} else {
		// Names are validated identifiers (splitTable), safe to inline.
		info := "pragma_table_info('" + name + "')"
		if schema != "" {
			info = "pragma_table_info('" + name + "', '" + schema + "')"
		}
		err = tx.QueryRow(ctx, "SELECT count(*) FROM "+info+" WHERE name = $1", col).Scan(&n)
	}
	if err != nil {
		return err
	}
	if n > 0 {
		return nil
	}
	_, err = tx.Exec(ctx, "ALTER TABLE "+s.table+" ADD COLUMN "+col+" "+def)
	return err
}

// ddlLockID is the Postgres advisory lock key that serialises table
// creation: FNV-1a 64 of "idemq/sqlstore/ddl". One key for every table, so
// that a qualified and an unqualified name of the same table serialise too.
const ddlLockID int64 = -1450621497885773064

// inTx runs fn in a transaction of its own on s.db.
func (s *Store) inTx(ctx context.Context, fn func(tx Conn) error) error {
	tx, err := s.db.Begin(ctx)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback(context.WithoutCancel(ctx))
		return err
	}
	return tx.Commit(ctx)
}
