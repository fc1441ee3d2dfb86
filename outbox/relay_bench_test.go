package outbox_test

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Relay benchmarks on real Postgres and NATS (IDEMQ_POSTGRES_URL,
// IDEMQ_NATS_URL), one iteration at a time:
//
//	go test -run '^$' -bench 'Relay|CommitToPublish' -benchtime 1x ./outbox/

// BenchmarkRelayVsRawPublish compares draining committed outbox rows through
// the relay with raw JetStream async publishing of the same messages (with
// Nats-Msg-Id) on the same connection. Raw publishing is measured before and
// after the relay and averaged, so that a change in the machine's load
// during the run weighs on both sides alike. The sub-benchmarks run the
// relay with default options (2 workers, rows marked sent), with 4 workers,
// and with 4 workers and DeleteSent.
func BenchmarkRelayVsRawPublish(b *testing.B) {
	b.Run("default", func(b *testing.B) { benchRelayVsRaw(b, outbox.RelayConfig{}) })
	b.Run("workers4", func(b *testing.B) { benchRelayVsRaw(b, outbox.RelayConfig{Workers: 4}) })
	b.Run("workers4_delete_sent", func(b *testing.B) { benchRelayVsRaw(b, outbox.RelayConfig{Workers: 4, DeleteSent: true}) })
}

func benchRelayVsRaw(b *testing.B, opts outbox.RelayConfig) {
	const n = 20000
	var relayRate, rawRate float64
	for i := 0; i < b.N; i++ {
		pg := harness.Postgres(b)
		env := harness.NATS(b)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		createStream(b, env.JS, jetstream.StreamConfig{Name: env.Name("RAW"), Subjects: []string{env.Subject("raw.>")}})
		createStream(b, env.JS, jetstream.StreamConfig{Name: env.Name("REL"), Subjects: []string{env.Subject("rel.>")}})
		data := []byte(`{"payment_id":"p-1","amount":100,"currency":"GBP"}`)
		raw := func(pass int) float64 {
			start := time.Now()
			for j := range n {
				m := &nats.Msg{Subject: env.Subject("raw.x"), Data: data, Header: nats.Header{}}
				if _, err := env.JS.PublishMsgAsync(m, jetstream.WithMsgID(fmt.Sprint("raw-", pass, "-", j))); err != nil {
					b.Fatal(err)
				}
			}
			<-env.JS.PublishAsyncComplete()
			return n / time.Since(start).Seconds()
		}

		ob, err := outbox.New(ctx, pg.DB, outbox.Config{})
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
		o := opts
		o.Logger = quiet
		r, err := outbox.NewRelay(pg.DB, outbox.JetStream(env.JS), o)
		if err != nil {
			b.Fatal(err)
		}
		before := raw(0)
		start := time.Now()
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
		rawRate += (before + raw(1)) / 2
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
		ob, err := outbox.New(ctx, pg.DB, outbox.Config{})
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
		r, err := outbox.NewRelay(pg.DB, outbox.JetStream(env.JS), outbox.RelayConfig{Logger: quiet})
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
