package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/retry"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Batch defaults.
const (
	// DefaultBatchMessages is BatchConfig.BatchSize when zero: 250 messages
	// per transaction.
	DefaultBatchMessages = 250
	// DefaultBatchConcurrency is BatchConfig.Concurrency when zero: 4.
	DefaultBatchConcurrency = 4
	// DefaultBatchAckWait is BatchConfig.AckWait when zero: 30s.
	DefaultBatchAckWait = 30 * time.Second
	// DefaultBatchPullWait is BatchConfig.PullWait when zero: 1s.
	DefaultBatchPullWait = time.Second
	// DefaultMaxDeliverSlack is added to the retry policy's attempts when
	// BatchConfig.MaxDeliver is zero: 10.
	DefaultMaxDeliverSlack = 10
)

// BatchConfig configures a Batch consumer. Stream, Durable and
// DeadLetter.Subject are required.
type BatchConfig struct {
	// Stream is the JetStream stream to consume. Required.
	Stream string
	// Durable names the durable pull consumer, created or updated by Run.
	// Required.
	Durable string
	// FilterSubjects restricts the consumer to these subjects (more than
	// one needs NATS server 2.10).
	FilterSubjects []string
	// Concurrency is the number of batches processed at once, each in its
	// own transaction and connection. Default DefaultBatchConcurrency (4):
	// while one batch waits for a database round trip, the others run.
	Concurrency int
	// BatchSize is the most messages fetched and processed in one database
	// transaction. Default DefaultBatchMessages (250). The durable's
	// MaxAckPending is set to at least twice this times Concurrency, so
	// that every worker can hold a full batch while the last batches' acks
	// are on their way.
	BatchSize int
	// PullWait is how long an idle consumer waits for the first message of
	// a batch; it bounds how long Run takes to return after ctx ends.
	// Default DefaultBatchPullWait (1s).
	PullWait time.Duration
	// AckWait is the server's redelivery timeout; a batch must commit and
	// ack well within it. Default DefaultBatchAckWait (30s).
	AckWait time.Duration
	// MaxDeliver is the server's delivery limit; it must exceed the retry
	// policy's attempts. Zero: attempts + DefaultMaxDeliverSlack; -1:
	// unlimited.
	MaxDeliver int
	// DoubleAck waits for the server to confirm each ack.
	DoubleAck bool
	// DeadLetter says where dead letters go (same settings as
	// consumer/natsjs; CreateStream creates the stream at Run).
	DeadLetter natsjs.DeadLetterConfig
	// Pipeline holds the retry policy, budget and logger that classify each
	// message's failure exactly as consumer/natsjs does. Its Guard must be
	// nil: the inbox is the dedupe.
	Pipeline consumer.Config
	// Hostname fills the dead letters' Idemq-Host. Default os.Hostname().
	Hostname string
	// Logger receives warnings. Default Pipeline.Logger, else
	// slog.Default().
	Logger *slog.Logger
}

// Batch consumes a JetStream stream in exactly-once batches: it fetches up
// to BatchSize messages, runs each through the inbox (claim, handler,
// complete) inside ONE database transaction, commits once, and only then
// acknowledges them. A crash between commit and ack redelivers messages
// whose records are committed: they are acknowledged as duplicates, their
// effects stay applied once. If the commit fails, every message of the
// batch is handed back for redelivery.
//
// A batch first runs optimistically, without savepoints: the keys of all
// its messages are claimed with one statement (sqlstore's ClaimManyTx),
// the handlers run for the Acquired ones, the records are completed with
// one statement (CompleteManyTx) and the outgoing messages the handlers
// added with Outbox.AddTx on the batch transaction are written with one
// multi-row insert just before the commit. If any handler returns an error
// (other than a consumer.Reject) or panics, the whole transaction is rolled
// back and the batch runs again with a SAVEPOINT per message, so that the
// failing message is rolled back alone and then retried or dead-lettered by
// the pipeline's rules while the others commit. Consequences for handlers:
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
type Batch struct {
	in   *Inbox
	js   jetstream.JetStream
	cfg  BatchConfig
	fn   MessageFunc
	pipe *consumer.Pipeline
	dl   *natsjs.DeadLetterer
	log  *slog.Logger

	// afterCommit, set only by tests, runs after the commit and before the
	// acks; an error ends Run without acknowledging, like a crash.
	afterCommit func() error
}

// NewBatch returns a batch consumer that runs fn in the inbox transaction
// for every message.
func NewBatch(in *Inbox, js jetstream.JetStream, cfg BatchConfig, fn MessageFunc) (*Batch, error) {
	bad := func(format string, args ...any) (*Batch, error) {
		return nil, fmt.Errorf("%w: "+format, append([]any{consumer.ErrInvalidConfig}, args...)...)
	}
	switch {
	case in == nil || js == nil || fn == nil:
		return bad("NewBatch needs an inbox, a JetStream context and a handler")
	case cfg.Stream == "":
		return bad("Stream is required")
	case cfg.Durable == "":
		return bad("Durable is required")
	case cfg.DeadLetter.Subject == "":
		return bad("DeadLetter.Subject is required: dead letters must go somewhere")
	case cfg.Pipeline.Guard != nil:
		return bad("Pipeline.Guard must be nil: the inbox dedupes in the transaction")
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = DefaultBatchMessages
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultBatchConcurrency
	}
	if cfg.PullWait <= 0 {
		cfg.PullWait = DefaultBatchPullWait
	}
	if cfg.AckWait <= 0 {
		cfg.AckWait = DefaultBatchAckWait
	}
	attempts := cfg.Pipeline.Retry.Attempts()
	switch {
	case cfg.MaxDeliver == 0:
		cfg.MaxDeliver = attempts + DefaultMaxDeliverSlack
	case cfg.MaxDeliver > 0 && cfg.MaxDeliver <= attempts:
		return bad("MaxDeliver %d must exceed the retry policy's %d attempts", cfg.MaxDeliver, attempts)
	}
	dl := &cfg.DeadLetter
	if dl.Stream == "" {
		dl.Stream = natsjs.DefaultDeadLetterStream
	}
	if len(dl.StreamSubjects) == 0 {
		first, _, _ := strings.Cut(dl.Subject, ".")
		dl.StreamSubjects = []string{first + ".>"}
		if first == dl.Subject {
			dl.StreamSubjects = []string{dl.Subject}
		}
	}
	if dl.RetryDelay <= 0 {
		dl.RetryDelay = natsjs.DefaultDeadLetterRetryDelay
	}
	if dl.PublishTimeout <= 0 {
		dl.PublishTimeout = natsjs.DefaultPublishTimeout
	}
	if cfg.Hostname == "" {
		cfg.Hostname, _ = os.Hostname()
	}
	if cfg.Logger == nil {
		cfg.Logger = cfg.Pipeline.Logger
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Pipeline.Logger == nil {
		cfg.Pipeline.Logger = cfg.Logger
	}
	cfg.Pipeline.HeartbeatInterval = -1 // a batch is short; AckWait covers it
	b := &Batch{
		in:  in,
		js:  js,
		cfg: cfg,
		fn:  fn,
		dl:  &natsjs.DeadLetterer{JS: js, Subject: dl.Subject, Stream: dl.Stream, Host: cfg.Hostname},
		log: cfg.Logger.With("component", "idemq/outbox.Batch", "durable", cfg.Durable),
	}
	pipe, err := consumer.NewPipeline(cfg.Pipeline, b.handle)
	if err != nil {
		return nil, err
	}
	b.pipe = pipe
	return b, nil
}

// Run consumes until ctx is done and returns nil after the batch in flight
// has been committed and acknowledged (or handed back). Database failures
// hand the batch back and are retried; Run returns an error only when the
// consumer cannot be set up or the NATS connection is closed.
func (b *Batch) Run(ctx context.Context) error {
	cons, err := b.setup(ctx)
	if err != nil {
		return err
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, b.cfg.Concurrency)
	for range b.cfg.Concurrency {
		go func() {
			err := b.work(wctx, cons)
			if err != nil {
				cancel() // one fatal error stops every worker
			}
			errs <- err
		}()
	}
	var first error
	for range b.cfg.Concurrency {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// work fetches and processes batches until ctx is done.
func (b *Batch) work(ctx context.Context, cons jetstream.Consumer) error {
	failures := 0
	for ctx.Err() == nil {
		msgs, err := b.fetch(ctx, cons)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, jetstream.ErrConnectionClosed) || errors.Is(err, jetstream.ErrConsumerDeleted) {
				return fmt.Errorf("outbox: batch fetch: %w", err)
			}
			failures++
			d := b.pipe.Policy().Delay(failures)
			b.log.Warn("fetch failed; retrying", "err", err, "retry_in", d)
			if !sleep(ctx, d) {
				return nil
			}
			continue
		}
		failures = 0
		if len(msgs) == 0 {
			continue
		}
		// A batch in flight finishes even when ctx ends: it is short, and
		// finishing it avoids redelivering work already done.
		if err := b.process(context.WithoutCancel(ctx), msgs); err != nil {
			if errors.Is(err, errHook) {
				return err
			}
			b.log.Warn("batch handed back for redelivery", "messages", len(msgs), "err", err)
		}
	}
	return nil
}

// setup creates the dead-letter stream when asked and the durable consumer.
func (b *Batch) setup(ctx context.Context) (jetstream.Consumer, error) {
	dl := b.cfg.DeadLetter
	if dl.CreateStream {
		if _, err := b.js.Stream(ctx, dl.Stream); errors.Is(err, jetstream.ErrStreamNotFound) {
			_, err = b.js.CreateStream(ctx, jetstream.StreamConfig{Name: dl.Stream, Subjects: dl.StreamSubjects, Storage: jetstream.FileStorage})
			if err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				return nil, fmt.Errorf("outbox: dead-letter stream %s: %w", dl.Stream, err)
			}
		} else if err != nil {
			return nil, fmt.Errorf("outbox: dead-letter stream %s: %w", dl.Stream, err)
		}
	}
	cc := jetstream.ConsumerConfig{
		Durable:       b.cfg.Durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       b.cfg.AckWait,
		MaxDeliver:    b.cfg.MaxDeliver,
		MaxAckPending: max(2*b.cfg.Concurrency*b.cfg.BatchSize, 1000),
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	switch len(b.cfg.FilterSubjects) {
	case 0:
	case 1:
		cc.FilterSubject = b.cfg.FilterSubjects[0]
	default:
		cc.FilterSubjects = b.cfg.FilterSubjects
	}
	cons, err := b.js.CreateOrUpdateConsumer(ctx, b.cfg.Stream, cc)
	if err != nil {
		return nil, fmt.Errorf("outbox: create or update consumer %s on %s: %w", b.cfg.Durable, b.cfg.Stream, err)
	}
	return cons, nil
}

// fetch returns up to BatchSize messages: whatever is available at once,
// else it waits up to PullWait for one message and adds what arrived with
// it.
func (b *Batch) fetch(ctx context.Context, cons jetstream.Consumer) ([]jetstream.Msg, error) {
	msgs, err := drain(cons.FetchNoWait(b.cfg.BatchSize))
	if err != nil || len(msgs) > 0 {
		return msgs, err
	}
	wait := b.cfg.PullWait
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl))
	}
	if wait <= 0 {
		return nil, ctx.Err()
	}
	msgs, err = drain(cons.Fetch(1, jetstream.FetchMaxWait(wait)))
	if err != nil || len(msgs) == 0 || b.cfg.BatchSize == 1 {
		return msgs, err
	}
	more, err := drain(cons.FetchNoWait(b.cfg.BatchSize - 1))
	return append(msgs, more...), err
}

func drain(batch jetstream.MessageBatch, err error) ([]jetstream.Msg, error) {
	if err != nil {
		return nil, err
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
		return msgs, err
	}
	return msgs, nil
}

// SameBatchBusyDelay is the redelivery delay of a message whose key an
// earlier message of the same batch claimed: by then that batch has
// committed (or rolled back), so the redelivery is a duplicate (or runs).
const SameBatchBusyDelay = 100 * time.Millisecond

// process runs one batch in one transaction and applies the outcomes after
// the commit: optimistically without savepoints, and again with a savepoint
// per message when a handler fails.
func (b *Batch) process(ctx context.Context, msgs []jetstream.Msg) error {
	outs := make([]consumer.Outcome, len(msgs))
	conv := b.convert(msgs, outs)
	ok, err := b.processFast(ctx, msgs, conv, outs)
	if err != nil {
		return b.handBack(msgs, err)
	}
	if !ok {
		// Fresh messages: the first pass may have recorded results on them.
		outs = make([]consumer.Outcome, len(msgs))
		conv = b.convert(msgs, outs)
		if err := b.processSavepoints(ctx, conv, outs); err != nil {
			return b.handBack(msgs, err)
		}
	}
	if b.afterCommit != nil {
		if err := b.afterCommit(); err != nil {
			return fmt.Errorf("%w: %w", errHook, err)
		}
	}
	for i, msg := range msgs {
		b.apply(ctx, msg, conv[i], outs[i])
	}
	return nil
}

// handBack redelivers every message of a batch that did not commit.
func (b *Batch) handBack(msgs []jetstream.Msg, err error) error {
	for _, m := range msgs {
		_ = m.NakWithDelay(b.cfg.DeadLetter.RetryDelay / 5)
	}
	return err
}

// convert translates msgs; one that cannot be translated gets a Retry
// outcome in outs and a nil entry.
func (b *Batch) convert(msgs []jetstream.Msg, outs []consumer.Outcome) []*consumer.Message {
	conv := make([]*consumer.Message, len(msgs))
	for i, msg := range msgs {
		m, err := natsjs.Convert(msg)
		if err != nil {
			outs[i] = consumer.Outcome{Action: consumer.Retry, Delay: b.cfg.DeadLetter.RetryDelay, Err: err}
			continue
		}
		conv[i] = m
	}
	return conv
}

// fastItem is one message of the optimistic pass.
type fastItem struct {
	m     *consumer.Message
	skip  bool   // past the attempt limit: the pipeline dead-letters it unrun
	claim int    // index into the claim requests, -1 for none
	key   string // stored key
	err   error  // what the handler answers the pipeline
}

// processFast is the optimistic pass: claim every key with one statement,
// run the handlers of the Acquired messages without savepoints, complete
// with one statement, write the buffered outbox rows, commit, and fill
// outs. ok is false when the pass gave up before committing (a handler
// failed, or a batch statement did) and rolled back: run the savepoint
// pass. err is a failure that hands the batch back (begin or commit).
func (b *Batch) processFast(ctx context.Context, msgs []jetstream.Msg, conv []*consumer.Message, outs []consumer.Outcome) (ok bool, err error) {
	guard := b.in.guard
	lease, retention := guard.LeaseDuration(), guard.RetentionDuration()
	attempts := b.pipe.Policy().Attempts()
	items := make([]fastItem, len(msgs))
	reqs := make([]sqlstore.ClaimRequest, 0, len(msgs))
	for i, m := range conv {
		it := &items[i]
		it.m, it.claim = m, -1
		if m == nil {
			continue
		}
		if max(m.Attempt, 1) > attempts {
			it.skip = true
			continue
		}
		key, fp, err := guard.Resolve(dedupe.Input{Header: m.Header, Data: m.Data, MessageID: m.ID})
		if err != nil {
			it.err = retry.Permanent(err)
			continue
		}
		it.key, it.claim = key, len(reqs)
		reqs = append(reqs, sqlstore.ClaimRequest{Key: key, Fingerprint: fp, Lease: lease, Retention: retention})
	}

	tx, err := b.in.db.BeginTx(ctx, b.in.txo)
	if err != nil {
		return false, fmt.Errorf("outbox: batch begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	giveUp := func(reason string, err error) (bool, error) {
		b.log.Debug("optimistic batch pass failed; rerunning with a savepoint per message", "reason", reason, "err", err)
		return false, nil
	}
	var claims []dedupe.Claim
	if len(reqs) > 0 {
		if claims, err = b.in.store.ClaimManyTx(ctx, tx, reqs); err != nil {
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
			res, rejected, err := b.runFast(hctx, tx, it.m)
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
		errs, err := b.in.store.CompleteManyTx(ctx, tx, done)
		if err != nil {
			return giveUp("complete", err)
		}
		for _, err := range errs {
			if err != nil {
				return giveUp("complete", err)
			}
		}
	}
	if err := buf.flush(ctx); err != nil {
		return giveUp("outbox insert", err)
	}
	if err := tx.Commit(); err != nil {
		return false, fmt.Errorf("outbox: batch commit: %w", err)
	}
	for i := range items {
		it := &items[i]
		if it.m == nil {
			continue
		}
		outs[i] = b.pipe.Process(context.WithValue(ctx, recordedKey{}, it), it.m)
	}
	return true, nil
}

// runFast runs the handler for an Acquired message in the optimistic pass.
// It returns the result to store, the consumer.Reject the handler returned
// (nil on success), and err for any other error or a panic.
func (b *Batch) runFast(ctx context.Context, tx *sql.Tx, m *consumer.Message) (res dedupe.Result, rejected, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &consumer.PanicError{Value: r}
		}
	}()
	err = b.fn(WithCause(ctx, m.ID, m.Header), tx, m)
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

// recordedKey carries the *fastItem whose recorded answer handle returns
// when the pipeline classifies a message of a committed optimistic pass.
type recordedKey struct{}

// processSavepoints runs the batch with a SAVEPOINT per message (each
// through Inbox.handleTx), commits and fills outs.
func (b *Batch) processSavepoints(ctx context.Context, conv []*consumer.Message, outs []consumer.Outcome) error {
	tx, err := b.in.db.BeginTx(ctx, b.in.txo)
	if err != nil {
		return fmt.Errorf("outbox: batch begin: %w", err)
	}
	defer func() { _ = tx.Rollback() }()
	run := &batchRun{tx: tx, claimed: make(map[string]bool, len(conv))}
	ctx = context.WithValue(ctx, batchRunKey{}, run)
	for i, m := range conv {
		if m == nil {
			continue
		}
		outs[i] = b.pipe.Process(ctx, m)
		if run.broken != nil {
			return run.broken
		}
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("outbox: batch commit: %w", err)
	}
	return nil
}

// batchRun is the state of one savepoint-pass transaction, carried in the
// context the pipeline hands to handle.
type batchRun struct {
	tx      *sql.Tx
	spOpen  bool            // savepoint idemq_msg is defined
	broken  error           // the transaction can no longer commit
	claimed map[string]bool // keys Acquired (and kept) in this transaction
}

type batchRunKey struct{}

// Savepoint statements. Each message costs one round trip: the savepoint of
// the previous message is released and the next one set in the same
// simple-protocol exchange; a failure rolls back to it, which keeps it
// defined for the next message to release.
const (
	spFirst    = "SAVEPOINT idemq_msg"
	spNext     = "RELEASE SAVEPOINT idemq_msg; SAVEPOINT idemq_msg"
	spRollback = "ROLLBACK TO SAVEPOINT idemq_msg"
)

// handle is the pipeline's handler. After a committed optimistic pass it
// returns the answer recorded there; in the savepoint pass it does the
// message's inbox work under its own savepoint in the batch transaction.
func (b *Batch) handle(ctx context.Context, m *consumer.Message) (err error) {
	if it, ok := ctx.Value(recordedKey{}).(*fastItem); ok {
		return it.err
	}
	run := ctx.Value(batchRunKey{}).(*batchRun)
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
	undo := true // also on panic: the pipeline recovers it after this defer
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
	err = b.in.handleMessage(ctx, m, b.fn, func(ctx context.Context, k, fp string, fn TxFunc) (InboxOutcome, error) {
		out, err := b.in.handleTx(ctx, tx, k, fp, fn)
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
		q = "WITH ins AS (" + q + " RETURNING 1) SELECT pg_notify($7, '')"
		args = append(args, o.channel)
	}
	if _, err := tx.ExecContext(ctx, q, args...); err != nil {
		return fmt.Errorf("outbox: insert into %s: %w", o.table, err)
	}
	return nil
}

// apply translates an outcome into broker actions, as consumer/natsjs does.
// The pipeline gives key conflicts and invalid input, which the inbox
// reports as permanent handler errors, the reasons "conflict" and "invalid".
func (b *Batch) apply(ctx context.Context, msg jetstream.Msg, m *consumer.Message, out consumer.Outcome) {
	id := ""
	if m != nil {
		id = m.ID
	}
	switch out.Action {
	case consumer.Ack:
		var err error
		if b.cfg.DoubleAck {
			actx, cancel := context.WithTimeout(ctx, b.cfg.DeadLetter.PublishTimeout)
			err = msg.DoubleAck(actx)
			cancel()
		} else {
			err = msg.Ack()
		}
		if err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
			b.log.Warn("ack failed; the redelivery is answered from the inbox record", "id", id, "err", err)
		}
	case consumer.Retry:
		if err := msg.NakWithDelay(out.Delay); err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
			b.log.Warn("nak failed; the server redelivers after AckWait", "id", id, "err", err)
		}
	case consumer.DeadLetter:
		pctx, cancel := context.WithTimeout(ctx, b.cfg.DeadLetter.PublishTimeout)
		defer cancel()
		if err := b.dl.Publish(pctx, msg, out.Reason, out.Err); err != nil {
			b.log.Error("dead-letter publish failed; redelivering", "id", id, "reason", out.Reason.String(), "err", err)
			_ = msg.NakWithDelay(b.cfg.DeadLetter.RetryDelay)
			return
		}
		if err := msg.Term(); err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
			b.log.Warn("term after dead-lettering failed", "id", id, "err", err)
		}
	default:
		_ = msg.NakWithDelay(b.cfg.DeadLetter.RetryDelay)
	}
}
