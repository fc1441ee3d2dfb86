package chaos

import (
	"context"
	"database/sql"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
)

// TestRelayStreamLookupBounded shows a relay round that hangs on a
// JetStream API request nobody answers, for as long as Relay.Run's context
// lives.
//
// When no stream answered a publish ("no responders", "no response from
// stream"), outbox.JetStreamPublisher.confirmNoStream (outbox/publisher.go)
// asks js.StreamNameBySubject with the relay's own context. nats.go bounds
// an API request by its DefaultTimeout (5s) only when the context has no
// deadline; Run's context usually has none, but when it has one (a relay
// run with a time budget, a test) the request waits until that deadline. A
// cluster leaves API requests unanswered while it elects a meta leader
// after a node is killed: TestRelayClusterLeaderKill, with a 4-minute
// deadline on Run's context, had all six relay workers of its three
// relays blocked there for minutes while thousands of rows stayed
// pending. The lookup should be bounded (by PublishTimeout, say), whatever
// the caller's deadline.
//
// The test makes the API unanswered with a jetstream context on an API
// prefix whose requests a core subscription swallows, and publishes a row
// to a subject no stream captures, so the relay asks. The round must end
// and the row be retried (the lookup's failure is an outage, not a
// verdict) within 20s; today the round waits for the context's 10-minute
// deadline.
func TestRelayStreamLookupBounded(t *testing.T) {
	t.Parallel()
	env := harness.EmbeddedNATS(t)
	pg := harness.Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	const prefix = "swallowed.API"
	if _, err := env.Conn.Subscribe(prefix+".>", func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.NewWithAPIPrefix(env.Conn, prefix)
	if err != nil {
		t.Fatal(err)
	}
	ob, err := outbox.New(ctx, pg.DB, outbox.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if err := inTx(ctx, pg.DB, func(tx *sql.Tx) error {
		return ob.AddTx(ctx, tx, outbox.Message{ID: "ev-1", Subject: env.Subject("nostream.created"), Data: []byte(`{}`)})
	}); err != nil {
		t.Fatal(err)
	}
	relay, err := outbox.NewRelay(pg.DB, outbox.JetStream(js), outbox.RelayConfig{
		PublishTimeout: time.Second,
		Logger:         slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	// A deadline far away, as a relay run with a time budget has.
	rctx, stop := context.WithTimeout(context.Background(), 10*time.Minute)
	done := make(chan error, 1)
	go func() { done <- relay.Run(rctx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("relay: %v", err)
		}
	}()

	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) && relay.Stats().Retried == 0 {
		sleepCtx(ctx, 100*time.Millisecond)
	}
	if st := relay.Stats(); st.Retried == 0 {
		t.Errorf("20s after a publish no stream answered, the relay has not finished the round (%+v): it waits for its stream lookup (StreamNameBySubject) until Run's context ends", st)
	}
	counts, err := ob.Counts(ctx, pg.DB)
	if err != nil {
		t.Fatal(err)
	}
	if counts[outbox.StateFailed] != 0 {
		t.Errorf("outbox rows %v: a row was marked failed although the JetStream API never said that no stream captures its subject", counts)
	}
}
