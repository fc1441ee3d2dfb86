package outbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
	"github.com/idemq/idemq/retry"
)

// relayRecorder records what a RelayObserver is told.
type relayRecorder struct {
	mu      sync.Mutex
	started map[string]int
	ended   map[string]outbox.PublishResult
	lags    map[string]time.Duration
	rounds  []outbox.RelayRound
}

type spanKey struct{}

func (r *relayRecorder) StartPublish(ctx context.Context, m *outbox.Outgoing) context.Context {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started == nil {
		r.started = map[string]int{}
	}
	r.started[m.ID]++
	if m.Header == nil {
		m.Header = map[string][]string{}
	}
	m.Header["X-Observed"] = []string{"publish-" + m.ID}
	return context.WithValue(ctx, spanKey{}, m.ID)
}

func (r *relayRecorder) EndPublish(ctx context.Context, m *outbox.Outgoing, res outbox.PublishResult, lag time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ctx.Value(spanKey{}) != m.ID {
		panic("EndPublish without StartPublish's context")
	}
	if r.ended == nil {
		r.ended, r.lags = map[string]outbox.PublishResult{}, map[string]time.Duration{}
	}
	r.ended[m.ID] = res
	r.lags[m.ID] = lag
}

func (r *relayRecorder) Round(_ context.Context, rr outbox.RelayRound) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.rounds = append(r.rounds, rr)
}

// The observer sees each row's publish with its lag, may add headers that
// the published message carries, and gets the round's committed counts.
func TestRelayObserver(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *sql.DB) {
		ctx := ctxT(t)
		e := newRelayEnv(t, db, harness.EmbeddedNATS(t))
		var msgs []outbox.Message
		for i := range 5 {
			msgs = append(msgs, outbox.Message{ID: fmt.Sprint("obs-", i), Subject: e.subj("x"), Data: []byte(fmt.Sprint(i))})
		}
		msgs = append(msgs,
			outbox.Message{ID: "nostream", Subject: e.nats.Subject("nowhere.x")},
			outbox.Message{ID: "flaky", Subject: e.subj("x"), Data: []byte("flaky")})
		add(t, ctx, db, e.ob, msgs...)
		time.Sleep(5 * time.Millisecond) // a lag that cannot round to zero

		rec := &relayRecorder{}
		js := &flakyJS{JetStream: e.nats.JS, fail: map[string]bool{"flaky": true}}
		// The flaky row's backoff outlasts the test: the second round finds
		// nothing due.
		r := e.relay(t, js, &outbox.RelayConfig{Observer: rec, Backoff: retry.Constant(time.Hour)})
		if _, _, err := outbox.Round(ctx, r); err != nil {
			t.Fatal(err)
		}
		if len(rec.rounds) != 1 {
			t.Fatalf("rounds %+v, want 1", rec.rounds)
		}
		got := rec.rounds[0]
		if got.Claimed != 7 || got.Published != 5 || got.Duplicates != 0 || got.Failed != 1 || got.Retried != 1 || got.Err != nil || got.Duration <= 0 {
			t.Errorf("round %+v, want 7 claimed, 5 published, 1 failed, 1 retried", got)
		}
		for _, m := range msgs {
			if rec.started[m.ID] != 1 {
				t.Errorf("%s: started %d times, want 1", m.ID, rec.started[m.ID])
			}
		}
		for i := range 5 {
			id := fmt.Sprint("obs-", i)
			if res := rec.ended[id]; res.Err != nil || res.Stream == "" {
				t.Errorf("%s: result %+v, want acknowledged", id, res)
			}
			if rec.lags[id] < 5*time.Millisecond {
				t.Errorf("%s: lag %v, want at least the 5ms the row waited", id, rec.lags[id])
			}
		}
		if res := rec.ended["nostream"]; !res.Rejected || rec.lags["nostream"] != 0 {
			t.Errorf("nostream: %+v lag %v, want rejected without lag", res, rec.lags["nostream"])
		}
		if res := rec.ended["flaky"]; res.Err == nil || res.Rejected {
			t.Errorf("flaky: %+v, want a transient error", res)
		}
		for _, m := range streamMsgs(t, ctx, e.stream) {
			if id := m.Header.Get("Nats-Msg-Id"); m.Header.Get("X-Observed") != "publish-"+id {
				t.Errorf("message %s published with X-Observed %q, want the observer's header", id, m.Header.Get("X-Observed"))
			}
		}

		// A round that finds nothing due (the flaky row waits out its
		// backoff) is not reported.
		if _, _, err := outbox.Round(ctx, r); err != nil {
			t.Fatal(err)
		}
		if len(rec.rounds) != 1 {
			t.Errorf("an empty round was reported: %+v", rec.rounds[1:])
		}
	})
}

// A round that cannot reach the database is reported with its error.
func TestRelayObserverSeesFailedRound(t *testing.T) {
	db := openSQLite(t)
	ctx := ctxT(t)
	e := newRelayEnv(t, db, harness.EmbeddedNATS(t))
	rec := &relayRecorder{}
	r := e.relay(t, nil, &outbox.RelayConfig{Observer: rec})
	_ = db.Close()
	if _, _, err := outbox.Round(ctx, r); err == nil {
		t.Fatal("a round on a closed database succeeded")
	}
	if len(rec.rounds) != 1 || rec.rounds[0].Err == nil || rec.rounds[0].Claimed != 0 {
		t.Fatalf("rounds %+v, want one failed round", rec.rounds)
	}
}
