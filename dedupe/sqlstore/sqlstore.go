package sqlstore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/storekit"
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

const columns = "key, fingerprint, state, token, lease_until, result, created_at, expires_at, attempts, fence"

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

// validToken reports whether token can be a stored token: non-empty text
// (tokens are hex from storekit.NewToken).
func validToken(token string) bool {
	return token != "" && utf8.ValidString(token) && strings.IndexByte(token, 0) < 0
}

// nanos converts a time to Unix nanoseconds, the zero time to 0.
func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// fromNanos is the inverse of nanos.
func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func recordArgs(r *dedupe.Record) []any {
	return []any{[]byte(r.Key), []byte(r.Fingerprint), r.State.String(), r.Token, nanos(r.LeaseUntil), r.Result, nanos(r.CreatedAt), nanos(r.ExpiresAt), r.Attempts, int64(r.Fence)}
}

func scanRecord(row interface{ Scan(...any) error }) (*dedupe.Record, error) {
	var (
		r                                dedupe.Record
		key, fingerprint                 []byte
		state                            string
		leaseUntil, createdAt, expiresAt int64
		fence                            int64
	)
	if err := row.Scan(&key, &fingerprint, &state, &r.Token, &leaseUntil, &r.Result, &createdAt, &expiresAt, &r.Attempts, &fence); err != nil {
		return nil, err
	}
	st, err := dedupe.ParseState(state)
	if err != nil {
		return nil, err
	}
	r.Key, r.Fingerprint, r.State = string(key), string(fingerprint), st
	r.Fence = uint64(max(fence, 0))
	r.LeaseUntil = fromNanos(leaseUntil)
	r.CreatedAt = fromNanos(createdAt)
	r.ExpiresAt = fromNanos(expiresAt)
	return &r, nil
}

// Claim implements dedupe.Store: the state machine of storekit.Decide, with
// the record committed when Claim returns, so a crash inside the handler
// lets the next attempt take over once the lease expires (store dedupe). Use
// ClaimTx to make the record part of the handler's own transaction.
//
// A new key costs one INSERT, a known key one more SELECT (Busy, Duplicate
// and Conflict are answered without a lock or a write); only a takeover, or
// the replacement of a record whose retention is over, opens a short
// transaction that locks the row.
func (s *Store) Claim(ctx context.Context, key, fingerprint string, lease, retention time.Duration) (dedupe.Claim, error) {
	if err := checkClaim(ctx, lease, retention); err != nil {
		return dedupe.Claim{}, err
	}
	now := s.now()
	c, ok, err := s.claimFast(ctx, key, fingerprint, now, lease, retention)
	if err != nil {
		return dedupe.Claim{}, fmt.Errorf("sqlstore: claim %q: %w", key, err)
	}
	if ok {
		return c, nil
	}
	err = s.inTx(ctx, func(tx Conn) error {
		var err error
		c, err = s.claim(ctx, tx, key, fingerprint, now, lease, retention)
		return err
	})
	if err != nil {
		return dedupe.Claim{}, fmt.Errorf("sqlstore: claim %q: %w", key, err)
	}
	return c, nil
}

// claimFast answers the claims that need no transaction: each statement is
// atomic on its own. ok is false when the record must be written over (a
// takeover or an expired record) or vanished between the two statements.
func (s *Store) claimFast(ctx context.Context, key, fingerprint string, now time.Time, lease, retention time.Duration) (c dedupe.Claim, ok bool, err error) {
	c, rec := storekit.Decide(nil, key, fingerprint, now, lease, retention)
	n, err := s.db.Exec(ctx, s.qInsert, recordArgs(rec)...)
	if err != nil {
		return dedupe.Claim{}, false, err
	}
	if n == 1 {
		return c, true, nil
	}
	cur, err := scanRecord(s.db.QueryRow(ctx, s.qGet, []byte(key)))
	if errors.Is(err, sql.ErrNoRows) {
		return dedupe.Claim{}, false, nil
	}
	if err != nil {
		return dedupe.Claim{}, false, err
	}
	c, rec = storekit.Decide(cur, key, fingerprint, now, lease, retention)
	return c, rec == nil, nil
}

// ClaimTx is Claim inside the caller's transaction tx (a *sql.Tx, or a
// *sql.Conn inside BEGIN; a *sql.DB is refused with ErrNotInTx). The record
// commits or rolls back with the caller's own writes: roll back and the
// redelivery is Acquired again; commit after CompleteTx and every later claim
// is a Duplicate. This is the transactional inbox: database effects happen
// exactly once.
//
// On Postgres (READ COMMITTED, the default isolation) a concurrent ClaimTx of
// the same key blocks on the primary key until this transaction ends, then
// sees the committed record (Duplicate, Conflict or Busy) or, after a
// rollback, acquires the key itself. Under REPEATABLE READ or SERIALIZABLE
// that second claim fails with a serialization error instead. On SQLite the
// transaction should be opened with _txlock=immediate (or the *sql.DB limited
// to one connection), so that it holds the write lock from BEGIN.
func (s *Store) ClaimTx(ctx context.Context, tx Querier, key, fingerprint string, lease, retention time.Duration) (dedupe.Claim, error) {
	return s.ClaimIn(ctx, SQL(tx), key, fingerprint, lease, retention)
}

// ClaimIn is ClaimTx on any Conn inside a transaction: SQL(tx), or
// pgxconn.Tx(tx) for a pgx.Tx, so that the record commits with the writes
// the handler makes through pgx. A Conn outside a transaction (a pool) is
// refused with ErrNotInTx.
func (s *Store) ClaimIn(ctx context.Context, tx Conn, key, fingerprint string, lease, retention time.Duration) (dedupe.Claim, error) {
	if !tx.InTx() {
		return dedupe.Claim{}, ErrNotInTx
	}
	if err := checkClaim(ctx, lease, retention); err != nil {
		return dedupe.Claim{}, err
	}
	c, err := s.claim(ctx, tx, key, fingerprint, s.now(), lease, retention)
	if err != nil {
		return dedupe.Claim{}, fmt.Errorf("sqlstore: claim %q: %w", key, err)
	}
	return c, nil
}

func checkClaim(ctx context.Context, lease, retention time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return storekit.ValidateLease(lease, retention)
}

// maxClaimRounds bounds how often claim retries when the row it conflicted
// with is deleted (released or cleaned up) before it could lock it.
const maxClaimRounds = 8

// claim runs the state machine on tx: insert a new in-progress row; if the
// key exists, read it and decide in Go. Busy, Duplicate and Conflict need no
// lock (a live done or failed record never changes until it expires; an
// in-progress one read a moment early is still a true answer), so only a
// takeover or the replacement of an expired record locks the row (SELECT
// ... FOR UPDATE on Postgres; on SQLite the INSERT already holds the write
// lock), decides again on the locked row and writes the decision back.
func (s *Store) claim(ctx context.Context, tx Conn, key, fingerprint string, now time.Time, lease, retention time.Duration) (dedupe.Claim, error) {
	for range maxClaimRounds {
		c, rec := storekit.Decide(nil, key, fingerprint, now, lease, retention)
		n, err := tx.Exec(ctx, s.qInsert, recordArgs(rec)...)
		if err != nil {
			return dedupe.Claim{}, err
		}
		if n == 1 {
			return c, nil
		}
		cur, err := scanRecord(tx.QueryRow(ctx, s.qGet, []byte(key)))
		if errors.Is(err, sql.ErrNoRows) {
			continue // deleted since the insert conflicted: insert again
		}
		if err != nil {
			return dedupe.Claim{}, err
		}
		c, rec = storekit.Decide(cur, key, fingerprint, now, lease, retention)
		if rec == nil {
			return c, nil
		}
		if s.dialect == Postgres {
			cur, err = scanRecord(tx.QueryRow(ctx, s.qLock, []byte(key)))
			if errors.Is(err, sql.ErrNoRows) {
				continue
			}
			if err != nil {
				return dedupe.Claim{}, err
			}
			c, rec = storekit.Decide(cur, key, fingerprint, now, lease, retention)
			if rec == nil {
				return c, nil // another claimer took over first
			}
		}
		if _, err := tx.Exec(ctx, s.qUpdate, recordArgs(rec)...); err != nil {
			return dedupe.Claim{}, err
		}
		return c, nil
	}
	return dedupe.Claim{}, fmt.Errorf("row inserted and deleted concurrently %d times", maxClaimRounds)
}

// Complete implements dedupe.Store with one conditional UPDATE.
func (s *Store) Complete(ctx context.Context, key, token string, res dedupe.Result, retention time.Duration) error {
	return s.CompleteIn(ctx, s.db, key, token, res, retention)
}

// CompleteTx is Complete on tx (a *sql.Tx, *sql.Conn or *sql.DB). In the
// inbox, call it in the transaction that ran ClaimTx and the handler's
// writes; the result is stored when that transaction commits.
func (s *Store) CompleteTx(ctx context.Context, tx Querier, key, token string, res dedupe.Result, retention time.Duration) error {
	return s.CompleteIn(ctx, SQL(tx), key, token, res, retention)
}

// CompleteIn is CompleteTx on any Conn (see ClaimIn).
func (s *Store) CompleteIn(ctx context.Context, tx Conn, key, token string, res dedupe.Result, retention time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if retention <= 0 {
		return fmt.Errorf("%w: retention %v must be positive", dedupe.ErrInvalidLease, retention)
	}
	now := s.now()
	state := dedupe.StateDone
	if res.Failed {
		state = dedupe.StateFailed
	}
	return s.owned(ctx, tx, "complete", s.qDone, key, token, now, state.String(), res.Data, nanos(now.Add(retention)))
}

// Release implements dedupe.Store with one conditional UPDATE.
func (s *Store) Release(ctx context.Context, key, token string) error {
	return s.ReleaseIn(ctx, s.db, key, token)
}

// ReleaseTx is Release on tx (a *sql.Tx, *sql.Conn or *sql.DB). In the inbox
// a rollback already removes a record claimed in the same transaction;
// ReleaseTx is for a record claimed earlier and committed.
func (s *Store) ReleaseTx(ctx context.Context, tx Querier, key, token string) error {
	return s.ReleaseIn(ctx, SQL(tx), key, token)
}

// ReleaseIn is ReleaseTx on any Conn (see ClaimIn).
func (s *Store) ReleaseIn(ctx context.Context, tx Conn, key, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.owned(ctx, tx, "release", s.qRelease, key, token, s.now())
}

// Delete implements dedupe.Store with one conditional DELETE.
func (s *Store) Delete(ctx context.Context, key, token string) error {
	return s.DeleteIn(ctx, s.db, key, token)
}

// DeleteTx is Delete on tx (a *sql.Tx, *sql.Conn or *sql.DB).
func (s *Store) DeleteTx(ctx context.Context, tx Querier, key, token string) error {
	return s.DeleteIn(ctx, SQL(tx), key, token)
}

// DeleteIn is DeleteTx on any Conn (see ClaimIn).
func (s *Store) DeleteIn(ctx context.Context, tx Conn, key, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.owned(ctx, tx, "delete", s.qDelete, key, token, s.now())
}

// Ping implements dedupe.Pinger: it pings the database.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.db.Ping(ctx); err != nil {
		return fmt.Errorf("sqlstore: ping: %w", err)
	}
	return nil
}

// Extend implements dedupe.Store with one conditional UPDATE.
func (s *Store) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	return s.ExtendIn(ctx, s.db, key, token, lease)
}

// ExtendTx is Extend on tx (a *sql.Tx, *sql.Conn or *sql.DB). A heartbeat is
// normally sent outside the handler's transaction (on the *sql.DB), since an
// extension inside it is invisible to others until it commits.
func (s *Store) ExtendTx(ctx context.Context, tx Querier, key, token string, lease time.Duration) error {
	return s.ExtendIn(ctx, SQL(tx), key, token, lease)
}

// ExtendIn is ExtendTx on any Conn (see ClaimIn).
func (s *Store) ExtendIn(ctx context.Context, tx Conn, key, token string, lease time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if lease <= 0 {
		return fmt.Errorf("%w: lease %v must be positive", dedupe.ErrInvalidLease, lease)
	}
	now := s.now()
	return s.owned(ctx, tx, "extend", s.qExtend, key, token, now, nanos(now.Add(lease)))
}

// owned runs a statement whose WHERE clause is the ownership rule ($1 key,
// $2 token, $3 now; extra args from $4) and maps 0 rows to ErrLeaseLost.
func (s *Store) owned(ctx context.Context, tx Conn, op, query, key, token string, now time.Time, extra ...any) error {
	if !validToken(token) {
		return dedupe.ErrLeaseLost // no stored token is empty or invalid text
	}
	args := append([]any{[]byte(key), token, nanos(now)}, extra...)
	n, err := tx.Exec(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("sqlstore: %s %q: %w", op, key, err)
	}
	if n == 0 {
		return dedupe.ErrLeaseLost
	}
	return nil
}

// Get returns the live record for key, for inspection (the CLI). It returns
// ErrNotFound when there is none or its retention is over.
func (s *Store) Get(ctx context.Context, key string) (*dedupe.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r, err := scanRecord(s.db.QueryRow(ctx, s.qGet, []byte(key)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, key)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlstore: get %q: %w", key, err)
	}
	if !r.Live(s.now()) {
		return nil, fmt.Errorf("%w: %q (retention over)", ErrNotFound, key)
	}
	return r, nil
}

// Cleanup deletes records whose retention is over, limit rows per statement
// (DefaultCleanupBatch when limit <= 0), each batch in its own short
// transaction, until a batch deletes fewer than limit rows or ctx is done.
// It returns the number of rows deleted, also when it stops on an error.
// Cleanup is garbage collection only: an expired row already counts as
// absent. Run it periodically from one or several processes (on Postgres,
// concurrent cleaners skip each other's rows).
func (s *Store) Cleanup(ctx context.Context, limit int) (int64, error) {
	if limit <= 0 {
		limit = DefaultCleanupBatch
	}
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, err := s.db.Exec(ctx, s.qCleanup, nanos(s.now()), limit)
		if err != nil {
			return total, fmt.Errorf("sqlstore: cleanup: %w", err)
		}
		total += n
		if n < int64(limit) {
			return total, nil
		}
	}
}

var _ dedupe.Store = (*Store)(nil)

// ScanPage is how many rows each query of Scan reads: 500.
const ScanPage = 500

// Scan calls fn for every live record whose key starts with prefix ("" for
// all), in byte order of the keys, until fn returns an error (which Scan
// returns) or every record was visited. It reads ScanPage rows per query,
// each after the last key seen (keyset paging on the primary key), so a
// scan of a large table neither holds a transaction nor skips or repeats
// rows that stay put; rows written meanwhile may or may not be visited.
// For inspection (the idemq CLI); the state machine never needs it.
func (s *Store) Scan(ctx context.Context, prefix string, fn func(*dedupe.Record) error) error {
	lower := []byte(prefix)
	upper := prefixEnd(lower)
	cond := " AND expires_at > $2"
	args := []any{lower, int64(0)}
	if upper != nil {
		cond += " AND key < $3"
		args = append(args, upper)
	}
	first := "SELECT " + columns + " FROM " + s.table + " WHERE key >= $1" + cond + " ORDER BY key LIMIT " + strconv.Itoa(ScanPage)
	next := "SELECT " + columns + " FROM " + s.table + " WHERE key > $1" + cond + " ORDER BY key LIMIT " + strconv.Itoa(ScanPage)
	query := first
	for {
		args[1] = nanos(s.now())
		n, last, err := s.scanPage(ctx, query, args, fn)
		if err != nil {
			return err
		}
		if n < ScanPage {
			return nil
		}
		args[0], query = last, next
	}
}

// scanPage runs one query of Scan and returns how many rows it read and the
// last key.
func (s *Store) scanPage(ctx context.Context, query string, args []any, fn func(*dedupe.Record) error) (int, []byte, error) {
	rows, err := s.db.Query(ctx, query, args...)
	if err != nil {
		return 0, nil, fmt.Errorf("sqlstore: scan: %w", err)
	}
	defer rows.Close()
	var page []*dedupe.Record
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return 0, nil, fmt.Errorf("sqlstore: scan: %w", err)
		}
		page = append(page, r)
	}
	if err := rows.Err(); err != nil {
		return 0, nil, fmt.Errorf("sqlstore: scan: %w", err)
	}
	rows.Close() // before fn runs, which may use the database
	for _, r := range page {
		if err := fn(r); err != nil {
			return 0, nil, err
		}
	}
	if len(page) == 0 {
		return 0, nil, nil
	}
	return len(page), []byte(page[len(page)-1].Key), nil
}

// prefixEnd returns the smallest byte string greater than every string
// starting with p, or nil when there is none (p empty or all 0xff).
func prefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}
