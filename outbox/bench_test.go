package outbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Benchmarks on real Postgres and NATS (IDEMQ_POSTGRES_URL, IDEMQ_NATS_URL).
// Each reports its figure and its baseline measured in the same run, and the
// ratio, as custom metrics. Run them one iteration at a time:
//
//	go test -run '^$' -bench . -benchtime 1x ./outbox/

// benchInput publishes n messages with distinct Idempotency-Keys to a fresh
// stream and returns its name.
func benchInput(b *testing.B, env *harness.NATSEnv, name string, n int) string {
	b.Helper()
	stream := env.Name(name)
	createStream(b, env.JS, jetstream.StreamConfig{Name: stream, Subjects: []string{env.Subject(name + ".>")}})
	for i := range n {
		m := nats.NewMsg(env.Subject(name + ".pay"))
		m.Header.Set("Idempotency-Key", fmt.Sprint(name, "-", i))
		m.Data = []byte(`{"amount":100,"from":"acc-1","to":"acc-2"}`)
		if _, err := env.JS.PublishMsgAsync(m); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-env.JS.PublishAsyncComplete():
	case <-time.After(30 * time.Second):
		b.Fatal("input publish did not complete")
	}
	return stream
}

// drained waits until the durable on stream has nothing pending or unacked.
func drained(b *testing.B, ctx context.Context, js jetstream.JetStream, stream, durable string) {
	b.Helper()
	for {
		c, err := js.Consumer(ctx, stream, durable)
		if err == nil {
			info, err := c.Info(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if info.NumPending == 0 && info.NumAckPending == 0 && info.Delivered.Consumer > 0 {
				return
			}
		}
		if ctx.Err() != nil {
			b.Fatal("consumer did not drain in time")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// benchHandler is the work of one message: a non-idempotent write and one
// outgoing message, in the inbox transaction.
func benchHandler(ob *outbox.Outbox) outbox.MessageFunc {
	return func(ctx context.Context, tx *sql.Tx, m *consumer.Message) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO effects (k, v) VALUES ($1, $2)`, m.Header["Idempotency-Key"][0], "debit"); err != nil {
			return err
		}
		return ob.AddTx(ctx, tx, outbox.Message{Subject: "payments.completed", Data: m.Data})
	}
}

// inboxBenchN is the messages each mode of BenchmarkInboxBatchVsPerMessage
// consumes: the same for both, so that both do equal work.
const inboxBenchN = 10000

// BenchmarkInboxBatchVsPerMessage compares the batch consumer
// (consumer/natsjs NewBatch with Inbox.BatchHandler and the defaults: 4
// batches at once of up to 250 messages, each one transaction with claims
// and completions in one statement each and outbox rows in one insert) with
// one transaction per message (consumer/natsjs New with Inbox.Handler and
// the default Concurrency, 64 handlers at once), on the same handler and
// inboxBenchN messages each, in the same run; the order of the two
// alternates between iterations. Each is timed from the consumer's Ready
// (start-up checks done, durable and dead-letter stream created, pulling
// started) until the durable has nothing pending or unacknowledged; a
// message handled before Ready is not counted. It also reports the database
// statements (round trips) per message of each, counted by a driver
// wrapper, which do not depend on how loaded the machine is.
func BenchmarkInboxBatchVsPerMessage(b *testing.B) {
	var batchRate, singleRate, batchStmts, singleStmts float64
	for i := 0; i < b.N; i++ {
		pg := harness.Postgres(b)
		env := harness.NATS(b)
		db, rt := countingDB(b, pg)
		e := newInboxEnv(b, db, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)

		single := func() {
			in := benchInput(b, env, "SINGLE"+strconv.Itoa(i), inboxBenchN)
			r, st := runInboxBench(b, ctx, env, rt, in, env.Name("single"), func(cfg natsjs.Config, fn outbox.MessageFunc) (*natsjs.Consumer, error) {
				return natsjs.New(env.JS, cfg, e.in.Handler(fn))
			}, benchHandler(e.ob))
			singleRate += r
			singleStmts += st
		}
		batch := func() {
			in := benchInput(b, env, "BATCH"+strconv.Itoa(i), inboxBenchN)
			r, st := runInboxBench(b, ctx, env, rt, in, env.Name("batch"), func(cfg natsjs.Config, fn outbox.MessageFunc) (*natsjs.Consumer, error) {
				return natsjs.NewBatch(env.JS, cfg, e.in.BatchHandler(fn))
			}, benchHandler(e.ob))
			batchRate += r
			batchStmts += st
		}
		if i%2 == 0 {
			single()
			batch()
		} else {
			batch()
			single()
		}
		var effects int
		if err := pg.DB.QueryRowContext(ctx, `SELECT COUNT(*) FROM effects`).Scan(&effects); err != nil || effects != 2*inboxBenchN {
			b.Fatalf("effects = %d (%v), want %d", effects, err, 2*inboxBenchN)
		}
		cancel()
	}
	b.ReportMetric(batchRate/float64(b.N), "batch_msg/s")
	b.ReportMetric(singleRate/float64(b.N), "per_msg_tx_msg/s")
	b.ReportMetric(batchRate/singleRate, "batch/per_msg")
	b.ReportMetric(batchStmts/float64(b.N), "batch_stmts/msg")
	b.ReportMetric(singleStmts/float64(b.N), "per_msg_stmts/msg")
}

// runInboxBench consumes stream (inboxBenchN messages) with the consumer
// newConsumer builds on the durable and fn, and returns the messages per
// second and database statements per message from Ready to drained.
func runInboxBench(b *testing.B, ctx context.Context, env *harness.NATSEnv, rt *roundTrips, stream, durable string,
	newConsumer func(natsjs.Config, outbox.MessageFunc) (*natsjs.Consumer, error), fn outbox.MessageFunc) (rate, stmtsPerMsg float64) {
	b.Helper()
	var handled atomic.Int64
	c, err := newConsumer(natsjs.Config{
		Stream: stream, Durable: durable, DeadLetter: benchDLQ(env),
		Pipeline: consumer.Config{Logger: quiet},
	}, func(ctx context.Context, tx *sql.Tx, m *consumer.Message) error {
		handled.Add(1)
		return fn(ctx, tx, m)
	})
	if err != nil {
		b.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	select {
	case <-c.Ready():
	case err := <-done:
		b.Fatalf("Run returned before Ready: %v", err)
	}
	start := time.Now()
	early := handled.Load()
	stmts0, _ := rt.snapshot()
	drained(b, ctx, env.JS, stream, durable)
	elapsed := time.Since(start)
	stmts1, _ := rt.snapshot()
	stop()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	work := float64(inboxBenchN - early)
	return work / elapsed.Seconds(), float64(stmts1-stmts0) / work
}

// benchDLQ is the benchmarks' dead-letter stream, created at Run.
func benchDLQ(env *harness.NATSEnv) natsjs.DeadLetterConfig {
	return natsjs.DeadLetterConfig{Subject: env.Subject("dlq.x"), Stream: env.Name("DLQ"), StreamSubjects: []string{env.Subject("dlq.>")}}
}
