package chaos

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
	"github.com/idemq/idemq/retry"
)

// TestInboxDatabaseOutage started as a failing test of the transactional inbox
// dead-lettering messages as "exhausted" because its database was down for
// longer than the retry policy's backoff, where store dedupe would pause.
//
// A consumer on the inbox runs without a dedupe.Guard (outbox.Inbox.Handler:
// the inbox is the dedupe), so consumer.Pipeline.Process counts attempts as
// deliveries (consumer/pipeline.go, the no-guard branch of Process) and the
// inbox's failure to begin its transaction (outbox/inbox.go, Handle: "inbox
// begin") comes back as an ordinary handler error: every delivery while the
// database is down uses an attempt, the consumer never pauses
// (Outcome.Unavailable is only set for a Guard's failed claim), and after
// Retry.MaxAttempts deliveries the message is dead-lettered as exhausted,
// its effect never applied. The README's "When a dependency is down"
// promises for the dedupe store — no attempt used, the consumer pauses and
// probes, nothing dead-lettered — do not hold when the store is the inbox's
// database, the mode documented as "exactly once, crash anywhere".
//
// TestPaymentsChaos hit it with the examples/payments worker's own policy
// (8 attempts, 200ms doubling to 10s, full jitter) and a 5s Postgres
// outage: a payment request was dead-lettered "exhausted" after 8
// deliveries ("outbox: inbox begin: … connection refused"). This test
// runs that policy on one in-process server and a Postgres of its own,
// stopped (immediate mode) for 10s while 40 messages wait: every message
// must be applied once and none dead-lettered.
func TestInboxDatabaseOutage(t *testing.T) {
	t.Parallel()
	env := harness.EmbeddedNATS(t)
	pg := harness.StartPostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	db, err := sql.Open("pgx", pg.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `CREATE TABLE effects (k text NOT NULL)`); err != nil {
		t.Fatal(err)
	}
	store, err := sqlstore.New(ctx, db, sqlstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	inbox, err := outbox.NewInbox(db, outbox.InboxConfig{Guard: &dedupe.Guard{Store: store, Key: dedupe.HeaderKey(headerKey)}})
	if err != nil {
		t.Fatal(err)
	}
	stream, dlq := env.Name("EVENTS"), env.Name("DLQ")
	if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{env.Subject("events.>")}}); err != nil {
		t.Fatal(err)
	}
	cons, err := natsjs.New(env.JS, natsjs.Config{
		Stream: stream, Durable: "worker", Concurrency: 4,
		DeadLetter: natsjs.DeadLetterConfig{Subject: env.Subject("dlq.events"), Stream: dlq, StreamSubjects: []string{env.Subject("dlq.>")}},
		// The examples/payments worker's policy (workerRetry).
		Pipeline: consumer.Config{
			Retry:  retry.Policy{MaxAttempts: 8, Backoff: retry.Exponential{Initial: 200 * time.Millisecond, Max: 10 * time.Second}},
			Logger: slog.New(slog.DiscardHandler),
		},
	}, inbox.Handler(func(ctx context.Context, tx *sql.Tx, m *consumer.Message) error {
		_, err := tx.ExecContext(ctx, `INSERT INTO effects (k) VALUES ($1)`, http.Header(m.Header).Get(headerKey))
		return err
	}))
	if err != nil {
		t.Fatal(err)
	}
	cctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- cons.Run(cctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("consumer: %v", err)
		}
	}()

	publish := func(from, to int) {
		for i := from; i < to; i++ {
			msg := nats.NewMsg(env.Subject("events.created"))
			msg.Header.Set(headerKey, fmt.Sprintf("k-%03d", i))
			msg.Data = []byte(`{}`)
			if _, err := env.JS.PublishMsg(ctx, msg); err != nil {
				t.Fatal(err)
			}
		}
	}
	effects := func() (n int) {
		_ = db.QueryRowContext(ctx, `SELECT count(*) FROM effects`).Scan(&n)
		return n
	}
	const before, during = 10, 40
	publish(0, before)
	if err := retryFor(ctx, "apply the first messages", func(context.Context) error {
		if n := effects(); n != before {
			return fmt.Errorf("%d effects", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	if err := pg.Stop(harness.PostgresImmediate); err != nil {
		t.Fatal(err)
	}
	publish(before, before+during)
	sleepCtx(ctx, 10*time.Second)
	if err := pg.Start(ctx); err != nil {
		t.Fatal(err)
	}

	// Wait until every message is applied or dead-lettered.
	var applied int
	var letters uint64
	if err := retryFor(ctx, "settle", func(ctx context.Context) error {
		applied = effects()
		info, err := streamInfo(ctx, env.JS, dlq)
		if err != nil {
			return err
		}
		letters = info.State.Msgs
		if uint64(applied)+letters < before+during {
			return fmt.Errorf("%d applied, %d dead letters", applied, letters)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if letters != 0 || applied != before+during {
		reasons := map[string]int{}
		if err := readStream(ctx, env.JS, dlq, func(m jetstream.Msg) { reasons[m.Headers().Get(headerReason)]++ }); err != nil {
			t.Error(err)
		}
		t.Errorf("after a 10s database outage: %d of %d messages applied, %d dead-lettered (%s); want all applied and none dead-lettered, as with a dedupe store that does not answer",
			applied, before+during, letters, formatCounts(reasons))
	}
}
