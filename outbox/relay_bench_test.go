package outbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
	"github.com/jackc/pgx/v5"
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
// and with 4 workers and DeleteSent. Where the services run on this host,
// each also reports the CPU time per message, from /proc, of the relay's
// Postgres backends (relay_pg_us/msg), of Postgres's own processes
// (relay_pgaux_us/msg), of nats-server and of the benchmark process, in
// the relay phase and in the raw phases: on a machine without spare cores
// the ratio follows the CPU each side needs. The raw side is nats.go's
// PublishMsgAsync; the relay publishes on the connection with PubAcks read
// by a subscription of its own (JetStreamPublisher), whose client CPU per
// message is below PublishMsgAsync's, so relay_self_us/msg includes the
// claim and the mark's client side and still comes out at or below
// raw_self_us/msg.
func BenchmarkRelayVsRawPublish(b *testing.B) {
	b.Run("default", func(b *testing.B) { benchRelayVsRaw(b, outbox.RelayConfig{}) })
	b.Run("workers4", func(b *testing.B) { benchRelayVsRaw(b, outbox.RelayConfig{Workers: 4}) })
	b.Run("workers4_delete_sent", func(b *testing.B) { benchRelayVsRaw(b, outbox.RelayConfig{Workers: 4, DeleteSent: true}) })
}

func benchRelayVsRaw(b *testing.B, opts outbox.RelayConfig) {
	const n = 20000
	var relayRate, rawRate float64
	var relayCPU, rawCPU cpuSample
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
				// Wait for room in the async window as long as the
				// relay's publisher does (PublishTimeout), instead of
				// nats.go's 200ms, which a loaded machine exceeds.
				if _, err := env.JS.PublishMsgAsync(m, jetstream.WithMsgID(fmt.Sprint("raw-", pass, "-", j)),
					jetstream.WithStallWait(outbox.DefaultPublishTimeout)); err != nil {
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
		// The relay's own pool, named, so that its backends' CPU can be
		// told from other sessions', and warmed as the producers' pool
		// is: the relay does not pay for connection set-up.
		app := fmt.Sprint("idemq_relay_bench_", os.Getpid(), "_", i)
		rdb, err := sql.Open("pgx", pg.URL+"&application_name="+app)
		if err != nil {
			b.Fatal(err)
		}
		warmPool(b, ctx, rdb, 2) // database/sql's default MaxIdleConns
		o := opts
		o.Logger = quiet
		r, err := outbox.NewRelay(rdb, outbox.JetStream(env.JS), o)
		if err != nil {
			b.Fatal(err)
		}
		warm, aux, err := pgPIDs(ctx, pg.DB, app)
		if err != nil {
			b.Fatal(err)
		}
		c0 := sampleCPU(nil, aux)
		before := raw(0)
		c1 := sampleCPU(warm, aux)
		start := time.Now()
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		for r.Stats().Published < n {
			time.Sleep(time.Millisecond)
		}
		relayRate += n / time.Since(start).Seconds()
		// The relay's backends: the warmed ones, and those opened since
		// (whose whole CPU time is the relay phase's).
		backends, _, err := pgPIDs(ctx, pg.DB, app)
		if err != nil {
			b.Fatal(err)
		}
		c2 := sampleCPU(backends, aux)
		stop()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		_ = rdb.Close()
		c3 := sampleCPU(nil, aux)
		after := raw(1)
		c4 := sampleCPU(nil, aux)
		rawRate += (before + after) / 2
		relayCPU = relayCPU.add(c2.sub(c1))
		rawCPU = rawCPU.add(c1.sub(c0).add(c4.sub(c3)))
		cancel()
	}
	b.ReportMetric(relayRate/float64(b.N), "relay_msg/s")
	b.ReportMetric(rawRate/float64(b.N), "raw_async_msg/s")
	b.ReportMetric(relayRate/rawRate, "relay/raw")
	if relayCPU.ok && rawCPU.ok {
		// CPU per message in each phase, in microseconds (raw: the mean of
		// its two passes), at /proc's 10ms resolution.
		per := func(d time.Duration, msgs int) float64 { return float64(d.Microseconds()) / float64(msgs) }
		b.ReportMetric(per(relayCPU.pg, n*b.N), "relay_pg_us/msg")
		b.ReportMetric(per(relayCPU.pgAux, n*b.N), "relay_pgaux_us/msg")
		b.ReportMetric(per(relayCPU.nats, n*b.N), "relay_nats_us/msg")
		b.ReportMetric(per(relayCPU.self, n*b.N), "relay_self_us/msg")
		b.ReportMetric(per(rawCPU.nats, 2*n*b.N), "raw_nats_us/msg")
		b.ReportMetric(per(rawCPU.self, 2*n*b.N), "raw_self_us/msg")
	}
}

// warmPool opens n connections of db at once and returns them to its pool.
func warmPool(b *testing.B, ctx context.Context, db *sql.DB, n int) {
	b.Helper()
	conns := make([]*sql.Conn, n)
	for k := range conns {
		c, err := db.Conn(ctx)
		if err != nil {
			b.Fatal(err)
		}
		conns[k] = c
	}
	for _, c := range conns {
		_ = c.Close()
	}
}

// Shape of BenchmarkCommitToPublishLatency's load.
const (
	// latRate is the commits per second the producers are scheduled at.
	latRate = 1000
	// latSeconds is how long they produce.
	latSeconds = 3
	// latProducers is the number of producer goroutines (each with its own
	// connection from the pool). One producer committing serially does not
	// reach 1k commits a second with fsync on, so several share one
	// schedule: message j is due at j/latRate seconds after the start, and
	// whichever producer is free takes the next message, sleeps until it is
	// due (not at all when behind) and commits it. No message is dropped or
	// rescheduled, so a producer that falls behind catches up. 4 kept the
	// rate closest to the schedule's with the least queueing inside Commit
	// in a sweep of 4, 8 and 16 on the loaded 2-core machine.
	latProducers = 4
)

// BenchmarkCommitToPublishLatency commits one outbox row per message on a
// fixed schedule of latRate per second for latSeconds, from latProducers
// goroutines, and measures for each message the time from the start of its
// transaction's Commit call to its arrival at a NATS subscriber on its
// subject, with the relay woken by LISTEN/NOTIFY or awake (polling
// fallback 1s).
// The commit call's start is the earliest moment the row can become
// visible, so the latency is never negative; it includes the commit itself
// (reported apart as commit_p50_ms and commit_p99_ms).
//
// It reports p50_ms, p99_ms and max_ms of that latency; producer_msg/s, the
// commit rate achieved (messages over the time from the schedule's start to
// the last commit returning), to be read against the latRate it aims at;
// behind_max_ms, how late after its due time the latest commit started; and
// early_frac, the fraction of messages that arrived before their Commit
// call had returned (the relay may publish before the producer's driver
// returns); and notify_frac, the fraction of commits that sent a NOTIFY
// (the others found a relay awake; see "Coalesced wake-ups").
func BenchmarkCommitToPublishLatency(b *testing.B) {
	const n = latRate * latSeconds
	var lat, commit []time.Duration
	var rates []float64
	var behind time.Duration
	var early, notifies int
	for i := 0; i < b.N; i++ {
		pg := harness.Postgres(b)
		env := harness.NATS(b)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		createStream(b, env.JS, jetstream.StreamConfig{Name: env.Name("LAT"), Subjects: []string{env.Subject("lat.>")}})
		// A channel of this run's own, so that the notifications counted
		// below are this run's.
		channel := strings.ToLower(env.Name("lat"))
		ob, err := outbox.New(ctx, pg.DB, outbox.Config{Channel: channel})
		if err != nil {
			b.Fatal(err)
		}
		pg.DB.SetMaxIdleConns(latProducers)
		notified := countNotifications(b, ctx, pg.URL, pg.DB, channel)

		// Times are offsets from base on the monotonic clock. Each slot is
		// written by one goroutine and read after the producers and the
		// subscriber are done.
		base := time.Now()
		commitStart := make([]time.Duration, n)
		commitEnd := make([]time.Duration, n)
		arrival := make([]time.Duration, n)
		var arrived int
		allArrived := make(chan struct{})
		// One subscription's callbacks run one at a time, so arrival and
		// arrived need no lock. A message the relay publishes twice (at
		// least once) counts at its first arrival.
		sub, err := env.Conn.Subscribe(env.Subject("lat.x"), func(m *nats.Msg) {
			now := time.Since(base)
			j, err := strconv.Atoi(string(m.Data))
			if err != nil || j < 0 || j >= n || arrival[j] != 0 {
				return
			}
			arrival[j] = now
			if arrived++; arrived == n {
				close(allArrived)
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		r, err := outbox.NewRelay(pg.DB, outbox.JetStream(env.JS), outbox.RelayConfig{Channel: channel, Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		rctx, stop := context.WithCancel(ctx)
		done := make(chan error, 1)
		go func() { done <- r.Run(rctx) }()
		time.Sleep(200 * time.Millisecond) // LISTEN established

		// Warm the pool so that connection set-up is not in the schedule.
		warm := make([]*sql.Conn, latProducers)
		for k := range warm {
			if warm[k], err = pg.DB.Conn(ctx); err != nil {
				b.Fatal(err)
			}
		}
		for _, c := range warm {
			_ = c.Close()
		}

		var next atomic.Int64
		errs := make(chan error, latProducers)
		var wg sync.WaitGroup
		start := time.Since(base)
		for range latProducers {
			wg.Go(func() {
				for {
					j := int(next.Add(1) - 1)
					if j >= n {
						return
					}
					due := start + time.Duration(j)*time.Second/latRate
					if d := due - time.Since(base); d > 0 {
						time.Sleep(d)
					}
					tx, err := pg.DB.BeginTx(ctx, nil)
					if err != nil {
						errs <- err
						return
					}
					if err := ob.AddTx(ctx, tx, outbox.Message{ID: fmt.Sprint("lat-", j), Subject: env.Subject("lat.x"), Data: []byte(strconv.Itoa(j))}); err != nil {
						_ = tx.Rollback()
						errs <- err
						return
					}
					commitStart[j] = time.Since(base)
					if err := tx.Commit(); err != nil {
						errs <- err
						return
					}
					commitEnd[j] = time.Since(base)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			b.Fatal(err)
		}
		select {
		case <-allArrived:
		case <-ctx.Done():
			b.Fatal("messages missing")
		}
		_ = sub.Unsubscribe()
		notifies += notified()
		stop()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		cancel()

		last := start
		for j := range n {
			d := arrival[j] - commitStart[j]
			if d < 0 {
				b.Fatalf("message %d arrived %v before its commit started", j, -d)
			}
			lat = append(lat, d)
			commit = append(commit, commitEnd[j]-commitStart[j])
			if arrival[j] < commitEnd[j] {
				early++
			}
			last = max(last, commitEnd[j])
			due := start + time.Duration(j)*time.Second/latRate
			behind = max(behind, commitStart[j]-due)
		}
		rates = append(rates, float64(n)/(last-start).Seconds())
	}
	q := func(xs []time.Duration, p float64) float64 {
		return float64(xs[int(p*float64(len(xs)-1))].Microseconds()) / 1000
	}
	slices.Sort(lat)
	slices.Sort(commit)
	slices.Sort(rates)
	b.ReportMetric(q(lat, 0.50), "p50_ms")
	b.ReportMetric(q(lat, 0.99), "p99_ms")
	b.ReportMetric(q(lat, 1), "max_ms")
	b.ReportMetric(q(commit, 0.50), "commit_p50_ms")
	b.ReportMetric(q(commit, 0.99), "commit_p99_ms")
	b.ReportMetric(rates[0], "producer_msg/s") // the slowest iteration's
	b.ReportMetric(float64(behind.Microseconds())/1000, "behind_max_ms")
	b.ReportMetric(float64(early)/float64(len(lat)), "early_frac")
	b.ReportMetric(float64(notifies)/float64(len(lat)), "notify_frac")
}

// countNotifications LISTENs on channel through its own connection until
// the returned function is called, which returns how many notifications
// arrived before it was called (each a commit that signalled): it sends a
// marker through db, which Postgres queues after every commit already made,
// and counts up to it.
func countNotifications(b *testing.B, ctx context.Context, url string, db *sql.DB, channel string) func() int {
	b.Helper()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		b.Fatal(err)
	}
	count := make(chan int, 1)
	go func() {
		n := 0
		for {
			m, err := conn.WaitForNotification(ctx)
			if err != nil || m.Payload == "end" {
				count <- n
				return
			}
			n++
		}
	}()
	return func() int {
		defer func() { _ = conn.Close(context.Background()) }()
		if _, err := db.ExecContext(ctx, "SELECT pg_notify($1, 'end')", channel); err != nil {
			b.Fatal(err)
		}
		return <-count
	}
}
