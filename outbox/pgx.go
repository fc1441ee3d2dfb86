package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore/pgxconn"
	"github.com/idemq/idemq/retry"
)

// errNoSQLDB is returned by Handle and Handler of an Inbox made with a nil
// *sql.DB, for programs that use only the pgx path.
var errNoSQLDB = errors.New("outbox: this Inbox has no *sql.DB (NewInbox(nil, …)): use PgxHandler or HandlePgx")

// PgxBeginner begins pgx transactions: *pgxpool.Pool and *pgx.Conn.
type PgxBeginner interface {
	BeginTx(ctx context.Context, opts pgx.TxOptions) (pgx.Tx, error)
}

// PgxTxFunc is TxFunc on a pgx transaction.
type PgxTxFunc func(ctx context.Context, tx pgx.Tx) (dedupe.Result, error)

// PgxMessageFunc is MessageFunc on a pgx transaction: the handler applies
// its effects with tx.Exec and adds outgoing messages with
// Outbox.AddIn(ctx, pgxconn.Tx(tx), …).
type PgxMessageFunc func(ctx context.Context, tx pgx.Tx, m *consumer.Message) error

// HandlePgx is Handle in a pgx transaction begun on db: begin, claim key in
// the transaction (Store.ClaimIn on pgxconn.Tx), fn, complete, commit, with
// Handle's answers. The Inbox's Guard.Store must be a *sqlstore.Store on
// the same database (made with sqlstore.New or, without database/sql,
// sqlstore.NewOn(ctx, pgxconn.Pool(pool), …)). InboxConfig.TxOptions'
// isolation and read-only flag apply.
func (i *Inbox) HandlePgx(ctx context.Context, db PgxBeginner, key, fingerprint string, fn PgxTxFunc) (InboxOutcome, error) {
	tx, err := db.BeginTx(ctx, pgxTxOptions(i.txo))
	if err != nil {
		return InboxOutcome{}, i.unavailable(ctx, fmt.Errorf("outbox: inbox begin: %w", err))
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	out, err := i.handleIn(ctx, pgxconn.Tx(tx), key, fingerprint, func(ctx context.Context) (dedupe.Result, error) { return fn(ctx, tx) })
	if err != nil || out.Status != dedupe.Acquired {
		return out, err
	}
	if err := tx.Commit(ctx); err != nil {
		return out, i.unavailable(ctx, fmt.Errorf("outbox: inbox commit: %w", err))
	}
	return out, nil
}

// PgxHandler is Handler on pgx: a consumer.Handler that runs fn(ctx, tx, m)
// in a pgx transaction begun on db, with the dedupe record claimed and
// completed in that transaction, so the handler's pgx writes, its outbox
// messages (AddIn on pgxconn.Tx(tx)) and the record commit together. Keys,
// fingerprints, duplicates, conflicts and rejections are Handler's.
func (i *Inbox) PgxHandler(db PgxBeginner, fn PgxMessageFunc) consumer.Handler {
	return func(ctx context.Context, m *consumer.Message) error {
		key, fp, err := i.guard.Resolve(dedupe.Input{Header: m.Header, Data: m.Data, MessageID: m.ID})
		if err != nil {
			return retry.Permanent(err)
		}
		ctx = WithCause(ctx, m.ID, m.Header)
		var rejected error
		out, err := i.HandlePgx(ctx, db, key, fp, func(ctx context.Context, tx pgx.Tx) (dedupe.Result, error) {
			m.Fence, _ = ctx.Value(fenceKey{}).(uint64)
			return messageResult(m, fn(ctx, tx, m), &rejected)
		})
		return messageOutcome(m, out, err, rejected)
	}
}

// pgxTxOptions maps database/sql transaction options to pgx's.
func pgxTxOptions(o *sql.TxOptions) pgx.TxOptions {
	var p pgx.TxOptions
	if o == nil {
		return p
	}
	switch o.Isolation {
	case sql.LevelReadUncommitted:
		p.IsoLevel = pgx.ReadUncommitted
	case sql.LevelReadCommitted:
		p.IsoLevel = pgx.ReadCommitted
	case sql.LevelRepeatableRead, sql.LevelSnapshot:
		p.IsoLevel = pgx.RepeatableRead
	case sql.LevelSerializable, sql.LevelLinearizable:
		p.IsoLevel = pgx.Serializable
	}
	if o.ReadOnly {
		p.AccessMode = pgx.ReadOnly
	}
	return p
}
