package outbox_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
	"github.com/idemq/idemq/retry"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// A relay killed after its PubAcks and before marking the rows sent: the
// next relay publishes them again and the broker drops every copy.
func TestRelayCrashAfterPublishDedupedByBroker(t *testing.T) {
	pg := harness.Postgres(t)
	ctx := ctxT(t)
	e := newRelayEnv(t, pg.DB, harness.NATS(t))
	const n = 50
	var msgs []outbox.Message
	for i := range n {
		msgs = append(msgs, outbox.Message{ID: fmt.Sprint("crash-", i), Subject: e.subj("x"), Data: []byte(strconv.Itoa(i))})
	}
	add(t, ctx, pg.DB, e.ob, msgs...)

	killed := errors.New("kill -9")
	first := e.relay(t, nil, nil)
	var published []string
	outbox.SetAfterPublish(first, func(ids []string) error { published = ids; return killed })
	if err := first.Run(ctx); !errors.Is(err, killed) || !errors.Is(err, outbox.ErrHook) {
		t.Fatalf("first Run = %v, want the kill", err)
	}
	if len(published) != n {
		t.Fatalf("first relay published %d rows before dying, want %d", len(published), n)
	}
	if c := counts(t, ctx, pg.DB, e.ob); c[outbox.StatePending] != n {
		t.Fatalf("after the kill: %v, want all pending", c)
	}

	second := e.relay(t, nil, nil)
	stop := runRelay(t, second)
	eventually(t, 20*time.Second, "rows sent", func() (bool, error) {
		return counts(t, ctx, pg.DB, e.ob)[outbox.StateSent] == n, nil
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if st := second.Stats(); st.Published != n || st.Duplicates != n {
		t.Fatalf("second relay stats = %+v, want %d published, all duplicates", st, n)
	}
	if got := len(streamMsgs(t, ctx, e.stream)); got != n {
		t.Fatalf("stream holds %d messages, want exactly %d", got, n)
	}
}

// Three relays at once: every row published exactly once, per-key order
// kept, while producers keep adding rows.
func TestThreeRelaysShareWorkAndKeepKeyOrder(t *testing.T) {
	pg := harness.Postgres(t)
	ctx := ctxT(t)
	e := newRelayEnv(t, pg.DB, harness.NATS(t))
	const producers, keysPer, perKey = 4, 3, 100 // 1200 keyed rows
	const unkeyed = 300
	relays := make([]*outbox.Relay, 3)
	for i := range relays {
		// Relay 0 publishes slowly, so the others would overtake it if
		// ordering keys were not guarded.
		var js jetstream.JetStream
		if i == 0 {
			js = &slowJS{JetStream: e.nats.JS, delay: time.Millisecond}
		}
		relays[i] = e.relay(t, js, &outbox.RelayConfig{BatchSize: 40})
		runRelay(t, relays[i])
	}
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for seq := range perKey {
				var msgs []outbox.Message
				for k := range keysPer {
					key := fmt.Sprintf("p%d-k%d", p, k)
					msgs = append(msgs, outbox.Message{ID: fmt.Sprintf("%s-%d", key, seq), Subject: e.subj(key), OrderingKey: key, Data: []byte(strconv.Itoa(seq))})
				}
				if seq < unkeyed/producers {
					msgs = append(msgs, outbox.Message{ID: fmt.Sprintf("free-%d-%d", p, seq), Subject: e.subj("free")})
				}
				tx, err := pg.DB.BeginTx(ctx, nil)
				if err != nil {
					t.Error(err)
					return
				}
				if err := e.ob.AddTx(ctx, tx, msgs...); err != nil {
					_ = tx.Rollback()
					t.Error(err)
					return
				}
				if err := tx.Commit(); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	const total = producers*keysPer*perKey + unkeyed
	eventually(t, 30*time.Second, "all rows sent", func() (bool, error) {
		return counts(t, ctx, pg.DB, e.ob)[outbox.StateSent] == total, nil
	})
	// The counters move just after the commit the counts above see: wait
	// for them too, then check they add up exactly.
	var sum int64
	eventually(t, 10*time.Second, "the relays' counters", func() (bool, error) {
		sum = 0
		for _, r := range relays {
			sum += r.Stats().Published
		}
		return sum >= total, nil
	})
	for i, r := range relays {
		t.Logf("relay %d: %+v", i, r.Stats())
	}
	if sum != total {
		t.Fatalf("relays marked %d rows sent, want %d", sum, total)
	}
	msgs := streamMsgs(t, ctx, e.stream)
	if len(msgs) != total {
		t.Fatalf("stream holds %d messages, want %d", len(msgs), total)
	}
	last := map[string]int{}
	seen := map[string]bool{}
	for _, m := range msgs {
		id := m.Header.Get(nats.MsgIdHdr)
		if seen[id] {
			t.Fatalf("id %s published twice", id)
		}
		seen[id] = true
		if m.Subject == e.subj("free") {
			continue
		}
		n, _ := strconv.Atoi(string(m.Data))
		if prev, ok := last[m.Subject]; ok && n != prev+1 {
			t.Fatalf("key %s: message %d follows %d", m.Subject, n, prev)
		}
		if _, ok := last[m.Subject]; !ok && n != 0 {
			t.Fatalf("key %s starts at %d", m.Subject, n)
		}
		last[m.Subject] = n
	}
}

// Postgres goes away mid-run (every connection cut, new ones refused, then
// back): the batch consumer and the relay recover, nothing is lost, nothing
// is applied or published twice.
func TestPostgresOutageRecovery(t *testing.T) {
	pg := harness.Postgres(t)
	ctx := ctxT(t)
	env := harness.NATS(t)
	proxy := newTCPProxy(t, "127.0.0.1:5432")
	db, err := sql.Open("pgx", viaProxy(t, pg.URL, proxy.Addr()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	if err := db.PingContext(ctx); err != nil {
		harness.Unavailable(t, "postgres: cannot reach it through the proxy (not on 127.0.0.1:5432?): %v", err)
	}

	e := newBatchEnv(t, db, env)
	out := createStream(t, env.JS, jetstream.StreamConfig{Name: env.Name("OUT"), Subjects: []string{env.Subject("out.>")}})
	handler := func(ctx context.Context, tx *sql.Tx, m *consumer.Message) error {
		if err := e.effect(ctx, tx, m.Header["Idempotency-Key"][0], "v"); err != nil {
			return err
		}
		return e.ob.AddTx(ctx, tx, outbox.Message{Subject: env.Subject("out.done"), Data: m.Data})
	}
	b, err := natsjs.NewBatch(env.JS, natsjs.Config{
		Stream: e.stream, Durable: env.Name("batch"), BatchSize: 20, AckWait: 2 * time.Second,
		DeadLetter: natsjs.DeadLetterConfig{Subject: env.Subject("dlq.in"), Stream: env.Name("DLQ"), RetryDelay: 500 * time.Millisecond},
		Pipeline: consumer.Config{
			Retry:  retry.Policy{MaxAttempts: 100, Backoff: retry.Constant(100 * time.Millisecond)},
			Logger: quiet,
		},
	}, e.in.BatchHandler(handler))
	if err != nil {
		t.Fatal(err)
	}
	relay, err := outbox.NewRelay(db, outbox.JetStream(env.JS), outbox.RelayConfig{
		Backoff: retry.Exponential{Initial: 20 * time.Millisecond, Max: 300 * time.Millisecond}, PollInterval: 200 * time.Millisecond, Logger: quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	stopBatch := runBatch(t, b)
	stopRelay := runRelay(t, relay)

	const n = 300
	for i := range n {
		e.publish(t, ctx, fmt.Sprint("m", i), fmt.Sprint("k", i), strconv.Itoa(i))
		switch i {
		case 100:
			proxy.Cut()
		case 150:
			time.Sleep(300 * time.Millisecond) // the outage lasts at least this long
			proxy.Restore()
		}
		if i%10 == 0 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	direct := pg.DB
	eventually(t, 40*time.Second, "every message applied and relayed", func() (bool, error) {
		var applied, sent int
		if err := direct.QueryRowContext(ctx, `SELECT COUNT(DISTINCT k) FROM effects`).Scan(&applied); err != nil {
			return false, err
		}
		if err := direct.QueryRowContext(ctx, `SELECT COUNT(*) FROM idemq_outbox WHERE state = 'sent'`).Scan(&sent); err != nil {
			return false, err
		}
		return applied == n && sent == n, nil
	})
	eventually(t, 20*time.Second, "input settled", func() (bool, error) { return e.settled(ctx) })
	if err := stopBatch(); err != nil {
		t.Fatal(err)
	}
	if err := stopRelay(); err != nil {
		t.Fatal(err)
	}
	var rows, keys int
	if err := direct.QueryRowContext(ctx, `SELECT COUNT(*), COUNT(DISTINCT k) FROM effects`).Scan(&rows, &keys); err != nil {
		t.Fatal(err)
	}
	if rows != n || keys != n {
		t.Fatalf("effects: %d rows over %d keys, want %d once each", rows, keys, n)
	}
	got := streamMsgs(t, ctx, out)
	if len(got) != n {
		t.Fatalf("output stream holds %d messages, want %d", len(got), n)
	}
	t.Logf("relay stats after outage: %+v", relay.Stats())
}

// slowJS delays every async publish.
type slowJS struct {
	jetstream.JetStream
	delay time.Duration
}

func (s *slowJS) PublishMsgAsync(m *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	time.Sleep(s.delay)
	return s.JetStream.PublishMsgAsync(m, opts...)
}

// With DeleteSent, acknowledged rows are deleted instead of marked sent;
// rejected and retried rows stay, and a row killed between publish and
// delete is published again and dropped by the broker.
func TestRelayDeleteSent(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *sql.DB) {
		ctx := ctxT(t)
		e := newRelayEnv(t, db, harness.EmbeddedNATS(t))
		var msgs []outbox.Message
		for i := range 30 {
			msgs = append(msgs, outbox.Message{ID: fmt.Sprint("del-", i), Subject: e.subj("x"), Data: []byte(strconv.Itoa(i)), OrderingKey: fmt.Sprint("k", i%3)})
		}
		msgs = append(msgs,
			outbox.Message{ID: "nostream", Subject: e.nats.Subject("nowhere.x")},
			outbox.Message{ID: "flaky", Subject: e.subj("x"), Data: []byte("flaky")})
		add(t, ctx, db, e.ob, msgs...)

		js := &flakyJS{JetStream: e.nats.JS, fail: map[string]bool{"flaky": true}}
		killed := errors.New("kill -9")
		first := e.relay(t, js, &outbox.RelayConfig{DeleteSent: true})
		outbox.SetAfterPublish(first, func([]string) error { return killed })
		if _, _, err := outbox.Round(ctx, first); !errors.Is(err, killed) {
			t.Fatalf("first round = %v, want the kill", err)
		}
		if c := counts(t, ctx, db, e.ob); c[outbox.StatePending] != 32 {
			t.Fatalf("after the kill: %v, want all 32 pending", c)
		}

		// The flaky row waits out a long backoff after its first failure: a later
		// round that found only it due would fail as "broker not answering".
		r := e.relay(t, js, &outbox.RelayConfig{DeleteSent: true, BatchSize: 7, Backoff: retry.Constant(time.Hour)})
		for range 10 {
			if _, _, err := outbox.Round(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		c := counts(t, ctx, db, e.ob)
		if c[outbox.StateSent] != 0 || c[outbox.StateFailed] != 1 || c[outbox.StatePending] != 1 {
			t.Fatalf("counts = %v, want 1 failed, 1 pending, none kept as sent", c)
		}
		got := streamMsgs(t, ctx, e.stream)
		if len(got) != 30 {
			t.Fatalf("stream holds %d messages, want 30", len(got))
		}
		last := map[string]int{}
		for _, m := range got {
			i, err := strconv.Atoi(string(m.Data))
			if err != nil {
				t.Fatal(err)
			}
			k := fmt.Sprint("k", i%3)
			if prev, ok := last[k]; ok && prev > i {
				t.Fatalf("key %s: %d published after %d", k, i, prev)
			}
			last[k] = i
		}
		if st := r.Stats(); st.Published != 30 || st.Duplicates != 30 || st.Failed != 1 || st.Retried == 0 {
			t.Fatalf("stats = %+v, want 30 published (all duplicates of the killed round), 1 failed, retries", st)
		}
	})
}

// A backlog of many batches is drained by several workers with polling
// practically off: the wake-up at LISTEN time starts them, and a worker
// whose round claimed a full batch goes on without waiting.
func TestRelayBacklogDrainedWithoutPolling(t *testing.T) {
	pg := harness.Postgres(t)
	ctx := ctxT(t)
	e := newRelayEnv(t, pg.DB, harness.NATS(t))
	const n = 400
	var msgs []outbox.Message
	for i := range n {
		msgs = append(msgs, outbox.Message{ID: fmt.Sprint("bl-", i), Subject: e.subj("x"), Data: []byte(strconv.Itoa(i))})
	}
	add(t, ctx, pg.DB, e.ob, msgs...)
	// Each publish is slowed down, so the workers' rounds overlap;
	// PollInterval is long, so only LISTEN and full batches start rounds.
	r := e.relay(t, &slowJS{JetStream: e.nats.JS, delay: 200 * time.Microsecond}, &outbox.RelayConfig{Workers: 4, BatchSize: 20, PollInterval: time.Hour})
	stop := runRelay(t, r)
	eventually(t, 20*time.Second, "backlog sent", func() (bool, error) {
		return counts(t, ctx, pg.DB, e.ob)[outbox.StateSent] == n, nil
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if st := r.Stats(); st.Published != n || st.Duplicates != 0 || st.Rounds < n/20 {
		t.Fatalf("stats = %+v", st)
	}
	if got := len(streamMsgs(t, ctx, e.stream)); got != n {
		t.Fatalf("stream holds %d messages, want %d", got, n)
	}
}

// A row committed while a backlog drains, with a lower seq than the rows
// already relayed (its transaction began first), is still relayed: claims
// during the drain start above the last full batch, and a claim that finds
// less than a batch there is followed by one over all rows. One worker,
// no LISTEN and polling practically off: nothing else would find the row.
func TestRelayLateCommitBelowBacklogIsRelayed(t *testing.T) {
	pg := harness.Postgres(t)
	ctx := ctxT(t)
	e := newRelayEnv(t, pg.DB, harness.NATS(t))
	late, err := pg.DB.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = late.Rollback() }()
	if err := e.ob.AddTx(ctx, late, outbox.Message{ID: "late", Subject: e.subj("x"), Data: []byte("late")}); err != nil {
		t.Fatal(err)
	}
	const n = 1000
	var msgs []outbox.Message
	for i := range n {
		msgs = append(msgs, outbox.Message{ID: fmt.Sprint("bl-", i), Subject: e.subj("x"), Data: []byte(strconv.Itoa(i))})
	}
	add(t, ctx, pg.DB, e.ob, msgs...)
	r := e.relay(t, &slowJS{JetStream: e.nats.JS, delay: 200 * time.Microsecond}, &outbox.RelayConfig{Workers: 1, BatchSize: 20, PollInterval: time.Hour, NoListen: true})
	stop := runRelay(t, r)
	// Each publish takes at least 200µs, so the late row commits after the
	// first batch and long before the backlog is drained.
	eventually(t, 20*time.Second, "first batch sent", func() (bool, error) {
		return r.Stats().Published > 0, nil
	})
	if err := late.Commit(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 20*time.Second, "backlog and late row sent", func() (bool, error) {
		return counts(t, ctx, pg.DB, e.ob)[outbox.StateSent] == n+1, nil
	})
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if got := len(streamMsgs(t, ctx, e.stream)); got != n+1 {
		t.Fatalf("stream holds %d messages, want %d", got, n+1)
	}
}
