// Package sqlstore is a dedupe.Store in a PostgreSQL or SQLite table, on
// database/sql: Postgres through pgx (driver "pgx",
// github.com/jackc/pgx/v5/stdlib), SQLite through modernc.org/sqlite (driver
// "sqlite", no cgo). The package imports neither driver; the program does.
//
// # Two guarantees
//
// Store dedupe — Claim, Complete, Release, Extend. Each call commits before
// it returns. Duplicates are suppressed, but a crash inside the handler
// (after its effects, before Complete) lets the next attempt run again once
// the lease expires. Use it for idempotent or re-runnable effects, exactly
// like the Redis and NATS KV stores.
//
// Transactional inbox — ClaimTx, CompleteTx (and ReleaseTx, ExtendTx). The
// record is written in the caller's transaction, next to the handler's own
// writes:
//
//	tx, _ := db.BeginTx(ctx, nil)
//	c, err := store.ClaimTx(ctx, tx, key, fp, lease, retention)
//	// Acquired: apply the effect on tx, then
//	err = store.CompleteTx(ctx, tx, key, c.Token, res, retention)
//	err = tx.Commit() // record and effect commit together; then ack
//
// A crash anywhere before Commit rolls both back and the redelivery runs
// again; after Commit the redelivery is a Duplicate. The database effects
// happen exactly once. On Postgres (READ COMMITTED) a concurrent delivery of
// the same key blocks in ClaimTx on the primary key until the first
// transaction ends, then sees its committed record (Duplicate), or acquires
// the key itself if the first rolled back. The lease matters little in this
// mode: the row lock is the exclusion.
//
// Batches — ClaimManyTx and CompleteManyTx do the same for many keys on one
// transaction, each answer exactly what the single calls made one after
// another would give (a key twice in one batch: Acquired, then Busy). On
// Postgres a batch costs one INSERT (plus one SELECT when some keys already
// existed) and one UPDATE, whatever its size; outbox.Inbox.BatchHandler uses them to
// process hundreds of messages per transaction.
//
// # database/sql and pgx
//
// Every statement runs through Conn, one small interface: SQL adapts a
// *sql.DB, *sql.Tx or *sql.Conn, and package dedupe/sqlstore/pgxconn adapts
// pgx values (pgx.Tx, *pgxpool.Pool, *pgx.Conn), so that a program on pgx
// needs no database/sql handle. New takes a *sql.DB; NewOn any DB
// (SQLDB(db), pgxconn.Pool(pool)). The *Tx methods take a database/sql
// Querier as before; the *In methods (ClaimIn, CompleteIn, ReleaseIn,
// DeleteIn, ExtendIn, ClaimManyIn, CompleteManyIn) take a Conn, such as
// pgxconn.Tx(tx) for the inbox mode in a pgx transaction. Both paths run
// the same SQL and answer the same; BenchmarkInboxClaimComplete in pgxconn
// compares their speed.
//
// # Table
//
// New creates the table (default "idemq_dedupe", may be schema-qualified)
// and an index on expires_at if they are missing:
//
//	key bytea PRIMARY KEY, fingerprint bytea, state text ('in_progress' | 'done' | 'failed'),
//	token text, lease_until bigint, result bytea, created_at bigint, expires_at bigint,
//	attempts integer, fence bigint
//
// (BLOB and INTEGER on SQLite). attempts counts the leases granted for the
// key; fence is the numeric fencing token of the last one
// (dedupe.Claim.Fence). New adds either column to a table created before
// it existed.
//
// Times are Unix nanoseconds (lease_until is 0 once the record is done), so
// the injected clock round-trips exactly; in psql, to_timestamp(expires_at /
// 1e9) shows them. Every time is computed from Config.Now, never from the
// database's now(). Keys and fingerprints are stored as bytes, so any Go
// string works, binary or not, exactly as in the memory store; in psql,
// convert_from(key, 'UTF8') shows a text key. Results are stored as bytes,
// unchanged. A record whose retention is over counts as
// absent at once; Cleanup deletes such rows in batches and is only garbage
// collection.
//
// # Concurrency
//
// Claim inserts the new in-progress row with INSERT ... ON CONFLICT (key) DO
// NOTHING; if the key exists it reads the row and runs storekit.Decide in Go.
// Busy, Duplicate and Conflict are answered from that read, without a lock
// (a live done or failed record never changes; an in-progress record read a
// moment early is still a true answer), so a redelivery of a completed key
// costs no write. A takeover (or the replacement of an expired record) runs
// in a transaction: insert again, lock the row (SELECT ... FOR UPDATE on
// Postgres; on SQLite the INSERT already took the database's write lock),
// decide again on the locked row and write the decision back. ClaimTx runs
// the same statements on the caller's transaction. Complete, Release
// and Extend are single conditional statements on the current token of a
// live in-progress record; no matching row is dedupe.ErrLeaseLost.
//
// SQLite serialises writers. The simplest safe setup is one *sql.DB per
// database file with SetMaxOpenConns(1), opened with WAL and a busy timeout:
//
//	db, err := sql.Open("sqlite", "file:/var/lib/app/idemq.db?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)")
//	db.SetMaxOpenConns(1)
//
// With several connections (or processes), keep busy_timeout and add
// _txlock=immediate, so a caller's transaction holds the write lock from
// BEGIN and ClaimTx never fails with SQLITE_BUSY on a lock upgrade. With one
// connection, do not call the plain methods while holding a transaction
// from the same *sql.DB: they would wait for the connection until ctx is done; use the
// Tx variants on that transaction.
package sqlstore
