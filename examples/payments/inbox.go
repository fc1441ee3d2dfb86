package main

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
)

// txInbox is the transactional inbox as a dedupe.Store for the consumer
// pipeline: Claim opens a database transaction and claims the key in it
// (sqlstore.ClaimTx), and an Acquired claim's transaction is handed to the
// handler, which applies its writes, adds its outbox rows, completes the
// record (CompleteTx) and commits — all in one transaction. A crash anywhere
// before the commit rolls everything back, record included, and the
// redelivery runs again; after the commit the redelivery is a Duplicate.
//
// Complete is then a no-op that only checks the handler committed; Release
// rolls back a transaction the handler did not commit; Extend does nothing,
// because the open transaction (a row lock on Postgres, the write lock on
// SQLite) is the exclusion, not the lease.
type txInbox struct {
	db    *database
	store *sqlstore.Store
	log   *slog.Logger

	mu   sync.Mutex
	open map[string]*inboxTx // stored key → the Acquired claim's transaction
}

// inboxTx is an Acquired claim's transaction.
type inboxTx struct {
	tx        *sql.Tx
	key       string
	token     string
	lease     time.Duration
	retention time.Duration
	committed bool
}

func newTxInbox(db *database, store *sqlstore.Store, log *slog.Logger) *txInbox {
	return &txInbox{db: db, store: store, log: log, open: map[string]*inboxTx{}}
}

// Claim implements dedupe.Store.
func (in *txInbox) Claim(ctx context.Context, key, fingerprint string, lease, retention time.Duration) (dedupe.Claim, error) {
	tx, err := in.db.BeginTx(ctx, nil)
	if err != nil {
		return dedupe.Claim{}, err
	}
	c, err := in.store.ClaimTx(ctx, tx, key, fingerprint, lease, retention)
	if err != nil {
		_ = tx.Rollback()
		return dedupe.Claim{}, err
	}
	if c.Status != dedupe.Acquired {
		_ = tx.Rollback()
		in.log.Info("payments worker: "+c.Status.String(), "event", c.Status.String(), "key", key)
		return c, nil
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if prev, ok := in.open[key]; ok {
		// Cannot happen while the open transaction holds the key; be safe.
		_ = prev.tx.Rollback()
	}
	in.open[key] = &inboxTx{tx: tx, key: key, token: c.Token, lease: lease, retention: retention}
	return c, nil
}

// take returns the open transaction of the stored key.
func (in *txInbox) take(key string) (*inboxTx, bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	t, ok := in.open[key]
	return t, ok
}

// commit records res in t's transaction and commits it: the handler's
// writes, its outbox rows and the dedupe record become visible together.
func (in *txInbox) commit(ctx context.Context, t *inboxTx, res dedupe.Result) error {
	if err := in.store.CompleteTx(ctx, t.tx, t.key, t.token, res, t.retention); err != nil {
		return fmt.Errorf("complete inbox record: %w", err)
	}
	if err := t.tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	in.mu.Lock()
	t.committed = true
	in.mu.Unlock()
	return nil
}

// Complete implements dedupe.Store: the handler has already committed the
// record with its writes. It fails with dedupe.ErrLeaseLost when it did not.
func (in *txInbox) Complete(_ context.Context, key, token string, _ dedupe.Result, _ time.Duration) error {
	in.mu.Lock()
	defer in.mu.Unlock()
	t, ok := in.open[key]
	if !ok || t.token != token || !t.committed {
		return dedupe.ErrLeaseLost
	}
	delete(in.open, key)
	return nil
}

// Release implements dedupe.Store: it rolls back the claim's transaction,
// record and writes together, unless the handler committed it.
func (in *txInbox) Release(_ context.Context, key, token string) error {
	in.mu.Lock()
	t, ok := in.open[key]
	if ok && t.token == token {
		delete(in.open, key)
	}
	in.mu.Unlock()
	if !ok || t.token != token {
		return nil // already rolled back
	}
	if t.committed {
		return dedupe.ErrLeaseLost
	}
	if err := t.tx.Rollback(); err != nil && err != sql.ErrTxDone {
		return err
	}
	return nil
}

// Extend implements dedupe.Store. The open transaction is the exclusion, so
// there is nothing to extend.
func (in *txInbox) Extend(context.Context, string, string, time.Duration) error { return nil }
