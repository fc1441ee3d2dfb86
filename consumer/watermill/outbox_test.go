package idemqwm_test

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmjs "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/jetstream"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	_ "modernc.org/sqlite"

	idemqwm "github.com/idemq/idemq/consumer/watermill"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
)

func openSQLite(t *testing.T) *sql.DB {
	t.Helper()
	path := filepath.Join(t.TempDir(), "outbox.db")
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

// addRows writes msgs to a fresh outbox in db in one transaction.
func addRows(t *testing.T, db *sql.DB, msgs ...outbox.Message) *outbox.Outbox {
	t.Helper()
	ctx := context.Background()
	ob, err := outbox.New(ctx, db, outbox.Config{})
	if err != nil {
		t.Fatal(err)
	}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := ob.AddTx(ctx, tx, msgs...); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	return ob
}

// runRelay runs outbox.NewRelay(db, pub, …) until the test ends.
func runRelay(t *testing.T, db *sql.DB, pub outbox.Publisher) *outbox.Relay {
	t.Helper()
	relay, err := outbox.NewRelay(db, pub, outbox.RelayConfig{PollInterval: 20 * time.Millisecond, Logger: quiet()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- relay.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("relay: %v", err)
		}
	})
	return relay
}

// The relay publishes outbox rows through watermill-nats to JetStream, on
// SQLite and Postgres: UUID = Nats-Msg-Id = row id, headers as metadata.
// Publishing the rows again (a relay that died before marking them sent)
// stores nothing new: JetStream drops the copies by Nats-Msg-Id.
func TestOutboxRelayToJetStreamDedupesRepublish(t *testing.T) {
	t.Parallel()
	for _, backend := range []struct {
		name string
		open func(t *testing.T) *sql.DB
	}{
		{"sqlite", openSQLite},
		{"postgres", func(t *testing.T) *sql.DB { return harness.Postgres(t).DB }},
	} {
		t.Run(backend.name, func(t *testing.T) {
			t.Parallel()
			env := harness.NATS(t)
			db := backend.open(t)
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			stream, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: env.Name("OUT"), Subjects: []string{env.Subject("out.>")}})
			if err != nil {
				t.Fatal(err)
			}
			wmpub, err := wmnats.NewPublisher(wmnats.PublisherConfig{
				URL:       env.URL,
				Marshaler: &wmnats.NATSMarshaler{},
				JetStream: wmnats.JetStreamConfig{TrackMsgId: true},
			}, watermill.NopLogger{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = wmpub.Close() })
			pub, err := idemqwm.NewOutboxPublisher(wmpub, idemqwm.OutboxConfig{})
			if err != nil {
				t.Fatal(err)
			}
			subject := env.Subject("out.completed")
			ids := []string{"completed.pay-1", "completed.pay-2", "completed.pay-3"}
			var msgs []outbox.Message
			for _, id := range ids {
				msgs = append(msgs, outbox.Message{ID: id, Subject: subject, Header: map[string][]string{"Idempotency-Key": {id}}, Data: []byte(`{"id":"` + id + `"}`)})
			}
			addRows(t, db, msgs...)
			relay := runRelay(t, db, pub)
			eventually(t, "three rows published", func() bool { return relay.Stats().Published == 3 })

			stored := map[string]bool{} // rows go out concurrently, in any order
			for seq := uint64(1); seq <= 3; seq++ {
				sm, err := stream.GetMsg(ctx, seq)
				if err != nil {
					t.Fatal(err)
				}
				id := sm.Header.Get("Nats-Msg-Id")
				if sm.Header.Get(wmnats.WatermillUUIDHdr) != id || sm.Header.Get("Idempotency-Key") != id || string(sm.Data) != `{"id":"`+id+`"}` {
					t.Fatalf("stored message %d: headers %v data %q; want the row id in Nats-Msg-Id, the UUID and Idempotency-Key", seq, sm.Header, sm.Data)
				}
				stored[id] = true
			}
			for _, id := range ids {
				if !stored[id] {
					t.Fatalf("row %s not in the stream (stored %v)", id, stored)
				}
			}

			out := make([]outbox.Outgoing, len(ids))
			for i, id := range ids {
				out[i] = outbox.Outgoing{ID: id, Subject: subject, Header: map[string][]string{"Idempotency-Key": {id}}, Data: []byte(`{"id":"` + id + `"}`)}
			}
			res := make([]outbox.PublishResult, len(out))
			if err := pub.Publish(ctx, out, res, 5*time.Second); err != nil {
				t.Fatal(err)
			}
			for i, r := range res {
				if r.Err != nil {
					t.Fatalf("republish %d: %v", i, r.Err)
				}
			}
			info, err := stream.Info(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if info.State.Msgs != 3 {
				t.Fatalf("stream holds %d messages after the republish, want 3", info.State.Msgs)
			}
		})
	}
}

// watermill-nats' pkg/jetstream publisher has no TrackMsgId, but it sends
// metadata as headers: OutboxConfig.IDMetadata "Nats-Msg-Id" makes
// JetStream drop the republished row all the same.
func TestOutboxIDMetadataDedupesOnPkgJetStream(t *testing.T) {
	t.Parallel()
	env := harness.NATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	stream, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: env.Name("OUT"), Subjects: []string{env.Subject("out.>")}})
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	wmpub, err := wmjs.NewPublisher(wmjs.PublisherConfig{Conn: nc, Logger: watermill.NopLogger{}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = wmpub.Close() }) // closes nc
	pub, err := idemqwm.NewOutboxPublisher(wmpub, idemqwm.OutboxConfig{IDMetadata: "Nats-Msg-Id"})
	if err != nil {
		t.Fatal(err)
	}
	row := []outbox.Outgoing{{ID: "completed.pay-1", Subject: env.Subject("out.completed"), Data: []byte(`{}`)}}
	res := make([]outbox.PublishResult, 1)
	for range 2 { // the publish, and a relay's republish after a crash
		if err := pub.Publish(ctx, row, res, 5*time.Second); err != nil || res[0].Err != nil {
			t.Fatalf("publish: %v %v", err, res[0].Err)
		}
	}
	info, err := stream.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Fatalf("stream holds %d messages, want 1", info.State.Msgs)
	}
}

// A pub/sub without broker dedupe (gochannel here; AMQP, SQL and Kafka
// alike) delivers a republished row twice; the consumer's guard, keyed by
// the UUID the relay set from the row id, applies it once.
func TestOutboxRepublishDedupedByConsumer(t *testing.T) {
	t.Parallel()
	db := openSQLite(t)
	gc := gochannel.NewGoChannel(gochannel.Config{Persistent: true, BlockPublishUntilSubscriberAck: true}, watermill.NopLogger{})
	t.Cleanup(func() { _ = gc.Close() })
	b := &bus{w: wiring{Kind: "gochannel", Topic: "out.completed", Poison: "poison"}, pub: gc, sub: gc}
	cfg := testConfig(b, nil)
	cfg.Pipeline.Guard = &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.MessageIDKey()}
	a, err := idemqwm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var applied atomic.Int32
	runRouter(t, gc, "out.completed", "downstream", a.NoPublishHandler(func(*message.Message) error { applied.Add(1); return nil }))
	pub, err := idemqwm.NewOutboxPublisher(gc, idemqwm.OutboxConfig{})
	if err != nil {
		t.Fatal(err)
	}
	addRows(t, db, outbox.Message{ID: "completed.pay-1", Subject: "out.completed", Data: []byte(`{}`)})
	relay := runRelay(t, db, pub)
	eventually(t, "the row published", func() bool { return relay.Stats().Published == 1 })
	res := make([]outbox.PublishResult, 1)
	if err := pub.Publish(context.Background(), []outbox.Outgoing{{ID: "completed.pay-1", Subject: "out.completed", Data: []byte(`{}`)}}, res, 5*time.Second); err != nil || res[0].Err != nil {
		t.Fatalf("republish: %v %v", err, res[0].Err)
	}
	if n := applied.Load(); n != 1 {
		t.Fatalf("downstream applied the row %d times, want 1", n)
	}
	if s := a.Stats(); s.Acked != 2 || s.Duplicates != 1 {
		t.Fatalf("stats %+v: want the republished copy acked as a duplicate", s)
	}
}

// blockingPublisher blocks every Publish until release is closed.
type blockingPublisher struct {
	release  chan struct{}
	returned chan struct{}
}

func (p *blockingPublisher) Publish(string, ...*message.Message) error {
	<-p.release
	p.returned <- struct{}{}
	return nil
}

func (p *blockingPublisher) Close() error { return nil }

func TestOutboxPublisherResults(t *testing.T) {
	t.Parallel()
	ctx := context.Background()

	// A header with two values cannot become metadata: rejected, so the
	// relay marks the row failed instead of publishing it altered. IDMetadata
	// copies the id.
	rec := &recorder{}
	pub, err := idemqwm.NewOutboxPublisher(rec, idemqwm.OutboxConfig{IDMetadata: "Nats-Msg-Id", Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	msgs := []outbox.Outgoing{
		{ID: "a", Subject: "s", Header: map[string][]string{"X": {"1", "2"}}},
		{ID: "b", Subject: "s", Header: map[string][]string{"X": {"1"}}, Data: []byte("b")},
	}
	res := make([]outbox.PublishResult, 2)
	if err := pub.Publish(ctx, msgs, res, time.Second); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(res[0].Err, idemqwm.ErrMultiValueHeader) || !res[0].Rejected {
		t.Fatalf("row a: %+v, want a rejection wrapping ErrMultiValueHeader", res[0])
	}
	got := rec.published()
	if res[1].Err != nil || len(got) != 1 || got[0].UUID != "b" || got[0].Metadata.Get("Nats-Msg-Id") != "b" || got[0].Metadata.Get("X") != "1" {
		t.Fatalf("row b: %+v, published %v; want it published with UUID b and metadata", res[1], got)
	}

	// A publish that does not return in time: ErrPublishTimeout, not
	// rejected (the relay retries it).
	bp := &blockingPublisher{release: make(chan struct{}), returned: make(chan struct{}, 1)}
	pub, err = idemqwm.NewOutboxPublisher(bp, idemqwm.OutboxConfig{})
	if err != nil {
		t.Fatal(err)
	}
	res = res[:1]
	if err := pub.Publish(ctx, msgs[1:], res, 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(res[0].Err, outbox.ErrPublishTimeout) || res[0].Rejected {
		t.Fatalf("blocked publish: %+v, want ErrPublishTimeout, not rejected", res[0])
	}
	close(bp.release)
	<-bp.returned // the late publish ends; nothing leaks

	if _, err := idemqwm.NewOutboxPublisher(nil, idemqwm.OutboxConfig{}); !errors.Is(err, idemqwm.ErrInvalidConfig) {
		t.Fatalf("NewOutboxPublisher(nil) = %v, want ErrInvalidConfig", err)
	}
}
