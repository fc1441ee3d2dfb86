package outage_test

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

// TestRelayBrokerRestart kills the relay's NATS server (its own
// nats-server process) while rows are written and published, and restarts
// it: every row is published once, none is marked failed. While the server
// is down or recovering its streams the publishes fail with timeouts and
// "no responders": an outage, not a verdict.
func TestRelayBrokerRestart(t *testing.T) {
	t.Parallel()
	pg := harness.Postgres(t)
	np := startNATS(t)
	nc, err := nats.Connect("nats://"+np.addr, nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "EVENTS", Subjects: []string{"events.>"}, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	ob, err := outbox.New(ctx, pg.DB, outbox.Config{})
	if err != nil {
		t.Fatal(err)
	}
	logs := newLogCounter(t)
	r, err := outbox.NewRelay(pg.DB, outbox.JetStream(js), outbox.RelayConfig{Logger: slog.New(logs), PublishTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stopRelay := context.WithCancel(ctx)
	relayDone := make(chan error, 1)
	go func() { relayDone <- r.Run(rctx) }()

	const rows = 2000
	written := make(chan error, 1)
	go func() {
		for i := range rows {
			err := inTx(ctx, pg.DB, func(tx *sql.Tx) error {
				return ob.AddTx(ctx, tx, outbox.Message{ID: fmt.Sprintf("ev-%05d", i), Subject: "events.created", Data: []byte(`{}`)})
			})
			if err != nil {
				written <- err
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
		written <- nil
	}()
	time.Sleep(time.Second)
	np.kill()
	down := scaled(5*time.Second, 3*time.Second)
	t.Logf("nats-server killed for %v", down)
	time.Sleep(down)
	np.start()
	if err := <-written; err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	var counts map[outbox.State]int64
	for time.Now().Before(deadline) {
		if counts, err = ob.Counts(ctx, pg.DB); err == nil && counts[outbox.StateSent] == rows {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	stopRelay()
	if err := <-relayDone; err != nil {
		t.Errorf("relay: %v", err)
	}
	if counts[outbox.StateSent] != rows || counts[outbox.StateFailed] != 0 || counts[outbox.StatePending] != 0 {
		t.Fatalf("outbox rows %v, want all %d sent and none failed", counts, rows)
	}
	s, err := js.Stream(ctx, "EVENTS")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != rows {
		t.Fatalf("stream holds %d messages for %d rows, want each once", info.State.Msgs, rows)
	}
	st := r.Stats()
	t.Logf("%d rows published once through a broker restart: %d publish failures retried, %d duplicates dropped by the broker, %d failed",
		rows, st.Retried, st.Duplicates, st.Failed)
}

func inTx(ctx context.Context, db *sql.DB, fn func(*sql.Tx) error) error {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		_ = tx.Rollback()
		return err
	}
	return tx.Commit()
}
