// Package outbox makes a message handler's effects exactly-once end to end:
// the transactional inbox applies database effects once, the transactional
// outbox emits messages once, and a relay publishes them to JetStream with
// Nats-Msg-Id so the broker drops any republished copy.
//
// # The guarantee
//
// A broker redelivers: after a crash, a lost ack, a timeout. Store dedupe
// (package dedupe) suppresses duplicates but cannot make a non-idempotent
// effect exactly-once, because a crash between the effect and recording it
// re-runs the effect. The inbox closes that hole for effects in the same
// database: the dedupe record (dedupe/sqlstore's ClaimTx and CompleteTx) is
// written in the SAME transaction as the handler's writes. Commit, then ack;
// a crash before the commit rolls everything back and the redelivery runs
// again; a crash after it finds the committed record and is acknowledged as
// a duplicate. Outgoing messages are rows in that transaction too (AddTx),
// each with a stable id; the relay publishes committed rows and confirms
// each PubAck before marking the row sent. A relay that dies between the
// publish and the mark publishes again; JetStream drops the copy because it
// has the same Nats-Msg-Id within the stream's Duplicates window, and
// downstream consumers can dedupe by the same id.
//
// # Using inbox and outbox
//
//	store, _ := sqlstore.New(ctx, db, sqlstore.Config{})
//	ob, _ := outbox.New(ctx, db, outbox.Config{}) // creates idemq_outbox if missing
//	in, _ := outbox.NewInbox(db, outbox.InboxConfig{Guard: &dedupe.Guard{
//		Store: store, Key: dedupe.HeaderKey("Idempotency-Key"),
//		Fingerprint: &dedupe.Fingerprinter{Exclude: []string{"timestamp"}},
//	}})
//	h := in.Handler(func(ctx context.Context, tx *sql.Tx, m *consumer.Message) error {
//		// effects on tx, then the messages they cause, on the same tx
//		if _, err := tx.ExecContext(ctx, "UPDATE accounts SET ..."); err != nil {
//			return err // rolled back; redelivered
//		}
//		return ob.AddTx(ctx, tx, outbox.Message{ID: "completed." + key, Subject: "payments.completed", Data: body})
//	})
//	// run h with natsjs.New (no Guard: the inbox is the dedupe), or run
//	// in.BatchHandler(fn) with natsjs.NewBatch for many messages per
//	// transaction; and run a relay:
//	relay, _ := outbox.NewRelay(db, outbox.JetStream(js), outbox.RelayConfig{Streams: []string{"PAYMENTS"}})
//	go relay.Run(ctx)
//
// Inbox.Handle is the same without a consumer: Duplicate replays the stored
// result, Conflict (same key, different fingerprint) returns an error wrapping consumer.ErrConflict,
// a result with Failed set is a business failure that is committed and
// replayed, and any error rolls back. Ids of messages added without one are
// derived from the causing message's id and their position (WithCause), so
// a retried handler emits the same ids; the causation id and W3C trace
// context travel in headers.
//
// Inbox.BatchHandler runs the messages a transport fetched together
// (natsjs.NewBatch: up to BatchSize, default 250) in one transaction: one statement claims every key (sqlstore.ClaimManyTx),
// handlers run for the keys acquired, one statement completes them, the
// batch's outbox rows go in with one multi-row insert, the transaction
// commits once, and the transport acks only after it. If any handler fails or
// panics, the transaction is rolled back and the batch runs again with a
// SAVEPOINT per message, so a failing message is rolled back alone and
// retried or dead-lettered by the consumer pipeline's rules while the
// others commit. A batch handler must therefore keep all its work inside
// the transaction: it may run twice in one batch attempt.
//
// # On pgx
//
// A program that talks to Postgres through pgx rather than database/sql
// uses the same tables and guarantees: sqlstore.NewOn(ctx,
// pgxconn.Pool(pool), …) for the store, NewOn(ctx, pgxconn.Pool(pool), …)
// for the outbox, Inbox.PgxHandler(pool, fn) with fn(ctx, pgx.Tx, msg) for
// the handler, and Outbox.AddIn(ctx, pgxconn.Tx(tx), msgs…) inside it (see
// package dedupe/sqlstore/pgxconn). NewInbox then takes a nil *sql.DB. The
// relay still reads the table through database/sql (pgx's stdlib driver).
// Batches (BatchHandler) are database/sql only.
//
// # The relay
//
// Postgres: a round claims up to BatchSize due pending rows in sequence
// order with SELECT ... FOR UPDATE SKIP LOCKED in a transaction held for
// the round, so relays (and a relay's Workers) take disjoint rows; the rows
// are published asynchronously and, while their PubAcks are awaited, the
// transaction marks them all sent (unless DeleteSent), puts back the rows
// whose publish did not succeed once the answers are in, and commits: the
// marks become visible only with the PubAcks in hand. On nats.go's own
// JetStream context the rows go out on its connection with reply subjects
// of the relay's, whose PubAcks one subscription reads (JetStreamPublisher),
// at a fraction of PublishMsgAsync's client CPU. AddTx signals
// pg_notify, delivered at commit; relays LISTEN
// (reconnecting on failure) and also poll every PollInterval (1s). SQLite:
// one round at a time under BEGIN IMMEDIATE, polling every 100ms.
//
// Coalesced wake-ups (Postgres): Postgres commits the transactions that
// NOTIFY one at a time (a database-wide lock held through the commit's WAL
// flush), which caps producers at one commit per flush. So while rows keep
// coming (rounds that find rows at most 5ms apart), one relay takes an
// advisory lock that says it is awake and its workers claim every
// millisecond without being woken; AddTx, seeing the lock held, skips the
// NOTIFY, and its commit joins the others' WAL flushes. A writer that
// skipped holds a second, shared advisory lock until its transaction ends;
// a relay that has found no rows for 50ms releases the awake lock, waits
// until it can take the second one exclusively (every such writer has
// committed or rolled back) and claims once more, so no row waits for the
// poll. Writers that look meanwhile NOTIFY. Both locks are keyed by the
// table's oid; the awake one is held on a connection of its own (taken
// from db, or to ListenURL), and dies with it.
//
// Draining a backlog: after a claim that fills a whole batch (BatchSize,
// default 2000), the next claim starts just past it, so it does not walk
// the index entries of rows already sent that Postgres has not cleaned up
// yet. A claim above that floor that comes back short is followed at once
// by a claim over all rows, and one runs at least every PollInterval, so a
// row committed late below the floor waits at most PollInterval.
// RelayConfig.DeleteSent deletes rows on their PubAck instead of marking
// them sent: cheaper for Postgres, but sent rows are not kept for Retention
// and a re-added id is then caught only by the stream's Duplicates window.
//
// Ordering: rows with the same OrderingKey are published in sequence order.
// A claimed row is published only if every older pending row of its key is
// in the same round (checked against committed state, so another relay's
// in-flight rows — still pending until its commit — block it), and within a
// round a key's next row is sent only after the previous one's PubAck. A
// row in backoff blocks the later rows of its key; a row rejected
// permanently is marked failed and does not. Sequence order is insertion
// order; rows of one key written by concurrent transactions are ordered by
// sequence, not by commit, so serialise such producers (lock the entity row)
// if their order matters.
//
// Failures: a broker rejection that will not change (no stream for the
// subject, message too large; see Permanent) marks the row failed with
// last_error, visible with List and Counts and requeued with Requeue; other
// errors leave it pending with backoff, forever. Sent rows are deleted after
// Retention (7 days) in batches.
//
// Dedupe window: every stream the relay publishes to must keep message ids
// (StreamConfig.Duplicates, default 2 minutes) for at least
// RedeliveryHorizon — PublishTimeout + the backoff cap + PollInterval +
// CrashAllowance, about 66s with defaults. Run fails with
// ErrDuplicatesWindow for a listed stream (RelayConfig.Streams) whose window
// is shorter, and logs a warning for any other stream it publishes to.
package outbox
