// Package pgxconn adapts pgx (github.com/jackc/pgx/v5) to sqlstore's
// statement vocabulary, sqlstore.Conn, so that the dedupe store and the
// outbox run their statements through pgx itself rather than through
// database/sql and pgx's stdlib driver:
//
//	pool, _ := pgxpool.New(ctx, url)
//	store, _ := sqlstore.NewOn(ctx, pgxconn.Pool(pool), sqlstore.Config{})
//
//	tx, _ := pool.Begin(ctx)
//	c, _ := store.ClaimIn(ctx, pgxconn.Tx(tx), key, fp, lease, retention)
//	// Acquired: the handler's own writes on tx, then
//	_ = store.CompleteIn(ctx, pgxconn.Tx(tx), key, c.Token, res, retention)
//	_ = tx.Commit(ctx) // the record commits with the writes
//
// outbox.Outbox.AddIn takes the same Conn (pgxconn.Tx(tx)) and
// outbox.Inbox.PgxHandler runs a handler fn(ctx, pgx.Tx, msg) in the inbox
// transaction. Postgres only: pgx speaks nothing else.
package pgxconn

import (
	"context"
	"database/sql"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemq/idemq/dedupe/sqlstore"
)

// Querier is what pgx.Tx, *pgx.Conn, *pgxpool.Pool, *pgxpool.Conn and
// *pgxpool.Tx have in common.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Tx adapts a pgx transaction: statements run in it, so a claim commits or
// rolls back with the caller's writes (sqlstore.Store.ClaimIn accepts it).
func Tx(tx pgx.Tx) sqlstore.Conn { return conn{q: tx, tx: true} }

// Of adapts any Querier; it is in a transaction when q is a pgx.Tx. A
// *pgxpool.Pool or *pgx.Conn runs each statement on its own (Complete,
// Release, Extend; not ClaimIn, which needs the caller's transaction).
func Of(q Querier) sqlstore.Conn {
	_, inTx := q.(pgx.Tx)
	return conn{q: q, tx: inTx}
}

// Pool adapts a pool as the Store's own database (sqlstore.NewOn): its
// plain Claim, Complete, Release, Delete, Extend, Get, Scan and Cleanup run
// on the pool, a takeover in a transaction begun on it.
func Pool(p *pgxpool.Pool) sqlstore.DB { return pool{conn: conn{q: p}, p: p} }

type conn struct {
	q  Querier
	tx bool
}

func (c conn) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	tag, err := c.q.Exec(ctx, query, args...)
	if err != nil {
		return 0, err
	}
	return tag.RowsAffected(), nil
}

func (c conn) Query(ctx context.Context, query string, args ...any) (sqlstore.Rows, error) {
	r, err := c.q.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return rows{r}, nil
}

func (c conn) QueryRow(ctx context.Context, query string, args ...any) sqlstore.Row {
	return row{c.q.QueryRow(ctx, query, args...)}
}

func (c conn) InTx() bool { return c.tx }

// Dialect tells sqlstore.NewOn and package outbox that pgx speaks Postgres.
func (c conn) Dialect() sqlstore.Dialect { return sqlstore.Postgres }

type pool struct {
	conn
	p *pgxpool.Pool
}

func (p pool) Begin(ctx context.Context) (sqlstore.Tx, error) {
	tx, err := p.p.Begin(ctx)
	if err != nil {
		return nil, err
	}
	return txConn{conn: conn{q: tx, tx: true}, tx: tx}, nil
}

func (p pool) Ping(ctx context.Context) error { return p.p.Ping(ctx) }

type txConn struct {
	conn
	tx pgx.Tx
}

func (t txConn) Commit(ctx context.Context) error   { return t.tx.Commit(ctx) }
func (t txConn) Rollback(ctx context.Context) error { return t.tx.Rollback(ctx) }

// rows gives pgx.Rows the Close that returns an error.
type rows struct{ pgx.Rows }

func (r rows) Close() error {
	r.Rows.Close()
	return r.Rows.Err()
}

// row maps pgx.ErrNoRows to sql.ErrNoRows, which sqlstore tests for.
type row struct{ r pgx.Row }

func (r row) Scan(dest ...any) error {
	err := r.r.Scan(dest...)
	if errors.Is(err, pgx.ErrNoRows) {
		return sql.ErrNoRows
	}
	return err
}

var (
	_ sqlstore.Conn = conn{}
	_ sqlstore.DB   = pool{}
	_ sqlstore.Tx   = txConn{}
)
