package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strings"
	"time"
)

// ErrNotFound is returned by Get when no live record exists for the key
// (never claimed, released, or retention over).
var ErrNotFound = errors.New("sqlstore: record not found")

// ErrInvalidTable is returned by New when Config.Table is not a plain or
// schema-qualified SQL identifier.
var ErrInvalidTable = errors.New("sqlstore: invalid table name")

// ErrUnknownDialect is returned by New when Config.Dialect is unset and the
// dialect cannot be told from the driver of the *sql.DB.
var ErrUnknownDialect = errors.New("sqlstore: unknown SQL dialect")

// ErrNotInTx is returned by ClaimTx when it is given a *sql.DB: a claim in the
// caller's transaction needs a transaction (*sql.Tx, or a *sql.Conn inside
// BEGIN). Use Claim for a claim in its own transaction.
var ErrNotInTx = errors.New("sqlstore: ClaimTx needs a transaction, not a *sql.DB")

// Dialect is a SQL dialect: of the dedupe table here, and of the outbox
// table in package outbox, which shares this type.
type Dialect int

const (
	// Auto, the zero value, detects the dialect from the type of db.Driver():
	// pgx (github.com/jackc/pgx/v5/stdlib) and lib/pq are Postgres,
	// modernc.org/sqlite and mattn/go-sqlite3 are SQLite. Only pgx and
	// modernc.org/sqlite are tested.
	Auto Dialect = iota
	// Postgres is PostgreSQL 12 or later.
	Postgres
	// SQLite is SQLite 3.24 or later (INSERT ... ON CONFLICT).
	SQLite
)

// String returns "auto", "postgres" or "sqlite".
func (d Dialect) String() string {
	switch d {
	case Auto:
		return "auto"
	case Postgres:
		return "postgres"
	case SQLite:
		return "sqlite"
	}
	return fmt.Sprintf("Dialect(%d)", int(d))
}

// DefaultTable is the table name used when Config.Table is empty.
const DefaultTable = "idemq_dedupe"

// DefaultCleanupBatch is the batch size Cleanup uses when limit <= 0: 1000 rows.
const DefaultCleanupBatch = 1000

// maxIdentLen bounds each part of a table name, so that the index name
// "<table>_expires_at_idx" stays within Postgres' 63-byte identifier limit.
const maxIdentLen = 48

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// Config configures a Store. Its zero value means defaults.
type Config struct {
	// Table is the table holding the records: an identifier of letters,
	// digits and underscores (at most 48 bytes, not starting with a digit),
	// optionally qualified by a schema ("app.idemq_dedupe"). It is quoted in
	// SQL, so it is case-sensitive. Default DefaultTable ("idemq_dedupe").
	Table string
	// Dialect selects Postgres or SQLite. Default Auto: detected from the
	// driver of the *sql.DB.
	Dialect Dialect
	// Now is the clock. Every lease and expiry is computed from it, never
	// from the database's clock. Default time.Now.
	Now func() time.Time
}

// Querier runs statements: *sql.DB, *sql.Tx and *sql.Conn satisfy it. The
// *Tx variants here and outbox's AddTx take one, so that records and
// outgoing messages commit (or roll back) with the caller's own writes.
type Querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// Store is a dedupe.Store in a Postgres or SQLite table. It is safe for
// concurrent use and holds no goroutines or connections of its own: the
// *sql.DB belongs to the caller, who closes it.
//
// Claim, Complete, Release and Extend each run in their own short
// transaction (store dedupe). ClaimTx, CompleteTx, ReleaseTx and ExtendTx run
// in the caller's transaction, so the record commits or rolls back with the
// caller's own writes (the transactional inbox).
type Store struct {
	db      DB
	dialect Dialect
	now     func() time.Time
	table   string // quoted, possibly schema-qualified

	qInsert  string
	qGet     string
	qLock    string // qGet with FOR UPDATE (Postgres only)
	qUpdate  string
	qDone    string
	qRelease string
	qSnooze  string
	qDelete  string
	qExtend  string
	qCleanup string
}

// New returns a Store on db, creating the table and its expires_at index if
// they are missing. Creation is safe when several processes start at once
// (Postgres serialises it with an advisory lock, SQLite with its write lock).
// An existing table must have the columns New would create.
func New(ctx context.Context, db *sql.DB, cfg Config) (*Store, error) {
	if db == nil {
		return nil, errors.New("sqlstore: nil *sql.DB")
	}
	if cfg.Dialect == Auto {
		cfg.Dialect = DetectDialect(db)
		if cfg.Dialect == Auto {
			return nil, fmt.Errorf("%w: driver %T; set Config.Dialect", ErrUnknownDialect, db.Driver())
		}
	}
	return NewOn(ctx, SQLDB(db), cfg)
}

// NewOn is New on any DB: SQLDB(db) for a *sql.DB (what New does), or
// pgxconn.Pool(pool) for a *pgxpool.Pool, whose statements then go through
// pgx itself rather than database/sql. Config.Dialect Auto asks db for its
// dialect (pgxconn's adapters answer Postgres); a DB that cannot tell is
// ErrUnknownDialect.
func NewOn(ctx context.Context, db DB, cfg Config) (*Store, error) {
	o := cfg
	if o.Table == "" {
		o.Table = DefaultTable
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if db == nil {
		return nil, errors.New("sqlstore: nil DB")
	}
	schema, name, err := splitTable(o.Table)
	if err != nil {
		return nil, err
	}
	if o.Dialect == Auto {
		if d, ok := db.(interface{ Dialect() Dialect }); ok {
			o.Dialect = d.Dialect()
		}
		if o.Dialect == Auto {
			return nil, fmt.Errorf("%w: %T does not say; set Config.Dialect", ErrUnknownDialect, db)
		}
	}
	if o.Dialect != Postgres && o.Dialect != SQLite {
		return nil, fmt.Errorf("%w: %v", ErrUnknownDialect, o.Dialect)
	}
	s := &Store{db: db, dialect: o.Dialect, now: o.Now}
	s.table = quote(name)
	if schema != "" {
		s.table = quote(schema) + "." + quote(name)
	}
	s.prepareSQL()
	if err := s.createTable(ctx, schema, name); err != nil {
		return nil, err
	}
	return s, nil
}

// Dialect returns the dialect the store speaks (never Auto).
func (s *Store) Dialect() Dialect { return s.dialect }

// splitTable validates a possibly schema-qualified table name.
func splitTable(table string) (schema, name string, err error) {
	parts := strings.Split(table, ".")
	if len(parts) > 2 {
		return "", "", fmt.Errorf("%w: %q has more than one dot", ErrInvalidTable, table)
	}
	for _, p := range parts {
		if !identRE.MatchString(p) || len(p) > maxIdentLen {
			return "", "", fmt.Errorf("%w: %q: each part must be 1 to %d letters, digits or underscores, not starting with a digit",
				ErrInvalidTable, table, maxIdentLen)
		}
	}
	if len(parts) == 2 {
		return parts[0], parts[1], nil
	}
	return "", parts[0], nil
}

// quote double-quotes an identifier already validated by splitTable.
func quote(ident string) string { return `"` + ident + `"` }

// DetectDialect tells the dialect from the package of db's driver type,
// without importing (and so linking and registering) any driver: pgx and
// lib/pq are Postgres, modernc.org/sqlite and mattn/go-sqlite3 SQLite,
// anything else Auto (unknown).
func DetectDialect(db *sql.DB) Dialect {
	t := reflect.TypeOf(db.Driver())
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil {
		return Auto
	}
	switch t.PkgPath() {
	case "github.com/jackc/pgx/v5/stdlib", "github.com/jackc/pgx/v4/stdlib", "github.com/lib/pq":
		return Postgres
	case "modernc.org/sqlite", "github.com/mattn/go-sqlite3":
		return SQLite
	}
	return Auto
}

// columns are the dedupe table's columns, in the order recordArgs and
// scanRecord use.
const columns = "key, fingerprint, state, token, lease_until, result, created_at, expires_at, attempts, fence"
