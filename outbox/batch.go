package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/retry"
)

// BatchHandler returns a consumer.BatchHandler that runs fn for a whole
// batch of messages in ONE inbox transaction: every message's claim, its
// handler and its completion, and the outgoing messages the handlers add
// with Outbox.AddTx on that transaction, commit together. Transports call
// it with the messages they fetched and acknowledge them only after it
// returned (natsjs.NewBatch): a crash between the commit and the acks
// redelivers messages whose records are committed, and they are answered
// as duplicates; their effects stay applied once. If the transaction does
// not commit, the batch error makes the transport hand every message back.
//
// A batch first runs optimistically, without savepoints: the keys of all
// its messages are claimed with one statement (sqlstore's ClaimManyTx),
// the handlers run for the Acquired ones, the records are completed with
// one statement (CompleteManyTx) and the outgoing messages are written with
// one multi-row insert just before the commit. If any handler returns an
// error (other than a consumer.Reject) or panics, the whole transaction is
// rolled back and the batch runs again with a SAVEPOINT per message, so
// that the failing message is rolled back alone (its error is returned for
// it, and the transport's pipeline retries or dead-letters it) while the
// others commit. Consequences for handlers:
//
//   - A handler must do all its work in the transaction it is given: in the
//     batch attempt where another message fails, it runs twice, and only
//     the effects of its first run on the transaction are rolled back.
//   - Messages added with AddTx on the batch transaction are inserted at the
//     end of the optimistic pass, so the handler cannot read them back from
//     the table in that pass (in the savepoint pass they are written at once).
//   - A message whose key was already claimed by an earlier message of the
//     same batch is answered Busy and redelivered after SameBatchBusyDelay,
//     when the earlier one's record is committed.
//   - Conflicts and invalid keys are returned as retry.Permanent errors
//     wrapping consumer.ErrConflict and the dedupe error, which the
//     pipeline dead-letters as "conflict" and "invalid".
func (i *Inbox) BatchHandler(fn MessageFunc) consumer.BatchHandler {
	return func(ctx context.Context, msgs []*consumer.Message) ([]error, error) {
		errs, ok, err := i.processFast(ctx, fn, msgs)
		if err != nil || ok {
			return errs, err
		}
		// Fresh results: the first pass may have recorded some on the
		// messages.
		for _, m := range msgs {
			m.SetResult(nil)
		}
		return i.processSavepoints(ctx, fn, msgs)
	}
}

// SameBatchBusyDelay is the redelivery delay of a message whose key an
// earlier message of the same batch claimed: by then that batch has
// committed (or rolled back), so the redelivery is a duplicate (or runs).
const SameBatchBusyDelay = 100 * time.Millisecond

// fastItem is one message of the optimistic pass.
type fastItem struct {
	m     *consumer.Message
	claim int    // index into the claim requests, -1 for none
	key   string // stored key
	err   error  // the message's result for the pipeline
}

// processFast is the optimistic pass: claim every key with one statement,
// run the handlers of the Acquired messages without savepoints, complete
// with one statement, write the buffered outbox rows, commit, and return
// each message's error. ok is false when the pass gave up before
// committing (a handler failed, or a batch statement did) and rolled back:
// run the savepoint pass. err is a failure that hands the batch back (begin
// or commit).
func (in *Inbox) processFast(ctx context.Context, fn MessageFunc, msgs []*consumer.Message) (errs []error, ok bool, err error) {
	guard := in.guard
	lease, retention := guard.LeaseDuration(), guard.RetentionDuration()
	items := make([]fastItem, len(msgs))
	reqs := make([]sqlstore.ClaimRequest, 0, len(msgs))
	for i, m := range msgs {
		it := &items[i]
		it.m, it.claim = m, -1
		key, fp, err := guard.Resolve(dedupe.Input{Header: m.Header, Data: m.Data, MessageID: m.ID})
		if err != nil {
			it.err = retry.Permanent(err)
			continue
		}
		it.key, it.claim = key, len(reqs)
		reqs = append(reqs, sqlstore.ClaimRequest{Key: key, Fingerprint: fp, Lease: lease, Retention: retention})
	}

	tx, err := in.db.BeginTx(ctx, in.txo)
	if err != nil {
		return nil, false, in.unavailable(ctx, fmt.Errorf("outbox: batch begin: %w", err))
	}
	defer func() { _ = tx.Rollback() }()
	giveUp := func(string, error) ([]error, bool, error) {
		// Rolled back; the savepoint pass finds out which message failed.
		return nil, false, nil
	}
	var claims []dedupe.Claim
	if len(reqs) > 0 {
		if claims, err = in.store.ClaimManyTx(ctx, tx, reqs); err != nil {
			return giveUp("claim", err)
		}
	}
	buf := &addBuffer{tx: tx}
	hctx := context.WithValue(ctx, addBufferKey{}, buf)
	var done []sqlstore.CompleteRequest
	claimed := make(map[string]bool, len(reqs))
	for i := range items {
		it := &items[i]
		if it.claim < 0 {
			continue
		}
		c := claims[it.claim]
		switch c.Status {
		case dedupe.Duplicate:
			if c.Result.Failed {
				it.err = consumer.Reject(c.Result.Data, errDuplicateRejection)
			} else {
				it.m.SetResult(c.Result.Data)
			}
		case dedupe.Conflict:
			it.err = retry.Permanent(conflictError(it.key))
		case dedupe.Busy:
			d := c.RetryAfter + consumer.BusyMargin
			if claimed[it.key] {
				d = SameBatchBusyDelay
			}
			it.err = retry.After(d, ErrBusy)
		case dedupe.Acquired:
			claimed[it.key] = true
			it.m.Fence = c.Fence
			res, rejected, err := runFast(hctx, fn, tx, it.m)
			if err != nil {
				return giveUp("handler", err)
			}
			it.err = rejected
			done = append(done, sqlstore.CompleteRequest{Key: it.key, Token: c.Token, Result: res, Retention: retention})
		default:
			return giveUp("claim", fmt.Errorf("unexpected status %v", c.Status))
		}
	}
	if len(done) > 0 {
		cerrs, err := in.store.CompleteManyTx(ctx, tx, done)
		if err != nil {
			return giveUp("complete", err)
		}
		for _, err := range cerrs {
			if err != nil {
				return giveUp("complete", err)
			}
		}
	}
	if err := buf.flush(ctx); err != nil {
		return giveUp("outbox insert", err)
	}
	if err := tx.Commit(); err != nil {
		return nil, false, in.unavailable(ctx, fmt.Errorf("outbox: batch commit: %w", err))
	}
	errs = make([]error, len(items))
	for i := range items {
		errs[i] = items[i].err
	}
	return errs, true, nil
}

// runFast runs the handler for an Acquired message in the optimistic pass.
// It returns the result to store, the consumer.Reject the handler returned
// (nil on success), and err for any other error or a panic.
func runFast(ctx context.Context, fn MessageFunc, tx *sql.Tx, m *consumer.Message) (res dedupe.Result, rejected, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &consumer.PanicError{Value: r}
		}
	}()
	err = fn(WithCause(ctx, m.ID, m.Header), tx, m)
	var rej *consumer.RejectError
	switch {
	case errors.As(err, &rej):
		return dedupe.Result{Failed: true, Data: rej.Data}, err, nil
	case err != nil:
		return dedupe.Result{}, nil, err
	}
	data, _ := m.Result()
	return dedupe.Result{Data: data}, nil, nil
}

// processSavepoints runs the batch with a SAVEPOINT per message (each
// through Inbox.handleTx), commits and returns each message's error.
func (in *Inbox) processSavepoints(ctx context.Context, fn MessageFunc, msgs []*consumer.Message) ([]error, error) {
	tx, err := in.db.BeginTx(ctx, in.txo)
	if err != nil {
		return nil, in.unavailable(ctx, fmt.Errorf("outbox: batch begin: %w", err))
	}
	defer func() { _ = tx.Rollback() }()
	run := &batchRun{tx: tx, claimed: make(map[string]bool, len(msgs))}
	errs := make([]error, len(msgs))
	for i, m := range msgs {
		errs[i] = in.savepointMessage(ctx, run, fn, m)
		if run.broken != nil {
			return nil, run.broken
		}
	}
	if err := tx.Commit(); err != nil {
		return nil, in.unavailable(ctx, fmt.Errorf("outbox: batch commit: %w", err))
	}
	return errs, nil
}

// batchRun is the state of one savepoint-pass transaction.
type batchRun struct {
	tx      *sql.Tx
	spOpen  bool            // savepoint idemq_msg is defined
	broken  error           // the transaction can no longer commit
	claimed map[string]bool // keys Acquired (and kept) in this transaction
}

// Savepoint statements. Each message costs one round trip: the savepoint of
// the previous message is released and the next one set in the same
// simple-protocol exchange; a failure rolls back to it, which keeps it
// defined for the next message to release.
const (
	spFirst    = "SAVEPOINT idemq_msg"
	spNext     = "RELEASE SAVEPOINT idemq_msg; SAVEPOINT idemq_msg"
	spRollback = "ROLLBACK TO SAVEPOINT idemq_msg"
)

// savepointMessage does one message's inbox work under its own savepoint
// in the batch transaction and returns its error; a panic is recovered as
// a *consumer.PanicError after its savepoint was rolled back.
func (in *Inbox) savepointMessage(ctx context.Context, run *batchRun, fn MessageFunc, m *consumer.Message) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &consumer.PanicError{Value: r}
		}
	}()
	tx := run.tx
	stmt := spFirst
	if run.spOpen {
		stmt = spNext
	}
	if _, err := tx.ExecContext(ctx, stmt); err != nil {
		run.broken = fmt.Errorf("outbox: batch savepoint: %w", err)
		return run.broken
	}
	run.spOpen = true
	undo := true // also on panic: recovered after this defer
	defer func() {
		if !undo {
			return
		}
		if _, xerr := tx.ExecContext(ctx, spRollback); xerr != nil {
			run.broken = fmt.Errorf("outbox: batch rollback to savepoint: %w", xerr)
		}
	}()
	var key string
	var status dedupe.Status
	err = in.handleMessage(ctx, m, fn, func(ctx context.Context, k, fp string, fn TxFunc) (InboxOutcome, error) {
		out, err := in.handleTx(ctx, tx, k, fp, fn)
		key, status = k, out.Status
		if out.Status == dedupe.Busy && run.claimed[k] {
			err = retry.After(SameBatchBusyDelay, ErrBusy)
		}
		return out, err
	})
	var rej *consumer.RejectError
	undo = err != nil && !errors.As(err, &rej)
	if !undo && status == dedupe.Acquired {
		run.claimed[key] = true
	}
	return err
}

// addBuffer collects the rows that AddTx adds on the batch transaction
// during the optimistic pass, in order, for one insert before the commit.
type addBuffer struct {
	tx   *sql.Tx
	mu   sync.Mutex // handlers may call AddTx from several goroutines
	outs []*Outbox  // outs[i] added rows[i]
	rows []row
}

type addBufferKey struct{}

// bufferFor returns the buffer of the batch whose transaction is tx, or nil
// when ctx is not in an optimistic batch pass or tx is another Querier.
func bufferFor(ctx context.Context, tx Querier) *addBuffer {
	buf, _ := ctx.Value(addBufferKey{}).(*addBuffer)
	if buf == nil {
		return nil
	}
	if t, ok := tx.(*sql.Tx); !ok || t != buf.tx {
		return nil
	}
	return buf
}

func (b *addBuffer) add(o *Outbox, rows []row) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for range rows {
		b.outs = append(b.outs, o)
	}
	b.rows = append(b.rows, rows...)
}

// flush inserts the buffered rows in the order they were added: one
// statement per run of rows of the same Outbox (normally one in all).
func (b *addBuffer) flush(ctx context.Context) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for start := 0; start < len(b.rows); {
		o := b.outs[start]
		end := start + 1
		for end < len(b.rows) && b.outs[end] == o {
			end++
		}
		if err := o.insertRows(ctx, b.tx, b.rows[start:end]); err != nil {
			return err
		}
		start = end
	}
	b.outs, b.rows = nil, nil
	return nil
}

// insertRows writes rows with as few statements as the dialect allows: on
// Postgres one INSERT ... SELECT FROM unnest (the same statement text for
// any number of rows, so it stays prepared) that also signals the NOTIFY
// channel; on SQLite AddTx's multi-row inserts.
func (o *Outbox) insertRows(ctx context.Context, tx Querier, rows []row) error {
	if len(rows) == 0 {
		return nil
	}
	now := o.now()
	if o.d.kind != sqlstore.Postgres {
		for start := 0; start < len(rows); start += insertChunk {
			end := min(start+insertChunk, len(rows))
			q, args := o.d.insertSQL(o.table, rows[start:end], now, false, "")
			if _, err := tx.ExecContext(ctx, q, args...); err != nil {
				return fmt.Errorf("outbox: insert into %s: %w", o.table, err)
			}
		}
		return nil
	}
	n := len(rows)
	ids, subjects, keys := make([]string, n), make([]string, n), make([]string, n)
	headers, data := make([][]byte, n), make([][]byte, n)
	for i, r := range rows {
		ids[i], subjects[i], keys[i], headers[i], data[i] = r.ID, r.Subject, r.OrderingKey, r.Header, r.Data
	}
	q := "INSERT INTO " + o.table + " (id, subject, headers, data, ordering_key, created_at) " +
		"SELECT u.id, u.subject, u.headers, u.data, u.ordering_key, $6 " +
		"FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::text[]) AS u(id, subject, headers, data, ordering_key) " +
		"ON CONFLICT (id) DO NOTHING"
	args := []any{ids, subjects, headers, data, keys, o.d.ts(now)}
	if o.notify {
		q = "WITH ins AS (" + q + " RETURNING 1)" + notifySelect(o.table, "$7")
		args = append(args, o.channel)
	}
	if _, err := tx.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("outbox: insert into %s: %w", o.table, err)
	}
	return nil
}
