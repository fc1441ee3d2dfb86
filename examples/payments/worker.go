package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/outbox"
	"github.com/idemq/idemq/retry"
)

// Worker defaults.
const (
	// workerNamespace prefixes the worker's dedupe keys, apart from the API's.
	workerNamespace = "payments-worker"
	// workerRetention is how long the worker remembers a key: 7 days, far
	// beyond the redelivery horizon (checked at start).
	workerRetention = 7 * 24 * time.Hour
)

// workerRetry is the worker's retry policy for transient failures (a busy
// database): up to 8 deliveries, 200ms doubling to 10s with full jitter,
// handed to the broker as NakWithDelay.
var workerRetry = retry.Policy{MaxAttempts: 8, Backoff: retry.Exponential{Initial: 200 * time.Millisecond, Max: 10 * time.Second}}

func workerCommand(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("payments worker", flag.ContinueOnError)
	fs.SetOutput(stderr)
	natsURL := fs.String("nats", defaultNATSURL, "NATS server URL (JetStream enabled)")
	dbURL := fs.String("db", "", "database: postgres://… or sqlite:PATH (required)")
	concurrency := fs.Int("concurrency", 4, "payments handled at once")
	ackWait := fs.Duration("ack-wait", natsjs.DefaultAckWait, "JetStream AckWait: how soon a message held by a crashed worker is redelivered")
	logFormat := fs.String("log-format", "text", "log format on stderr: text or json")
	prefix := fs.String("prefix", "", "put PREFIX in front of every stream, subject, consumer and table name, for a shared server (default: the contract's names)")
	metricsAddr := fs.String("metrics", "", metricsFlagUsage)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: payments worker -nats URL -db URL [-concurrency N] [-metrics ADDR]

Consumes payments.requested from the JetStream stream PAYMENTS (subjects
payments.>) with the durable consumer "payments-worker". Each message is a
JSON payment {"payment_id","from","to","amount","currency","timestamp"} with
an Idempotency-Key header. The worker moves the amount between the two rows
of accounts(id text primary key, balance bigint not null) exactly once per
key: the dedupe record, the balance updates, the ledger row (table transfers)
and the outgoing event are written in one database transaction. Success
emits payments.completed (Nats-Msg-Id completed.<key>); insufficient funds
is a final "402" result, recorded once, replayed to duplicates and emitted
as payments.rejected (rejected.<key>). The same key with a different payment
(timestamp excluded) is dead-lettered with reason conflict, a body that is
not a payment with reason invalid, on dlq.payments in the stream DLQ. The
worker also relays the outbox to JetStream. Tables and streams are created
if missing; create and fund the accounts yourself.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := firstError(
		required("-nats", *natsURL), checkNATSURL(*natsURL), required("-db", *dbURL), checkFlag("-db", checkDBURL(*dbURL)),
		atLeast("-concurrency", *concurrency, 1), positive("-ack-wait", *ackWait),
		checkFlag("-log-format", checkLogFormat(*logFormat)),
	); err != nil {
		return usageError(fs, "payments worker", err)
	}
	nm, err := namesFor(*prefix)
	if err != nil {
		return usageError(fs, "payments worker", err)
	}
	log, err := newLogger(stderr, *logFormat)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return err
	}
	tel, err := startTelemetry(*metricsAddr, log)
	if err != nil {
		return err
	}
	w, err := newWorker(ctx, *dbURL, *natsURL, nm, *concurrency, *ackWait, log, tel)
	if err != nil {
		tel.close()
		return err
	}
	defer w.close()
	return w.run(ctx)
}

// worker is the payments consumer and its outbox relay.
type worker struct {
	*node
	inbox *outbox.Inbox
	cons  *natsjs.Consumer
}

func newWorker(ctx context.Context, dbURL, natsURL string, nm names, concurrency int, ackWait time.Duration, log *slog.Logger, tel *telemetry) (w *worker, err error) {
	n, err := openNode(ctx, "payments-worker", dbURL, natsURL, nm, log, tel)
	if err != nil {
		return nil, err
	}
	w = &worker{node: n}
	defer func() {
		if err != nil {
			w.close()
		}
	}()
	if err = ensureSchema(ctx, w.db); err != nil {
		return nil, err
	}
	guard := &dedupe.Guard{
		Store:       n.store,
		Key:         dedupe.KeyFunc(paymentKey),
		Fingerprint: &dedupe.Fingerprinter{Exclude: []string{"timestamp"}},
		Namespace:   workerNamespace,
		Lease:       max(ackWait, dedupe.DefaultLease),
		Retention:   workerRetention,
	}
	if w.inbox, err = outbox.NewInbox(w.db.DB, outbox.InboxConfig{Guard: guard}); err != nil {
		return nil, fmt.Errorf("inbox: %w", err)
	}
	cfg := natsjs.Config{
		Stream:         n.nm.paymentsStream(),
		Durable:        n.nm.durable(),
		FilterSubjects: []string{n.nm.requested()},
		Concurrency:    concurrency,
		AckWait:        ackWait,
		DeadLetter:     natsjs.DeadLetterConfig{Subject: n.nm.dlqSubject(), Stream: n.nm.dlqStream()},
		// No Guard: the inbox is the dedupe (outbox.Inbox.Handler).
		Pipeline: consumer.Config{Retry: workerRetry, Logger: log, Observer: tel.consumer(durableWorker)},
	}
	if err := dedupe.ValidateRetention(guard.RetentionDuration(), natsjs.Horizon(cfg)); err != nil {
		return nil, err
	}
	if w.cons, err = natsjs.New(w.js, cfg, w.handle); err != nil {
		return nil, err
	}
	return w, nil
}

// paymentKey is the worker's key source: the Idempotency-Key header of a
// body that is a valid payment. A body that is not a payment fails here, as
// invalid input, so that the pipeline dead-letters it with reason "invalid"
// before any claim is made.
func paymentKey(in dedupe.Input) (string, error) {
	if _, err := decodePayment(in.Data); err != nil {
		return "", &dedupe.KeyError{Source: "payment body", Err: err}
	}
	return dedupe.HeaderKey(headerKey).Key(in)
}

// run consumes and relays until ctx is done.
func (w *worker) run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Go(func() {
		if err := w.relay.Run(ctx); err != nil {
			errs <- fmt.Errorf("outbox relay: %w", err)
		}
		cancel()
	})
	wg.Go(func() {
		if err := w.cons.Run(ctx); err != nil {
			errs <- fmt.Errorf("consumer: %w", err)
		}
		cancel()
	})
	w.log.Info("payments worker running", "event", "worker_ready", "stream", w.nm.paymentsStream(), "consumer", w.nm.durable())
	wg.Wait()
	close(errs)
	var all []error
	for err := range errs {
		all = append(all, err)
	}
	return errors.Join(all...)
}

// outcomeEvent is the body of payments.completed and payments.rejected, and
// the result the inbox stores for the key.
type outcomeEvent struct {
	payment
	Status string `json:"status"` // "completed" or "rejected"
	Code   int    `json:"code"`   // 200 or 402
}

// handle runs one delivery through the transactional inbox
// (outbox.Inbox.Handler): claim the key, apply the transfer, add the outcome
// event to the outbox and complete the record in one transaction. A key seen
// before is acknowledged with its stored result without running apply.
//
// The inbox reports a key conflict (an error wrapping consumer.ErrConflict) and a body that is not a payment (dedupe invalid
// input from paymentKey) as errors the pipeline dead-letters on
// dlq.payments with reasons "conflict" and "invalid".
func (w *worker) handle(ctx context.Context, m *consumer.Message) error {
	if m.Attempt > 1 {
		w.log.Info("payments worker: redelivery", "event", "redelivery", "id", m.ID, "attempt", m.Attempt)
	}
	ran := false
	err := w.inbox.Handler(func(ctx context.Context, tx *sql.Tx, m *consumer.Message) error {
		ran = true
		return w.apply(ctx, tx, m)
	})(ctx, m)
	var rej *consumer.RejectError
	switch {
	case errors.Is(err, consumer.ErrConflict):
		w.log.Warn("payments worker: dead-lettering", "event", "dead_letter", "reason", consumer.ReasonConflict.String(), "id", m.ID, "err", err)
	case dedupe.IsInvalidInput(err):
		w.log.Warn("payments worker: dead-lettering", "event", "dead_letter", "reason", consumer.ReasonInvalid.String(), "id", m.ID, "err", err)
	case ran && err == nil:
		w.log.Info("payments worker: completed", "event", "completed", "id", m.ID, "key", keyOf(m))
	case ran && errors.As(err, &rej):
		w.log.Info("payments worker: rejected (402)", "event", "rejected", "id", m.ID, "key", keyOf(m))
	case errors.Is(err, outbox.ErrBusy):
		w.log.Info("payments worker: busy", "event", "busy", "id", m.ID)
	case !ran && (err == nil || errors.As(err, &rej)):
		w.log.Info("payments worker: duplicate acknowledged without effect", "event", "duplicate", "id", m.ID, "key", keyOf(m))
	case err != nil && !errors.As(err, &rej) && !retry.IsPermanent(err):
		w.log.Info("payments worker: transient failure, redelivering", "event", "retry", "id", m.ID, "attempt", m.Attempt, "err", err)
	}
	m.SetClaim(inboxClaim(ran, err))
	return err
}

// inboxClaim is what the inbox's claim answered, for the metrics (-metrics):
// the inbox claims in its own transaction, where the pipeline does not see
// it.
func inboxClaim(ran bool, err error) consumer.ClaimResult {
	var rej *consumer.RejectError
	switch {
	case errors.Is(err, consumer.ErrConflict):
		return consumer.ClaimConflict
	case dedupe.IsInvalidInput(err):
		return consumer.ClaimInvalid
	case errors.Is(err, outbox.ErrBusy):
		return consumer.ClaimBusy
	case ran:
		return consumer.ClaimAcquired
	case err == nil || errors.As(err, &rej):
		return consumer.ClaimDuplicate
	}
	return consumer.ClaimStoreError // the claim itself failed
}

// keyOf returns the Idempotency-Key of m.
func keyOf(m *consumer.Message) string {
	if v := (dedupe.Input{Header: m.Header}).Values(headerKey); len(v) > 0 {
		return v[0]
	}
	return ""
}

// apply runs inside the inbox transaction tx: the transfer, the ledger row
// and the outcome event in the outbox. It returns consumer.Reject for
// insufficient funds, which the inbox commits and replays as a failure.
func (w *worker) apply(ctx context.Context, tx *sql.Tx, m *consumer.Message) error {
	p, err := decodePayment(m.Data)
	if err != nil {
		return retry.Permanent(err) // paymentKey refused it already
	}
	key := keyOf(m)
	err = applyTransfer(ctx, w.db, tx, key, p)
	ev := outcomeEvent{payment: p, Status: outcomeCompleted, Code: 200}
	id, subject := outboxCompletedPfx+key, w.nm.completed()
	switch {
	case errors.Is(err, ErrInsufficientFunds):
		ev.Status, ev.Code = outcomeRejected, 402
		id, subject = outboxRejectedPfx+key, w.nm.rejected()
	case err != nil:
		return err
	}
	data, _ := json.Marshal(ev)
	msg := outbox.Message{ID: id, Subject: subject, Header: map[string][]string{headerKey: {key}}, Data: data}
	if err := w.ob.AddTx(ctx, tx, msg); err != nil {
		return err
	}
	if ev.Code != 200 {
		return consumer.Reject(data, err)
	}
	m.SetResult(data)
	return nil
}
