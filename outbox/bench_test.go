package outbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"strconv"
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

// BenchmarkInboxBatchVsPerMessage compares the batch consumer (one
// transaction per up to BatchSize messages, claims and completions in one
// statement each, outbox rows in one insert) with one transaction per
// message (consumer/natsjs with Inbox.Handler, 2×GOMAXPROCS concurrent
// handlers), on the same handler, in the same run. It also reports the
// database statements (round trips) per message of each, counted by a
// driver wrapper, which do not depend on how loaded the machine is.
func BenchmarkInboxBatchVsPerMessage(b *testing.B) {
	const batchN, singleN = 20000, 4000
	var batchRate, singleRate, batchStmts, singleStmts float64
	for i := 0; i < b.N; i++ {
		pg := harness.Postgres(b)
		env := harness.NATS(b)
		db, rt := countingDB(b, pg)
		e := newInboxEnv(b, db, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)

		// One transaction per message.
		in := benchInput(b, env, "SINGLE"+strconv.Itoa(i), singleN)
		c, err := natsjs.New(env.JS, natsjs.Config{
			Stream: in, Durable: env.Name("single"), DeadLetter: benchDLQ(env),
			Pipeline: consumer.Config{Logger: quiet},
		}, e.in.Handler(benchHandler(e.ob)))
		if err != nil {
			b.Fatal(err)
		}
		stmts0, _ := rt.snapshot()
		start := time.Now()
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- c.Run(rctx) }()
		drained(b, ctx, env.JS, in, env.Name("single"))
		singleRate += singleN / time.Since(start).Seconds()
		stmts1, _ := rt.snapshot()
		singleStmts += float64(stmts1-stmts0) / singleN
		stop()
		if err := <-done; err != nil {
			b.Fatal(err)
		}

		// Batches.
		in = benchInput(b, env, "BATCH"+strconv.Itoa(i), batchN)
		bc, err := natsjs.NewBatch(env.JS, natsjs.Config{
			Stream: in, Durable: env.Name("batch"), // BatchSize and Concurrency: the defaults
			DeadLetter: benchDLQ(env),
			Pipeline:   consumer.Config{Logger: quiet},
		}, e.in.BatchHandler(benchHandler(e.ob)))
		if err != nil {
			b.Fatal(err)
		}
		stmts0, _ = rt.snapshot()
		start = time.Now()
		rctx, stop = context.WithCancel(ctx)
		go func() { done <- bc.Run(rctx) }()
		drained(b, ctx, env.JS, in, env.Name("batch"))
		batchRate += batchN / time.Since(start).Seconds()
		stmts1, _ = rt.snapshot()
		batchStmts += float64(stmts1-stmts0) / batchN
		stop()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		var effects int
		if err := pg.DB.QueryRowContext(ctx, `SELECT COUNT(*) FROM effects`).Scan(&effects); err != nil || effects != batchN+singleN {
			b.Fatalf("effects = %d (%v), want %d", effects, err, batchN+singleN)
		}
		cancel()
	}
	b.ReportMetric(batchRate/float64(b.N), "batch_msg/s")
	b.ReportMetric(singleRate/float64(b.N), "per_msg_tx_msg/s")
	b.ReportMetric(batchRate/singleRate, "batch/per_msg")
	b.ReportMetric(batchStmts/float64(b.N), "batch_stmts/msg")
	b.ReportMetric(singleStmts/float64(b.N), "per_msg_stmts/msg")
}

// benchDLQ is the benchmarks' dead-letter stream, created at Run.
func benchDLQ(env *harness.NATSEnv) natsjs.DeadLetterConfig {
	return natsjs.DeadLetterConfig{Subject: env.Subject("dlq.x"), Stream: env.Name("DLQ"), StreamSubjects: []string{env.Subject("dlq.>")}}
}
