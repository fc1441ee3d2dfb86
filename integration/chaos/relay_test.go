package chaos

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
)

// clusterFlavours are the two NATS clusters of the harness.
var clusterFlavours = []struct {
	name  string
	start func(testing.TB) *harness.NATSCluster
}{
	{"binary", harness.StartNATSCluster},
	{"embedded", harness.StartEmbeddedNATSCluster},
}

// relayCount is the number of relays sharing the outbox table.
const relayCount = 3

// relayLeaderKills is how many times the stream leader is killed (and
// restarted) while the relays publish.
const relayLeaderKills = 2

// TestRelayClusterLeaderKill runs three outbox relays (default
// configuration, each with its own NATS connection to all three nodes and
// its own database pool) on one outbox table while rows are written, and
// kills the leader of the R3 stream they publish to, twice, restarting it
// each time. While the stream elects a leader the publishes fail with "no
// responders", "no response from stream" or timeouts; these are outages,
// so every row must end up published exactly once (the stream holds one
// message per row id) and none may be marked failed.
func TestRelayClusterLeaderKill(t *testing.T) {
	for _, fl := range clusterFlavours {
		t.Run(fl.name, func(t *testing.T) {
			c := fl.start(t)
			env := c.Env(t)
			pg := harness.Postgres(t)
			testRelayLeaderKill(t, c, env, pg)
		})
	}
}

func testRelayLeaderKill(t *testing.T, c *harness.NATSCluster, env *harness.NATSEnv, pg *harness.PostgresEnv) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	t.Logf("nats-server %s, cluster %s", env.Conn.ConnectedServerVersion(), c.Name)

	stream := env.Name("EVENTS")
	if err := retryFor(ctx, "create R3 stream", func(ctx context.Context) error {
		_, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{
			Name: stream, Subjects: []string{env.Subject("events.>")}, Replicas: 3,
			Storage: jetstream.FileStorage, Duplicates: 10 * time.Minute,
		})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitStreamCurrent(ctx, env.JS, stream); err != nil {
		t.Fatal(err)
	}
	ob, err := outbox.New(ctx, pg.DB, outbox.Config{})
	if err != nil {
		t.Fatal(err)
	}

	warnings := &warnCounter{t: t}
	relays := make([]*outbox.Relay, relayCount)
	jss := make([]jetstream.JetStream, relayCount)
	// Run's context has no deadline, as in a service: the relay bounds its
	// JetStream API requests by the client's default timeout only then
	// (TestRelayStreamLookupBounded).
	rctx, stopRelays := context.WithCancel(context.Background())
	defer stopRelays()
	var relayWG sync.WaitGroup
	relayErrs := make([]error, relayCount)
	for i := range relays {
		nc, err := nats.Connect(c.URLs(), nats.Name(fmt.Sprintf("relay-%d", i)),
			nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		// WithPublishAsyncTimeout: without it the publishes a leaderless
		// stream never answers stay in the context's async window for
		// good, and the relay stalls once it is full
		// (TestRelayRecoversAfterUnansweredPublishes).
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		jss[i] = js
		db, err := sql.Open("pgx", pg.URL)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		relays[i], err = outbox.NewRelay(db, outbox.JetStream(js), outbox.RelayConfig{
			Streams: []string{stream},
			Logger:  slog.New(warnings),
		})
		if err != nil {
			t.Fatal(err)
		}
		relayWG.Go(func() { relayErrs[i] = relays[i].Run(rctx) })
	}

	// The writer commits 1-4 rows per transaction until told to stop.
	subject := env.Subject("events.created")
	var written atomic.Int64
	stopWriting := make(chan struct{})
	writerDone := make(chan error, 1)
	go func() {
		for tx := 0; ; tx++ {
			select {
			case <-stopWriting:
				writerDone <- nil
				return
			default:
			}
			n := 1 + tx%4
			err := retryFor(ctx, "write outbox rows", func(ctx context.Context) error {
				return inTx(ctx, pg.DB, func(txn *sql.Tx) error {
					base := written.Load()
					for j := range int64(n) {
						id := fmt.Sprintf("ev-%07d", base+j)
						if err := ob.AddTx(ctx, txn, outbox.Message{ID: id, Subject: subject, Data: []byte(`{"n":` + id[3:] + `}`)}); err != nil {
							return err
						}
					}
					return nil
				})
			})
			if err != nil {
				writerDone <- err
				return
			}
			written.Add(int64(n))
			time.Sleep(3 * time.Millisecond)
		}
	}()

	start := time.Now()
	since := func() string { return fmt.Sprintf("%5.1fs", time.Since(start).Seconds()) }
	sleepCtx(ctx, 1500*time.Millisecond)
	for k := range relayLeaderKills {
		var old int
		if err := retryFor(ctx, "kill the stream leader", func(ctx context.Context) (err error) {
			old, err = c.KillStreamLeader(ctx, env.JS, stream)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s kill %d: killed %s, the leader of %s (%d rows written so far)", since(), k+1, c.NodeName(old), stream, written.Load())
		leader, err := c.WaitStreamLeader(ctx, env.JS, stream, old)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s kill %d: %s leads %s", since(), k+1, c.NodeName(leader), stream)
		sleepCtx(ctx, 2*time.Second)
		if err := c.Restart(ctx, old); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s kill %d: %s restarted", since(), k+1, c.NodeName(old))
		if err := c.WaitStreamCurrent(ctx, env.JS, stream); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s kill %d: all 3 replicas of %s current", since(), k+1, stream)
		sleepCtx(ctx, time.Second)
	}
	close(stopWriting)
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	rows := written.Load()
	t.Logf("%s writer stopped after %d rows", since(), rows)

	var counts map[outbox.State]int64
	wctx, wcancel := context.WithTimeout(ctx, 90*time.Second)
	defer wcancel()
	if err := retryFor(wctx, "wait until every row is sent or failed", func(ctx context.Context) (err error) {
		counts, err = ob.Counts(ctx, pg.DB)
		if err == nil && counts[outbox.StateSent]+counts[outbox.StateFailed] < rows {
			err = fmt.Errorf("outbox rows %v of %d", counts, rows)
		}
		return err
	}); err != nil {
		for i, js := range jss {
			t.Logf("relay %d: %+v, %d unanswered async publishes", i, relays[i].Stats(), js.PublishAsyncPending())
		}
		logPending(t, ctx, pg.DB, env.JS, stream)
		if f, ferr := os.CreateTemp("", "idemq-relay-goroutines-*.txt"); ferr == nil {
			_ = pprof.Lookup("goroutine").WriteTo(f, 2)
			_ = f.Close()
			t.Logf("goroutines of the stuck relays: %s", f.Name())
		}
		t.Fatal(err)
	}
	stopRelays()
	relayWG.Wait()
	for i, err := range relayErrs {
		if err != nil {
			t.Errorf("relay %d: %v", i, err)
		}
	}
	if counts[outbox.StateSent] != rows || counts[outbox.StateFailed] != 0 || counts[outbox.StatePending] != 0 {
		t.Errorf("outbox rows %v, want all %d sent and none failed", counts, rows)
	}

	// The stream holds each row once.
	info, err := streamInfo(ctx, env.JS, stream)
	if err != nil {
		t.Fatal(err)
	}
	copies := map[string]int{}
	if err := readStream(ctx, env.JS, stream, func(m jetstream.Msg) { copies[m.Headers().Get(jetstream.MsgIDHeader)]++ }); err != nil {
		t.Fatal(err)
	}
	var missing, twice []string
	for i := range rows {
		id := fmt.Sprintf("ev-%07d", i)
		switch copies[id] {
		case 0:
			missing = append(missing, id)
		case 1:
		default:
			twice = append(twice, id)
		}
		delete(copies, id)
	}
	if info.State.Msgs != uint64(rows) || len(missing) > 0 || len(twice) > 0 || len(copies) > 0 {
		t.Errorf("stream %s holds %d messages for %d rows: %d rows missing %v, %d more than once %v, %d unknown ids",
			stream, info.State.Msgs, rows, len(missing), head(missing), len(twice), head(twice), len(copies))
	}
	var st outbox.RelayStats
	for i, r := range relays {
		s := r.Stats()
		// Publishes that never got an answer stay in the context's async
		// window (TestRelayRecoversAfterUnansweredPublishes).
		t.Logf("relay %d: %d published (%d dropped by the broker as duplicates), %d publish failures retried, %d failed, %d rounds; %d unanswered publishes left in its async window",
			i, s.Published, s.Duplicates, s.Retried, s.Failed, s.Rounds, jss[i].PublishAsyncPending())
		st.Published += s.Published
		st.Duplicates += s.Duplicates
		st.Retried += s.Retried
		st.Failed += s.Failed
	}
	t.Logf("%d rows through %d leader kills: stream holds %d messages, %d distinct ids; outbox %v; relays: %d publish failures retried, %d republishes dropped as duplicates, %d failed; %d warnings logged (%s)",
		rows, relayLeaderKills, info.State.Msgs, rows-int64(len(missing)), counts, st.Retried, st.Duplicates, st.Failed, warnings.total(), warnings.summary())
	if st.Failed != 0 {
		t.Errorf("relays marked %d rows failed", st.Failed)
	}
}

// inTx runs fn in a transaction of db and commits it.
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

// head returns up to the first three entries of s.
func head(s []string) []string {
	if len(s) > 3 {
		return s[:3]
	}
	return s
}

// warnCounter is a slog.Handler that counts warnings and errors by
// message, logging the first of each kind.
type warnCounter struct {
	t  *testing.T
	mu sync.Mutex
	n  map[string]int
}

func (w *warnCounter) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }

func (w *warnCounter) Handle(_ context.Context, r slog.Record) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.n == nil {
		w.n = map[string]int{}
	}
	w.n[r.Message]++
	if w.n[r.Message] == 1 {
		var attrs []string
		r.Attrs(func(a slog.Attr) bool { attrs = append(attrs, a.String()); return true })
		w.t.Logf("relay log (first of its kind): %s %s %s", r.Level, r.Message, strings.Join(attrs, " "))
	}
	return nil
}

func (w *warnCounter) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnCounter) WithGroup(string) slog.Handler      { return w }

func (w *warnCounter) total() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, c := range w.n {
		n += c
	}
	return n
}

func (w *warnCounter) summary() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.n) == 0 {
		return "none"
	}
	var parts []string
	for m, c := range w.n {
		parts = append(parts, fmt.Sprintf("%d× %q", c, m))
	}
	return strings.Join(parts, ", ")
}

// logPending logs the outbox rows still pending, and what the stream
// answers now to a publish of the first few with their ids, for a test
// that waited for them in vain.
func logPending(t *testing.T, ctx context.Context, db *sql.DB, js jetstream.JetStream, stream string) {
	rs, err := db.QueryContext(ctx, `SELECT id, subject, attempts, coalesce(last_error, ''), next_attempt_at FROM idemq_outbox WHERE state = 'pending' ORDER BY seq LIMIT 10`)
	if err != nil {
		t.Logf("pending rows: %v", err)
		return
	}
	defer rs.Close()
	n := 0
	for rs.Next() {
		var id, subject, lastErr string
		var attempts int
		var next sql.NullTime
		if err := rs.Scan(&id, &subject, &attempts, &lastErr, &next); err != nil {
			t.Logf("pending rows: %v", err)
			return
		}
		t.Logf("pending row %s: %d attempts, next %v, last error %q", id, attempts, next.Time.Format(time.RFC3339Nano), lastErr)
		if n++; n <= 3 {
			pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			ack, err := js.PublishMsg(pctx, &nats.Msg{Subject: subject, Data: []byte(`{"probe":true}`)}, jetstream.WithMsgID(id))
			cancel()
			t.Logf("  a publish of %s to %s now: ack %+v, err %v", id, stream, ack, err)
		}
	}
}
