package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/dedupe/storekit"
	"github.com/idemq/idemq/retry"
)

// conflictError is Inbox.Handle's error when the key was already completed
// with a different fingerprint: it wraps consumer.ErrConflict, the one
// conflict sentinel, so the pipeline dead-letters it as "conflict".
func conflictError(key string) error {
	return fmt.Errorf("inbox key %q completed with another fingerprint: %w", key, consumer.ErrConflict)
}

// ErrBusy is returned by Inbox.Handle when a committed in-progress record
// with a live lease holds the key: a non-transactional Claim on the same
// dedupe table is running. The error carries retry.After with the lease
// remainder.
var ErrBusy = errors.New("outbox: inbox key busy")

// InboxConfig configures an Inbox.
type InboxConfig struct {
	// Guard resolves keys and fingerprints (Key, Fingerprint, Namespace,
	// MaxKeyLen, FallbackToFingerprint) and gives the Lease and Retention.
	// Its Store must be a *sqlstore.Store on the same database as the
	// Inbox: the record is written in the handler's transaction through
	// ClaimTx and CompleteTx. Required.
	Guard *dedupe.Guard
	// TxOptions are passed to BeginTx. Nil means the driver's default
	// (READ COMMITTED on Postgres), which the inbox relies on: a concurrent
	// duplicate waits for the first transaction and then reads its
	// committed record.
	TxOptions *sql.TxOptions
}

// Inbox runs handlers in the transactional inbox mode: the dedupe record is
// claimed and completed in the same database transaction as the handler's
// own writes (and its outbox messages), so database effects happen exactly
// once, however the process crashes. It is safe for concurrent use.
type Inbox struct {
	db    *sql.DB
	store *sqlstore.Store
	guard *dedupe.Guard
	txo   *sql.TxOptions
}

// NewInbox returns an Inbox on db; cfg.Guard.Store must be a
// *sqlstore.Store on db. db may be nil for a program on pgx, which then
// uses only PgxHandler and HandlePgx.
func NewInbox(db *sql.DB, cfg InboxConfig) (*Inbox, error) {
	if cfg.Guard == nil {
		return nil, errors.New("outbox: InboxConfig.Guard is required")
	}
	st, ok := cfg.Guard.Store.(*sqlstore.Store)
	if !ok {
		return nil, fmt.Errorf("outbox: inbox needs a *sqlstore.Store as Guard.Store, got %T", cfg.Guard.Store)
	}
	if err := storekit.ValidateLease(cfg.Guard.LeaseDuration(), cfg.Guard.RetentionDuration()); err != nil {
		return nil, err
	}
	return &Inbox{db: db, store: st, guard: cfg.Guard, txo: cfg.TxOptions}, nil
}

// Guard returns the guard that resolves keys.
func (i *Inbox) Guard() *dedupe.Guard { return i.guard }

// TxFunc is a handler body run in the inbox transaction. It applies its
// effects on tx (and adds outgoing messages with Outbox.AddTx on tx) and
// returns the result to store and replay. A result with Failed set is a
// final business failure: committed and replayed like a success. An error
// rolls everything back, so the redelivery runs the operation again.
type TxFunc func(ctx context.Context, tx *sql.Tx) (dedupe.Result, error)

// InboxOutcome is what Inbox.Handle did.
type InboxOutcome struct {
	// Status is dedupe.Acquired when fn ran (and, with a nil error,
	// committed), dedupe.Duplicate when a committed record answered,
	// dedupe.Conflict or dedupe.Busy when nothing ran.
	Status dedupe.Status
	// Result is fn's result (Acquired) or the stored one (Duplicate).
	Result dedupe.Result
}

// Handle runs fn exactly once per key: begin, claim key in the transaction,
// fn, complete, commit. A key completed before answers Duplicate with the
// stored result and fn is not called (the caller acknowledges). A key
// completed with a different fingerprint returns an error wrapping consumer.ErrConflict (dead-letter it
// as "conflict"). An error from fn, or from the database, rolls back and is
// returned as is: the caller redelivers. key is the stored key as the
// caller wants it (see Guard.Resolve for namespacing); fingerprint may be
// empty.
//
// fn's context carries a Cause (WithCause) for the derived outbox ids: the
// one already in ctx, reset, or else one whose ID is key.
func (i *Inbox) Handle(ctx context.Context, key, fingerprint string, fn TxFunc) (InboxOutcome, error) {
	if i.db == nil {
		return InboxOutcome{}, errNoSQLDB
	}
	tx, err := i.db.BeginTx(ctx, i.txo)
	if err != nil {
		return InboxOutcome{}, i.unavailable(ctx, fmt.Errorf("outbox: inbox begin: %w", err))
	}
	defer func() { _ = tx.Rollback() }()
	out, err := i.handleTx(ctx, tx, key, fingerprint, fn)
	if err != nil || out.Status != dedupe.Acquired {
		return out, err
	}
	if err := tx.Commit(); err != nil {
		return out, i.unavailable(ctx, fmt.Errorf("outbox: inbox commit: %w", err))
	}
	return out, nil
}

// Ping reports whether the inbox's database answers (database/sql's
// PingContext); nil without a *sql.DB.
func (i *Inbox) Ping(ctx context.Context) error {
	if i.db == nil {
		return nil
	}
	return i.db.PingContext(ctx)
}

// unavailable marks err, the failure of a statement the inbox itself sent
// (begin, claim, complete, commit), as the database not answering
// (consumer.Unavailable with Ping as the probe), unless ctx ended: the
// pipeline then redelivers without using an attempt and the transport
// pauses until the database answers, instead of burning attempts on it.
func (i *Inbox) unavailable(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return err
	}
	return consumer.Unavailable(err, i.Ping)
}

// handleTx is Handle inside an open transaction (Batch runs it under a
// savepoint). On a nil error with Status Acquired the record is completed
// in tx and the caller commits.
func (i *Inbox) handleTx(ctx context.Context, tx *sql.Tx, key, fingerprint string, fn TxFunc) (InboxOutcome, error) {
	return i.handleIn(ctx, sqlstore.SQL(tx), key, fingerprint, func(ctx context.Context) (dedupe.Result, error) { return fn(ctx, tx) })
}

// handleIn is handleTx on any sqlstore.Conn in a transaction; body runs
// the handler on that transaction.
func (i *Inbox) handleIn(ctx context.Context, tx sqlstore.Conn, key, fingerprint string, body func(ctx context.Context) (dedupe.Result, error)) (InboxOutcome, error) {
	lease, retention := i.guard.LeaseDuration(), i.guard.RetentionDuration()
	c, err := i.store.ClaimIn(ctx, tx, key, fingerprint, lease, retention)
	if err != nil {
		return InboxOutcome{}, i.unavailable(ctx, fmt.Errorf("outbox: inbox claim: %w", err))
	}
	switch c.Status {
	case dedupe.Duplicate:
		return InboxOutcome{Status: dedupe.Duplicate, Result: c.Result}, nil
	case dedupe.Conflict:
		return InboxOutcome{Status: dedupe.Conflict}, conflictError(key)
	case dedupe.Busy:
		return InboxOutcome{Status: dedupe.Busy}, retry.After(c.RetryAfter+consumer.BusyMargin, ErrBusy)
	case dedupe.Acquired:
	default:
		return InboxOutcome{}, fmt.Errorf("outbox: inbox claim: unexpected status %v", c.Status)
	}
	res, err := body(context.WithValue(withFreshCause(ctx, key), fenceKey{}, c.Fence))
	if err != nil {
		return InboxOutcome{Status: dedupe.Acquired}, err
	}
	if err := i.store.CompleteIn(ctx, tx, key, c.Token, res, retention); err != nil {
		return InboxOutcome{Status: dedupe.Acquired}, i.unavailable(ctx, fmt.Errorf("outbox: inbox complete: %w", err))
	}
	return InboxOutcome{Status: dedupe.Acquired, Result: res}, nil
}

// fenceKey carries the inbox claim's fencing token to the message handler.
type fenceKey struct{}

// withFreshCause puts a new Cause in ctx (counter at zero), copying the
// existing one's id and headers, or using id.
func withFreshCause(ctx context.Context, id string) context.Context {
	if c := causeFrom(ctx); c != nil {
		return WithCause(ctx, c.ID, c.Header)
	}
	return WithCause(ctx, id, nil)
}

// MessageFunc is a consumer handler that also receives the inbox
// transaction. It follows consumer.Handler's conventions: record a result
// with m.SetResult, return consumer.Reject for a final business failure
// (committed, replayed, acknowledged), retry.Permanent to dead-letter, any
// other error to redeliver. Every error but a rejection rolls the
// transaction back.
type MessageFunc func(ctx context.Context, tx *sql.Tx, m *consumer.Message) error

// Handler returns a consumer.Handler (for consumer.NewPipeline or
// consumer/natsjs.New, configured without a Guard: the inbox is the dedupe)
// that runs fn in the inbox transaction. The key and fingerprint come from
// the Inbox's Guard; invalid input and key conflicts are returned as
// retry.Permanent errors wrapping the dedupe error or consumer.ErrConflict, so the
// message is dead-lettered; a duplicate is acknowledged with its stored
// result (m.SetResult, or a consumer.Reject for a stored failure) and fn is
// not called. Outbox messages fn adds get the delivery's id as causation id
// and derived-id base, and its trace headers.
func (i *Inbox) Handler(fn MessageFunc) consumer.Handler {
	return func(ctx context.Context, m *consumer.Message) error {
		return i.handleMessage(ctx, m, fn, i.Handle)
	}
}

// handleMessage resolves m's key and runs fn through run (Handle, or
// Batch's savepoint variant).
func (i *Inbox) handleMessage(ctx context.Context, m *consumer.Message, fn MessageFunc,
	run func(ctx context.Context, key, fp string, fn TxFunc) (InboxOutcome, error)) error {
	key, fp, err := i.guard.Resolve(dedupe.Input{Header: m.Header, Data: m.Data, MessageID: m.ID})
	if err != nil {
		return retry.Permanent(err)
	}
	ctx = WithCause(ctx, m.ID, m.Header)
	var rejected error
	out, err := run(ctx, key, fp, func(ctx context.Context, tx *sql.Tx) (dedupe.Result, error) {
		m.Fence, _ = ctx.Value(fenceKey{}).(uint64)
		return messageResult(m, fn(ctx, tx, m), &rejected)
	})
	return messageOutcome(m, out, err, rejected)
}

// messageResult turns what a message handler returned into the result the
// inbox stores: m's result, or a rejection's data as a stored failure (then
// *rejected is the rejection, returned once the transaction committed).
func messageResult(m *consumer.Message, err error, rejected *error) (dedupe.Result, error) {
	var rej *consumer.RejectError
	if errors.As(err, &rej) {
		*rejected = err
		return dedupe.Result{Failed: true, Data: rej.Data}, nil
	}
	if err != nil {
		return dedupe.Result{}, err
	}
	data, _ := m.Result()
	return dedupe.Result{Data: data}, nil
}

// messageOutcome is the consumer handler's answer for a message the inbox
// handled: conflicts dead-lettered, duplicates replayed, the rest as run.
func messageOutcome(m *consumer.Message, out InboxOutcome, err, rejected error) error {
	switch {
	case errors.Is(err, consumer.ErrConflict):
		return retry.Permanent(err)
	case err != nil:
		return err
	case out.Status == dedupe.Duplicate:
		if out.Result.Failed {
			return consumer.Reject(out.Result.Data, errDuplicateRejection)
		}
		m.SetResult(out.Result.Data)
		return nil
	}
	return rejected
}

// errDuplicateRejection describes the replay of a stored business failure.
var errDuplicateRejection = errors.New("outbox: duplicate of a rejected operation")
