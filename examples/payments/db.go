package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	_ "modernc.org/sqlite"             // registers the "sqlite" database/sql driver
)

// ErrBadDBURL is returned for a -db value that is neither postgres://… nor
// sqlite:PATH.
var ErrBadDBURL = errors.New("-db must be postgres://… or sqlite:PATH")

// checkDBURL validates a -db value without connecting, so that a command
// can refuse it before it starts anything.
func checkDBURL(raw string) error {
	switch {
	case strings.HasPrefix(raw, "postgres://") && len(raw) > len("postgres://"),
		strings.HasPrefix(raw, "postgresql://") && len(raw) > len("postgresql://"):
		return nil
	case strings.HasPrefix(raw, "sqlite:"):
		if strings.TrimPrefix(strings.TrimPrefix(raw, "sqlite:"), "//") == "" {
			return fmt.Errorf("%w: empty sqlite path", ErrBadDBURL)
		}
		return nil
	}
	return fmt.Errorf("%w: got %q", ErrBadDBURL, raw)
}

// dialect is the SQL flavour behind a -db URL.
type dialect int

const (
	postgres dialect = iota + 1
	sqlite
)

// String returns "postgres" or "sqlite".
func (d dialect) String() string {
	if d == postgres {
		return "postgres"
	}
	return "sqlite"
}

// sqliteBusyTimeout is how long a SQLite connection waits for another
// process's write lock before failing with SQLITE_BUSY.
const sqliteBusyTimeout = 20 * time.Second

// database is an open -db URL.
type database struct {
	*sql.DB
	dialect dialect
	// nm prefixes the example's table names in q (zero: the contract's).
	nm names
}

// openDB opens a -db URL: postgres://… (or postgresql://…) through pgx, or
// sqlite:PATH through modernc.org/sqlite. A SQLite database is opened in WAL
// mode with a busy timeout and immediate write transactions, so that the API
// and several worker processes can share one file.
func openDB(ctx context.Context, raw string) (*database, error) {
	var (
		db *sql.DB
		d  dialect
	)
	switch {
	case strings.HasPrefix(raw, "postgres://"), strings.HasPrefix(raw, "postgresql://"):
		pg, err := sql.Open("pgx", raw)
		if err != nil {
			return nil, fmt.Errorf("open postgres: %w", err)
		}
		pg.SetMaxOpenConns(16)
		db, d = pg, postgres
	case strings.HasPrefix(raw, "sqlite:"):
		path := strings.TrimPrefix(raw, "sqlite:")
		path = strings.TrimPrefix(path, "//")
		if path == "" {
			return nil, fmt.Errorf("%w: empty sqlite path", ErrBadDBURL)
		}
		q := url.Values{}
		q.Add("_pragma", "busy_timeout("+strconv.Itoa(int(sqliteBusyTimeout/time.Millisecond))+")")
		q.Add("_pragma", "journal_mode(WAL)")
		q.Add("_pragma", "synchronous(NORMAL)")
		q.Add("_pragma", "foreign_keys(ON)")
		q.Set("_txlock", "immediate")
		lite, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
		if err != nil {
			return nil, fmt.Errorf("open sqlite: %w", err)
		}
		// One writer at a time per process; SQLite serialises writers anyway
		// and a small pool keeps lock hand-offs between processes short.
		lite.SetMaxOpenConns(4)
		db, d = lite, sqlite
	default:
		return nil, fmt.Errorf("%w: got %q", ErrBadDBURL, raw)
	}
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.PingContext(pingCtx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("connect to %s database: %w", d, err)
	}
	return &database{DB: db, dialect: d}, nil
}

// q rewrites a query written with ? placeholders for the dialect (Postgres
// gets $1, $2, …; SQLite keeps ?) and with the example's table names
// (accounts, transfers) prefixed as -prefix asks.
func (db *database) q(query string) string {
	query = db.nm.tables(query)
	if db.dialect != postgres {
		return query
	}
	var b strings.Builder
	n := 0
	for _, r := range query {
		if r == '?' {
			n++
			b.WriteString("$" + strconv.Itoa(n))
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

// ensureSchema creates the example's tables when they are missing: accounts,
// exactly as the contract states it, and transfers, the ledger the worker
// writes in the same transaction as the balance updates. transfers has no
// unique constraint on the idempotency key on purpose: a payment applied twice
// would show up as two rows, which is what the demo's invariants look for.
func ensureSchema(ctx context.Context, db *database) error {
	seq := "bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY"
	if db.dialect == sqlite {
		seq = "INTEGER PRIMARY KEY AUTOINCREMENT"
	}
	stmts := []string{
		`CREATE TABLE IF NOT EXISTS accounts (id text primary key, balance bigint not null)`,
		`CREATE TABLE IF NOT EXISTS transfers (
			seq ` + seq + `,
			idempotency_key text NOT NULL,
			payment_id text NOT NULL,
			from_account text NOT NULL,
			to_account text NOT NULL,
			amount bigint NOT NULL,
			currency text NOT NULL,
			outcome text NOT NULL,
			created_at bigint NOT NULL
		)`,
		`CREATE INDEX IF NOT EXISTS transfers_idempotency_key ON transfers (idempotency_key)`,
	}
	for _, s := range stmts {
		if err := execRetry(ctx, db, db.q(s)); err != nil {
			return fmt.Errorf("create schema: %w", err)
		}
	}
	return nil
}

// execRetry runs a DDL statement, retrying a few times: two processes
// creating the same table at the same moment can make Postgres report a
// unique violation on its catalog even with IF NOT EXISTS.
func execRetry(ctx context.Context, db *database, stmt string) error {
	var err error
	for attempt := 0; attempt < 5; attempt++ {
		if _, err = db.ExecContext(ctx, stmt); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Duration(attempt+1) * 50 * time.Millisecond):
		}
	}
	return err
}

// Transfer outcomes stored in transfers.outcome.
const (
	outcomeCompleted = "completed"
	outcomeRejected  = "rejected"
)

// inTx runs fn in a transaction and commits it when fn returns nil.
func (db *database) inTx(ctx context.Context, fn func(tx *sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}
