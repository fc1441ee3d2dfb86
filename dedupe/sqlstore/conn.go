package sqlstore

import (
	"context"
	"database/sql"
)

// Conn is the statement vocabulary the store runs on, and package outbox
// too: one small interface that database/sql and pgx both reach through an
// adapter. SQL adapts a *sql.DB, *sql.Tx or *sql.Conn (any Querier);
// package dedupe/sqlstore/pgxconn adapts pgx values (pgx.Tx,
// *pgxpool.Pool, *pgx.Conn). The *In methods of Store take a Conn; the *Tx
// methods are the same methods on SQL(tx).
type Conn interface {
	// Exec runs a statement and returns the number of rows it affected.
	Exec(ctx context.Context, query string, args ...any) (rowsAffected int64, err error)
	// Query runs a statement that returns rows.
	Query(ctx context.Context, query string, args ...any) (Rows, error)
	// QueryRow runs a statement that returns at most one row. Its Scan
	// returns sql.ErrNoRows when there is none, whatever the driver.
	QueryRow(ctx context.Context, query string, args ...any) Row
	// InTx reports whether the statements run in a transaction the caller
	// holds: ClaimIn refuses a Conn that is not one (ErrNotInTx).
	InTx() bool
}

// Rows is the result of Conn.Query, as *sql.Rows and pgx.Rows both offer
// it.
type Rows interface {
	Next() bool
	Scan(dest ...any) error
	Err() error
	Close() error
}

// Row is the result of Conn.QueryRow.
type Row interface {
	Scan(dest ...any) error
}

// DB is what a Store needs of its own database: a Conn outside any
// transaction that can begin one, and answer a ping. SQLDB adapts a
// *sql.DB; pgxconn.Pool adapts a *pgxpool.Pool.
type DB interface {
	Conn
	// Begin starts a transaction with the driver's default options (READ
	// COMMITTED on Postgres).
	Begin(ctx context.Context) (Tx, error)
	// Ping checks that the database answers.
	Ping(ctx context.Context) error
}

// Tx is a transaction begun by DB.Begin.
type Tx interface {
	Conn
	Commit(ctx context.Context) error
	Rollback(ctx context.Context) error
}

// SQL adapts a database/sql value — *sql.DB, *sql.Tx or *sql.Conn — to
// Conn. A *sql.DB is not in a transaction; a *sql.Tx is; a *sql.Conn is
// taken to be inside BEGIN, as ClaimTx documents.
func SQL(q Querier) Conn {
	_, isDB := q.(*sql.DB)
	return sqlConn{q: q, tx: !isDB}
}

// SQLDB adapts a *sql.DB to DB.
func SQLDB(db *sql.DB) DB { return sqlDB{sqlConn: sqlConn{q: db}, db: db} }

type sqlConn struct {
	q  Querier
	tx bool
}

func (c sqlConn) Exec(ctx context.Context, query string, args ...any) (int64, error) {
	res, err := c.q.ExecContext(ctx, query, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (c sqlConn) Query(ctx context.Context, query string, args ...any) (Rows, error) {
	rows, err := c.q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	return rows, nil
}

func (c sqlConn) QueryRow(ctx context.Context, query string, args ...any) Row {
	return c.q.QueryRowContext(ctx, query, args...)
}

func (c sqlConn) InTx() bool { return c.tx }

type sqlDB struct {
	sqlConn
	db *sql.DB
}

func (d sqlDB) Begin(ctx context.Context) (Tx, error) {
	tx, err := d.db.BeginTx(ctx, nil)
	if err != nil {
		return nil, err
	}
	return sqlTx{sqlConn: sqlConn{q: tx, tx: true}, tx: tx}, nil
}

func (d sqlDB) Ping(ctx context.Context) error { return d.db.PingContext(ctx) }

type sqlTx struct {
	sqlConn
	tx *sql.Tx
}

func (t sqlTx) Commit(context.Context) error   { return t.tx.Commit() }
func (t sqlTx) Rollback(context.Context) error { return t.tx.Rollback() }
