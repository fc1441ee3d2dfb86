package chaos

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
)

// asyncWindow is the PublishAsyncMaxPending of the relay's jetstream
// context in TestRelayRecoversAfterUnansweredPublishes.
const asyncWindow = 400

// TestRelayRecoversAfterUnansweredPublishes checks that a relay keeps
// publishing after many of its publishes got no answer at all. On a
// cluster that happens to every publish in flight to a stream leader that
// dies (TestRelayClusterLeaderKill), and to publishes routed to a node
// that holds the subject's interest but will not reply.
//
// Through nats.go's PublishMsgAsync, an unanswered publish keeps its
// PubAckFuture in the jetstream context's pending map unless the context
// was created with jetstream.WithPublishAsyncTimeout (nats.go drops pending
// futures only when the connection reconnects), so each one leaked a slot
// of the async window (PublishAsyncMaxPending, 4000 by default); once it
// was full every publish waited PublishTimeout for a slot and failed, and
// kept failing after the stream answered again. outbox.JetStreamPublisher
// now publishes on nats.go's own context with reply subjects of its own
// (an unanswered publish just times out; there is no window), and through
// a context of the same connection WithPublishAsyncTimeout when it must use
// PublishMsgAsync.
//
// The test makes many publishes go unanswered quickly — a core
// subscription swallows the relay's publishes (the subject has interest,
// nobody replies) — and then replaces it with a real stream: every row
// must then be published.
func TestRelayRecoversAfterUnansweredPublishes(t *testing.T) {
	t.Parallel()
	env := harness.EmbeddedNATS(t)
	pg := harness.Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	subject := env.Subject("events.created")
	swallow, err := env.Conn.Subscribe(env.Subject("events.>"), func(*nats.Msg) {})
	if err != nil {
		t.Fatal(err)
	}
	ob, err := outbox.New(ctx, pg.DB, outbox.Config{})
	if err != nil {
		t.Fatal(err)
	}
	const rows = 300
	if err := inTx(ctx, pg.DB, func(tx *sql.Tx) error {
		for i := range rows {
			if err := ob.AddTx(ctx, tx, outbox.Message{ID: fmt.Sprintf("ev-%05d", i), Subject: subject, Data: []byte(`{}`)}); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	nc, err := nats.Connect(env.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// A small async window, so that the test fills it quickly; the
	// default (4000) fills the same way, 2000 rows a round.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(asyncWindow))
	if err != nil {
		t.Fatal(err)
	}
	relay, err := outbox.NewRelay(pg.DB, outbox.JetStream(js), outbox.RelayConfig{
		BatchSize:      rows, // at most the window, as RelayConfig.BatchSize asks
		PublishTimeout: 100 * time.Millisecond,
		Logger:         slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- relay.Run(rctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("relay: %v", err)
		}
	}()

	// The outage: publishes reach a subscriber that never answers, until
	// the relay has retried every row twice, or its async window is full,
	// whichever comes first.
	if err := retryFor(ctx, "wait for retried publishes", func(context.Context) error {
		if r, p := relay.Stats().Retried, js.PublishAsyncPending(); r < 2*rows && p < asyncWindow {
			return fmt.Errorf("%d publishes retried, %d unanswered", r, p)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := swallow.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	stream := env.Name("EVENTS")
	if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{env.Subject("events.>")}, Duplicates: 10 * time.Minute}); err != nil {
		t.Fatal(err)
	}
	pendingAtRecovery := js.PublishAsyncPending()
	t.Logf("outage over after %d retried publishes; the relay's jetstream context holds %d unanswered async publishes", relay.Stats().Retried, pendingAtRecovery)

	// The stream answers now: every row must be published.
	deadline := time.Now().Add(20 * time.Second)
	var counts map[outbox.State]int64
	for time.Now().Before(deadline) {
		if counts, err = ob.Counts(ctx, pg.DB); err == nil && counts[outbox.StateSent] == rows {
			break
		}
		sleepCtx(ctx, 200*time.Millisecond)
	}
	if counts[outbox.StateSent] != rows {
		info, _ := streamInfo(ctx, env.JS, stream)
		var msgs uint64
		if info != nil {
			msgs = info.State.Msgs
		}
		t.Errorf("20s after the stream answers again: outbox rows %v of %d, stream holds %d; the relay's async window holds %d unanswered publishes (max %d): "+
			"the relay is stalled for good (outbox.JetStreamPublisher never frees the PubAckFutures it stopped waiting for)",
			counts, rows, msgs, js.PublishAsyncPending(), asyncWindow)
	}
}
