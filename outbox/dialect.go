package outbox

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/idemq/idemq/dedupe/sqlstore"
)

// dialect holds the SQL differences between Postgres and SQLite.
type dialect struct {
	kind sqlstore.Dialect
}

func dialectFor(d sqlstore.Dialect) (dialect, error) {
	switch d {
	case sqlstore.Postgres, sqlstore.SQLite:
		return dialect{kind: d}, nil
	}
	return dialect{}, fmt.Errorf("%w: %v (set Config.Dialect)", sqlstore.ErrUnknownDialect, d)
}

// ph returns the placeholder for the i-th argument (from 1).
func (d dialect) ph(i int) string {
	if d.kind == sqlstore.Postgres {
		return "$" + strconv.Itoa(i)
	}
	return "?"
}

// list returns n placeholders starting at argument from, comma-separated.
func (d dialect) list(from, n int) string {
	var b strings.Builder
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(d.ph(from + i))
	}
	return b.String()
}

// ts converts t to the stored representation: timestamptz on Postgres, Unix
// microseconds on SQLite.
func (d dialect) ts(t time.Time) any {
	if d.kind == sqlstore.Postgres {
		return t.UTC()
	}
	return t.UnixMicro()
}

// nullTime scans a nullable stored timestamp.
type nullTime struct {
	d     dialect
	Time  time.Time
	Valid bool
}

func (n *nullTime) Scan(v any) error {
	switch x := v.(type) {
	case nil:
		n.Valid = false
		return nil
	case time.Time:
		n.Time, n.Valid = x, true
		return nil
	case int64:
		n.Time, n.Valid = time.UnixMicro(x), true
		return nil
	}
	return fmt.Errorf("outbox: cannot scan %T as a timestamp", v)
}

func unqualified(table string) string {
	if i := strings.LastIndexByte(table, '.'); i >= 0 {
		return table[i+1:]
	}
	return table
}

func schemaOf(table string) string {
	if i := strings.LastIndexByte(table, '.'); i >= 0 {
		return table[:i]
	}
	return ""
}

// ddl returns the statements that create the table and its indexes.
func (d dialect) ddl(table string) []string {
	base := unqualified(table)
	if d.kind == sqlstore.Postgres {
		return []string{
			`CREATE TABLE IF NOT EXISTS ` + table + ` (
	seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
	id              TEXT NOT NULL,
	subject         TEXT NOT NULL,
	headers         BYTEA,
	data            BYTEA NOT NULL,
	ordering_key    TEXT NOT NULL DEFAULT '',
	state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
	attempts        INTEGER NOT NULL DEFAULT 0,
	last_error      TEXT,
	next_attempt_at TIMESTAMPTZ,
	created_at      TIMESTAMPTZ NOT NULL,
	sent_at         TIMESTAMPTZ,
	CONSTRAINT ` + base + `_id_key UNIQUE (id)
)`,
			`CREATE INDEX IF NOT EXISTS ` + base + `_pending_idx ON ` + table + ` (seq) WHERE state = 'pending'`,
			`CREATE INDEX IF NOT EXISTS ` + base + `_key_idx ON ` + table + ` (ordering_key, seq) WHERE state = 'pending' AND ordering_key <> ''`,
			`CREATE INDEX IF NOT EXISTS ` + base + `_sent_idx ON ` + table + ` (sent_at) WHERE state = 'sent'`,
			`CREATE INDEX IF NOT EXISTS ` + base + `_failed_idx ON ` + table + ` (seq) WHERE state = 'failed'`,
		}
	}
	idx := base
	if s := schemaOf(table); s != "" {
		idx = s + "." + base
	}
	return []string{
		`CREATE TABLE IF NOT EXISTS ` + table + ` (
	seq             INTEGER PRIMARY KEY AUTOINCREMENT,
	id              TEXT NOT NULL UNIQUE,
	subject         TEXT NOT NULL,
	headers         BLOB,
	data            BLOB NOT NULL,
	ordering_key    TEXT NOT NULL DEFAULT '',
	state           TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'failed')),
	attempts        INTEGER NOT NULL DEFAULT 0,
	last_error      TEXT,
	next_attempt_at INTEGER,
	created_at      INTEGER NOT NULL,
	sent_at         INTEGER
)`,
		`CREATE INDEX IF NOT EXISTS ` + idx + `_pending_idx ON ` + base + ` (seq) WHERE state = 'pending'`,
		`CREATE INDEX IF NOT EXISTS ` + idx + `_key_idx ON ` + base + ` (ordering_key, seq) WHERE state = 'pending' AND ordering_key <> ''`,
		`CREATE INDEX IF NOT EXISTS ` + idx + `_sent_idx ON ` + base + ` (sent_at) WHERE state = 'sent'`,
		`CREATE INDEX IF NOT EXISTS ` + idx + `_failed_idx ON ` + base + ` (seq) WHERE state = 'failed'`,
	}
}

// createTable runs the DDL in one transaction; on Postgres under an advisory
// lock, because concurrent CREATE ... IF NOT EXISTS can still collide.
func createTable(ctx context.Context, db sqlstore.DB, d dialect, table string) error {
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("outbox: create table %s: %w", table, err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if d.kind == sqlstore.Postgres {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, "idemq.outbox.ddl."+table); err != nil {
			return fmt.Errorf("outbox: create table %s: %w", table, err)
		}
	}
	for _, q := range d.ddl(table) {
		if _, err := tx.Exec(ctx, q); err != nil {
			return fmt.Errorf("outbox: create table %s: %w", table, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("outbox: create table %s: %w", table, err)
	}
	return nil
}

// row is an outbox row as written by AddTx and read by the relay.
type row struct {
	Seq         int64
	ID          string
	Subject     string
	Header      []byte
	Data        []byte
	OrderingKey string
	Attempts    int
	CreatedAt   nullTime // read by the relay's claim, for RelayObserver's lag
	// LastError is read by the relay's claim, to be put back when the
	// round undoes its early mark of a row it did not publish.
	LastError sql.NullString
}

const insertCols = 6

// insertSQL builds a multi-row INSERT ... ON CONFLICT (id) DO NOTHING; with
// notify (Postgres) the same statement signals channel unless a relay is
// awake (notifySelect).
func (d dialect) insertSQL(table string, rows []row, now time.Time, notify bool, channel string) (string, []any) {
	var b strings.Builder
	args := make([]any, 0, len(rows)*insertCols+1)
	if notify {
		b.WriteString("WITH ins AS (")
	}
	b.WriteString("INSERT INTO ")
	b.WriteString(table)
	b.WriteString(" (id, subject, headers, data, ordering_key, created_at) VALUES ")
	ts := d.ts(now)
	for i, r := range rows {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteByte('(')
		b.WriteString(d.list(len(args)+1, insertCols))
		b.WriteByte(')')
		var hdr any
		if r.Header != nil {
			hdr = r.Header
		}
		args = append(args, r.ID, r.Subject, hdr, r.Data, r.OrderingKey, ts)
	}
	b.WriteString(" ON CONFLICT (id) DO NOTHING")
	if notify {
		b.WriteString(" RETURNING 1)")
		b.WriteString(notifySelect(table, d.ph(len(args)+1)))
		args = append(args, channel)
	}
	return b.String(), args
}
