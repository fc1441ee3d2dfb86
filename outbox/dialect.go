package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// Dialect is the SQL dialect of the outbox table.
type Dialect uint8

const (
	// Postgres is PostgreSQL 12 or later, through the pgx stdlib driver
	// ("pgx"); relays share work with FOR UPDATE SKIP LOCKED and wake on
	// LISTEN/NOTIFY.
	Postgres Dialect = 1
	// SQLite is SQLite 3.35 or later (modernc.org/sqlite, driver "sqlite");
	// relays poll and serialise on the database's write lock.
	SQLite Dialect = 2
)

// String returns "postgres" or "sqlite".
func (d Dialect) String() string {
	switch d {
	case Postgres:
		return "postgres"
	case SQLite:
		return "sqlite"
	}
	return "Dialect(" + strconv.Itoa(int(d)) + ")"
}

// ErrUnknownDialect is returned when the dialect is neither given nor
// recognisable from the database driver.
var ErrUnknownDialect = errors.New("outbox: unknown SQL dialect")

// DetectDialect guesses the dialect from db's driver: the pgx stdlib driver
// gives Postgres, a driver from a package named sqlite gives SQLite, anything
// else 0.
func DetectDialect(db *sql.DB) Dialect {
	t := reflect.TypeOf(db.Driver())
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	pkg := t.PkgPath()
	switch {
	case strings.HasSuffix(pkg, "/pgx/v5/stdlib"), strings.HasSuffix(pkg, "/pgx/v4/stdlib"), strings.Contains(pkg, "lib/pq"):
		return Postgres
	case strings.Contains(pkg, "sqlite"):
		return SQLite
	}
	return 0
}

// dialect holds the SQL differences between Postgres and SQLite.
type dialect struct {
	kind Dialect
}

func dialectFor(d Dialect) (dialect, error) {
	switch d {
	case Postgres, SQLite:
		return dialect{kind: d}, nil
	}
	return dialect{}, fmt.Errorf("%w: %v (set Config.Dialect)", ErrUnknownDialect, d)
}

// ph returns the placeholder for the i-th argument (from 1).
func (d dialect) ph(i int) string {
	if d.kind == Postgres {
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
	if d.kind == Postgres {
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
	if d.kind == Postgres {
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
func createTable(ctx context.Context, db *sql.DB, d dialect, table string) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("outbox: create table %s: %w", table, err)
	}
	defer func() { _ = tx.Rollback() }()
	if d.kind == Postgres {
		if _, err := tx.ExecContext(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, "idemq.outbox.ddl."+table); err != nil {
			return fmt.Errorf("outbox: create table %s: %w", table, err)
		}
	}
	for _, q := range d.ddl(table) {
		if _, err := tx.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("outbox: create table %s: %w", table, err)
		}
	}
	if err := tx.Commit(); err != nil {
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
}

const insertCols = 6

// insertSQL builds a multi-row INSERT ... ON CONFLICT (id) DO NOTHING; with
// notify (Postgres) the same statement signals channel.
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
		b.WriteString(" RETURNING 1) SELECT pg_notify(")
		b.WriteString(d.ph(len(args) + 1))
		b.WriteString(", '')")
		args = append(args, channel)
	}
	return b.String(), args
}
