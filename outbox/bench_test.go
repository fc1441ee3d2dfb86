package outbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"slices"
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

// BenchmarkInboxBatchVsPerMessage compares the batch consumer (one
// transaction per up to 100 messages, a savepoint each) with one
// transaction per message (consumer/natsjs with Inbox.Handler, 2×GOMAXPROCS
// concurrent handlers), on the same handler, in the same run.
func BenchmarkInboxBatchVsPerMessage(b *testing.B) {
	const batchN, singleN = 20000, 4000
	var batchRate, singleRate float64
	for i := 0; i < b.N; i++ {
		pg := harness.Postgres(b)
		env := harness.NATS(b)
		e := newInboxEnv(b, pg.DB, nil)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)

		// One transaction per message.
		in := benchInput(b, env, "SINGLE"+strconv.Itoa(i), singleN)
		c, err := natsjs.New(env.JS, natsjs.Config{
			Stream: in, Durable: env.Name("single"), DeadLetter: natsjs.DeadLetterConfig{Subject: env.Subject("dlq.x")},
			Pipeline: consumer.Config{Logger: quiet},
		}, e.in.Handler(benchHandler(e.ob)))
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- c.Run(rctx) }()
		drained(b, ctx, env.JS, in, env.Name("single"))
		singleRate += singleN / time.Since(start).Seconds()
		stop()
		if err := <-done; err != nil {
			b.Fatal(err)
		}

		// Batches.
		in = benchInput(b, env, "BATCH"+strconv.Itoa(i), batchN)
		bc, err := outbox.NewBatch(e.in, env.JS, outbox.BatchConfig{
			Stream: in, Durable: env.Name("batch"), BatchSize: 100,
			DeadLetter: natsjs.DeadLetterConfig{Subject: env.Subject("dlq.x")}, Logger: quiet,
		}, benchHandler(e.ob))
		if err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		rctx, stop = context.WithCancel(ctx)
		go func() { done <- bc.Run(rctx) }()
		drained(b, ctx, env.JS, in, env.Name("batch"))
		batchRate += batchN / time.Since(start).Seconds()
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
}

// BenchmarkRelayVsRawPublish compares draining committed outbox rows through
// the relay with raw JetStream async publishing of the same messages (with
// Nats-Msg-Id) on the same connection.
func BenchmarkRelayVsRawPublish(b *testing.B) {
	const n = 20000
	var relayRate, rawRate float64
	for i := 0; i < b.N; i++ {
		pg := harness.Postgres(b)
		env := harness.NATS(b)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		createStream(b, env.JS, jetstream.StreamConfig{Name: env.Name("RAW"), Subjects: []string{env.Subject("raw.>")}})
		createStream(b, env.JS, jetstream.StreamConfig{Name: env.Name("REL"), Subjects: []string{env.Subject("rel.>")}})
		data := []byte(`{"payment_id":"p-1","amount":100,"currency":"GBP"}`)

		start := time.Now()
		for j := range n {
			m := &nats.Msg{Subject: env.Subject("raw.x"), Data: data, Header: nats.Header{}}
			if _, err := env.JS.PublishMsgAsync(m, jetstream.WithMsgID(fmt.Sprint("raw-", j))); err != nil {
				b.Fatal(err)
			}
		}
		<-env.JS.PublishAsyncComplete()
		rawRate += n / time.Since(start).Seconds()

		ob, err := outbox.New(ctx, pg.DB, nil)
		if err != nil {
			b.Fatal(err)
		}
		msgs := make([]outbox.Message, 0, 1000)
		for j := range n {
			msgs = append(msgs, outbox.Message{ID: fmt.Sprint("rel-", j), Subject: env.Subject("rel.x"), Data: data})
			if len(msgs) == cap(msgs) {
				add(b, ctx, pg.DB, ob, msgs...)
				msgs = msgs[:0]
			}
		}
		r, err := outbox.NewRelay(pg.DB, env.JS, &outbox.RelayOptions{Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		start = time.Now()
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		for r.Stats().Published < n {
			time.Sleep(time.Millisecond)
		}
		relayRate += n / time.Since(start).Seconds()
		stop()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		cancel()
	}
	b.ReportMetric(relayRate/float64(b.N), "relay_msg/s")
	b.ReportMetric(rawRate/float64(b.N), "raw_async_msg/s")
	b.ReportMetric(relayRate/rawRate, "relay/raw")
}

// BenchmarkCommitToPublishLatency commits one outbox row per millisecond
// (1k msg/s) for 3s and measures, for each, the time from the producer's
// commit returning to the message arriving at a NATS subscriber on its
// subject, with the relay woken by LISTEN/NOTIFY (polling fallback 1s).
func BenchmarkCommitToPublishLatency(b *testing.B) {
	const rate, seconds = 1000, 3
	var all []time.Duration
	for i := 0; i < b.N; i++ {
		pg := harness.Postgres(b)
		env := harness.NATS(b)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		createStream(b, env.JS, jetstream.StreamConfig{Name: env.Name("LAT"), Subjects: []string{env.Subject("lat.>")}})
		ob, err := outbox.New(ctx, pg.DB, nil)
		if err != nil {
			b.Fatal(err)
		}
		const n = rate * seconds
		committed := make([]atomic.Int64, n)
		lat := make([]time.Duration, 0, n)
		got := make(chan time.Duration, n)
		sub, err := env.Conn.Subscribe(env.Subject("lat.x"), func(m *nats.Msg) {
			j, _ := strconv.Atoi(string(m.Data))
			now := time.Now().UnixNano()
			for committed[j].Load() == 0 { // the commit call has not returned yet
				time.Sleep(10 * time.Microsecond)
			}
			got <- time.Duration(now - committed[j].Load())
		})
		if err != nil {
			b.Fatal(err)
		}
		r, err := outbox.NewRelay(pg.DB, env.JS, &outbox.RelayOptions{Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		time.Sleep(200 * time.Millisecond) // LISTEN established

		tick := time.NewTicker(time.Second / rate)
		for j := range n {
			<-tick.C
			tx, err := pg.DB.BeginTx(ctx, nil)
			if err != nil {
				b.Fatal(err)
			}
			if err := ob.AddTx(ctx, tx, outbox.Message{ID: fmt.Sprint("lat-", j), Subject: env.Subject("lat.x"), Data: []byte(strconv.Itoa(j))}); err != nil {
				b.Fatal(err)
			}
			if err := tx.Commit(); err != nil {
				b.Fatal(err)
			}
			committed[j].Store(time.Now().UnixNano())
		}
		tick.Stop()
		for range n {
			select {
			case d := <-got:
				lat = append(lat, d)
			case <-ctx.Done():
				b.Fatal("messages missing")
			}
		}
		_ = sub.Unsubscribe()
		stop()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		all = append(all, lat...)
		cancel()
	}
	slices.Sort(all)
	q := func(p float64) float64 { return float64(all[int(p*float64(len(all)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.50), "p50_ms")
	b.ReportMetric(q(0.99), "p99_ms")
	b.ReportMetric(q(1), "max_ms")
}
