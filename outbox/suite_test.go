package outbox_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
	"github.com/idemq/idemq/retry"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// The outbox store suite: every test runs against Postgres and SQLite.

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestStoreAddTx(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *sql.DB) {
		ctx := ctxT(t)
		ob := newOutbox(t, db, outbox.Config{})

		// Rolled back: nothing stays.
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := ob.AddTx(ctx, tx, outbox.Message{ID: "gone", Subject: "a.b", Data: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		if c := counts(t, ctx, db, ob); len(c) != 0 {
			t.Fatalf("after rollback counts = %v, want none", c)
		}

		add(t, ctx, db, ob,
			outbox.Message{ID: "completed.k1", Subject: "pay.completed", Data: []byte(`{"a":1}`),
				Header: map[string][]string{"Content-Type": {"application/json"}}, OrderingKey: "acc-1"},
			outbox.Message{ID: "completed.k2", Subject: "pay.completed"},
		)
		// Same id again, different body: a no-op.
		add(t, ctx, db, ob, outbox.Message{ID: "completed.k1", Subject: "other", Data: []byte("changed")})

		rows, err := ob.List(ctx, db, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(rows) != 2 {
			t.Fatalf("rows = %d, want 2", len(rows))
		}
		r := rows[0]
		if r.ID != "completed.k1" || r.Subject != "pay.completed" || string(r.Data) != `{"a":1}` || r.OrderingKey != "acc-1" ||
			r.State != outbox.StatePending || r.Attempts != 0 || r.CreatedAt.IsZero() || !r.SentAt.IsZero() {
			t.Fatalf("row = %+v", r)
		}
		if got := r.Header["Content-Type"]; len(got) != 1 || got[0] != "application/json" {
			t.Fatalf("headers = %v", r.Header)
		}
		if rows[1].Seq <= rows[0].Seq {
			t.Fatalf("seq not increasing: %d then %d", rows[0].Seq, rows[1].Seq)
		}
		if rows[1].Data == nil || len(rows[1].Data) != 0 {
			t.Fatalf("nil body stored as %v, want empty", rows[1].Data)
		}

		if err := ob.AddTx(ctx, db, outbox.Message{ID: "x"}); !errors.Is(err, outbox.ErrInvalidMessage) {
			t.Fatalf("no subject: err = %v, want ErrInvalidMessage", err)
		}
	})
}

func TestStoreDerivedIDsAndHeaders(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *sql.DB) {
		ctx := ctxT(t)
		ob := newOutbox(t, db, outbox.Config{})
		cause := map[string][]string{
			"Traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
			"Tracestate":  {"congo=t61rcWkgMzE"},
		}
		emit := func() {
			hctx := outbox.WithCause(ctx, "orders:42", cause)
			tx, err := db.BeginTx(hctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tx.Rollback() }()
			if err := ob.AddTx(hctx, tx, outbox.Message{Subject: "s.one"}, outbox.Message{ID: "own", Subject: "s.two"}); err != nil {
				t.Fatal(err)
			}
			if err := ob.AddTx(hctx, tx, outbox.Message{Subject: "s.three", Header: map[string][]string{"traceparent": {"mine"}}}); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		}
		emit()
		emit() // a retried handler: same ids, nothing new
		rows, err := ob.List(ctx, db, nil)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, r := range rows {
			ids = append(ids, r.ID)
		}
		if fmt.Sprint(ids) != "[orders:42#0 own orders:42#2]" {
			t.Fatalf("ids = %v", ids)
		}
		h := rows[0].Header
		if h[outbox.HeaderCausationID][0] != "orders:42" || h[outbox.HeaderTraceparent][0] != cause["Traceparent"][0] ||
			h[outbox.HeaderTracestate][0] != cause["Tracestate"][0] {
			t.Fatalf("headers = %v", h)
		}
		if got := rows[2].Header["traceparent"]; len(got) != 1 || got[0] != "mine" {
			t.Fatalf("caller's traceparent overwritten: %v", rows[2].Header)
		}
		if _, dup := rows[2].Header[outbox.HeaderTraceparent]; dup && outbox.HeaderTraceparent != "traceparent" {
			t.Fatalf("second traceparent added: %v", rows[2].Header)
		}

		// The context's trace wins over the causing message's.
		tctx := outbox.WithTrace(outbox.WithCause(ctx, "c2", cause), outbox.TraceContext{Traceparent: "00-ctx-01"})
		if err := ob.AddTx(tctx, db, outbox.Message{Subject: "s.four"}); err != nil {
			t.Fatal(err)
		}
		rows, err = ob.List(ctx, db, &outbox.ListFilter{IDs: []string{"c2#0"}})
		if err != nil || len(rows) != 1 {
			t.Fatalf("list c2#0: %v %v", rows, err)
		}
		if rows[0].Header[outbox.HeaderTraceparent][0] != "00-ctx-01" {
			t.Fatalf("headers = %v", rows[0].Header)
		}
		if _, ok := rows[0].Header[outbox.HeaderTracestate]; ok {
			t.Fatalf("tracestate of a different trace copied: %v", rows[0].Header)
		}
	})
}

// relayEnv is an outbox with a relay publishing to an embedded NATS stream.
type relayEnv struct {
	db     *sql.DB
	ob     *outbox.Outbox
	nats   *harness.NATSEnv
	stream jetstream.Stream
	subj   func(string) string
}

func newRelayEnv(t *testing.T, db *sql.DB, nats *harness.NATSEnv) *relayEnv {
	t.Helper()
	s := createStream(t, nats.JS, jetstream.StreamConfig{Name: nats.Name("OUT"), Subjects: []string{nats.Subject("out.>")}, Duplicates: 5 * time.Minute})
	return &relayEnv{db: db, ob: newOutbox(t, db, outbox.Config{}), nats: nats, stream: s, subj: func(s string) string { return nats.Subject("out." + s) }}
}

func (e *relayEnv) relay(t *testing.T, js jetstream.JetStream, o *outbox.RelayConfig) *outbox.Relay {
	t.Helper()
	if o == nil {
		o = &outbox.RelayConfig{}
	}
	if o.Logger == nil {
		o.Logger = quiet
	}
	if js == nil {
		js = e.nats.JS
	}
	r, err := outbox.NewRelay(e.db, outbox.JetStream(js), *o)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestStoreRelayPublishes(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *sql.DB) {
		ctx := ctxT(t)
		e := newRelayEnv(t, db, harness.EmbeddedNATS(t))
		var msgs []outbox.Message
		for i := range 20 {
			key := ""
			if i%2 == 0 {
				key = fmt.Sprintf("k%d", i%3)
			}
			msgs = append(msgs, outbox.Message{ID: fmt.Sprintf("m%02d", i), Subject: e.subj("x"), Data: []byte{byte(i)},
				Header: map[string][]string{"X-I": {fmt.Sprint(i)}}, OrderingKey: key})
		}
		add(t, ctx, db, e.ob, msgs...)
		r := e.relay(t, nil, &outbox.RelayConfig{Streams: []string{e.stream.CachedInfo().Config.Name}})
		stop := runRelay(t, r)
		eventually(t, 20*time.Second, "all rows sent", func() (bool, error) {
			return counts(t, ctx, db, e.ob)[outbox.StateSent] == 20, nil
		})
		if err := stop(); err != nil {
			t.Fatalf("Run: %v", err)
		}
		got := streamMsgs(t, ctx, e.stream)
		if len(got) != 20 {
			t.Fatalf("stream has %d messages, want 20", len(got))
		}
		seen := map[string]bool{}
		for _, m := range got {
			id := m.Header.Get(nats.MsgIdHdr)
			var i int
			if _, err := fmt.Sscanf(id, "m%02d", &i); err != nil || seen[id] {
				t.Fatalf("bad or repeated Nats-Msg-Id %q", id)
			}
			seen[id] = true
			if !bytes.Equal(m.Data, []byte{byte(i)}) || m.Header.Get("X-I") != fmt.Sprint(i) {
				t.Fatalf("message %s: data %v headers %v", id, m.Data, m.Header)
			}
		}
		if st := r.Stats(); st.Published != 20 || st.Duplicates != 0 || st.Failed != 0 {
			t.Fatalf("stats = %+v", st)
		}
		rows, err := e.ob.List(ctx, db, &outbox.ListFilter{State: outbox.StateSent, Limit: 1})
		if err != nil || len(rows) != 1 || rows[0].SentAt.IsZero() || rows[0].Attempts != 1 {
			t.Fatalf("sent row = %+v, %v", rows, err)
		}
	})
}

func TestStoreRelayPermanentFailure(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *sql.DB) {
		ctx := ctxT(t)
		e := newRelayEnv(t, db, harness.EmbeddedNATS(t))
		add(t, ctx, db, e.ob,
			outbox.Message{ID: "nostream", Subject: e.nats.Subject("nowhere.x"), OrderingKey: "k"},
			outbox.Message{ID: "huge", Subject: e.subj("x"), Data: make([]byte, 2<<20)},
			outbox.Message{ID: "after", Subject: e.subj("x"), OrderingKey: "k"},
			outbox.Message{ID: "fine", Subject: e.subj("x")},
		)
		r := e.relay(t, nil, nil)
		for range 3 {
			if _, _, err := outbox.Round(ctx, r); err != nil {
				t.Fatal(err)
			}
		}
		rows, err := e.ob.List(ctx, db, nil)
		if err != nil {
			t.Fatal(err)
		}
		want := map[string]outbox.State{"nostream": outbox.StateFailed, "huge": outbox.StateFailed, "after": outbox.StateSent, "fine": outbox.StateSent}
		for _, row := range rows {
			if row.State != want[row.ID] {
				t.Errorf("%s: state %s (%s), want %s", row.ID, row.State, row.LastError, want[row.ID])
			}
			if row.State == outbox.StateFailed && (row.LastError == "" || row.Attempts != 1) {
				t.Errorf("%s: failed without error or attempts: %+v", row.ID, row)
			}
		}
		if st := r.Stats(); st.Failed != 2 || st.Published != 2 {
			t.Fatalf("stats = %+v", st)
		}
		// The operator creates the stream and requeues: published.
		createStream(t, e.nats.JS, jetstream.StreamConfig{Name: e.nats.Name("LATE"), Subjects: []string{e.nats.Subject("nowhere.>")}})
		if n, err := e.ob.Requeue(ctx, db, "nostream", "fine"); err != nil || n != 1 {
			t.Fatalf("Requeue = %d, %v; want 1", n, err)
		}
		if _, _, err := outbox.Round(ctx, r); err != nil {
			t.Fatal(err)
		}
		if c := counts(t, ctx, db, e.ob); c[outbox.StateSent] != 3 || c[outbox.StateFailed] != 1 {
			t.Fatalf("counts = %v", c)
		}
	})
}

// flakyJS fails the publish of messages whose body is in fail with a
// transient error.
type flakyJS struct {
	jetstream.JetStream
	fail map[string]bool
}

var errFlaky = errors.New("flaky: connection reset")

func (f *flakyJS) PublishMsgAsync(m *nats.Msg, opts ...jetstream.PublishOpt) (jetstream.PubAckFuture, error) {
	if f.fail[string(m.Data)] {
		return nil, errFlaky
	}
	return f.JetStream.PublishMsgAsync(m, opts...)
}

func TestStoreTransientFailureKeepsKeyOrder(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *sql.DB) {
		ctx := ctxT(t)
		e := newRelayEnv(t, db, harness.EmbeddedNATS(t))
		subj := e.subj("x")
		add(t, ctx, db, e.ob,
			outbox.Message{ID: "k1", Subject: subj, Data: []byte("1"), OrderingKey: "k"},
			outbox.Message{ID: "k2", Subject: subj, Data: []byte("2"), OrderingKey: "k"},
			outbox.Message{ID: "j1", Subject: subj, Data: []byte("j1"), OrderingKey: "j"},
			outbox.Message{ID: "free", Subject: subj, Data: []byte("free")},
		)
		js := &flakyJS{JetStream: e.nats.JS, fail: map[string]bool{"1": true}}
		now := time.Now()
		clock := func() time.Time { return now }
		r := e.relay(t, js, &outbox.RelayConfig{Now: clock, Backoff: retry.Constant(time.Minute)})
		if _, _, err := outbox.Round(ctx, r); err != nil {
			t.Fatal(err)
		}
		state := func() map[string]outbox.Row { return rowsByID(t, ctx, db, e.ob) }
		s := state()
		if s["k1"].State != outbox.StatePending || s["k1"].Attempts != 1 || s["k1"].LastError == "" ||
			!s["k1"].NextAttemptAt.After(now.Add(59*time.Second)) {
			t.Fatalf("k1 after transient failure: %+v", s["k1"])
		}
		if s["k2"].State != outbox.StatePending || s["k2"].Attempts != 0 {
			t.Fatalf("k2 overtook k1: %+v", s["k2"])
		}
		if s["j1"].State != outbox.StateSent || s["free"].State != outbox.StateSent {
			t.Fatalf("other rows blocked: %+v %+v", s["j1"], s["free"])
		}
		// k1 is not due yet: k2 stays behind it.
		if _, _, err := outbox.Round(ctx, r); err != nil {
			t.Fatal(err)
		}
		if s := state(); s["k2"].State != outbox.StatePending {
			t.Fatalf("k2 published while k1 waits: %+v", s["k2"])
		}
		// Due and healthy again: k1 then k2.
		delete(js.fail, "1")
		now = now.Add(2 * time.Minute)
		if _, _, err := outbox.Round(ctx, r); err != nil {
			t.Fatal(err)
		}
		s = state()
		if s["k1"].State != outbox.StateSent || s["k2"].State != outbox.StateSent || s["k1"].LastError != "" {
			t.Fatalf("after recovery: %+v %+v", s["k1"], s["k2"])
		}
		var order []string
		for _, m := range streamMsgs(t, ctx, e.stream) {
			if m.Header.Get(nats.MsgIdHdr) == "k1" || m.Header.Get(nats.MsgIdHdr) == "k2" {
				order = append(order, m.Header.Get(nats.MsgIdHdr))
			}
		}
		if fmt.Sprint(order) != "[k1 k2]" {
			t.Fatalf("stream order of key k = %v", order)
		}
		if st := r.Stats(); st.Retried != 1 || st.Published != 4 {
			t.Fatalf("stats = %+v", st)
		}
	})
}

// rowsByID returns the outbox's rows by id.
func rowsByID(t *testing.T, ctx context.Context, db *sql.DB, ob *outbox.Outbox) map[string]outbox.Row {
	t.Helper()
	rows, err := ob.List(ctx, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]outbox.Row{}
	for _, x := range rows {
		m[x.ID] = x
	}
	return m
}

// TestStoreUnattemptedRowKeepsItsState: a row left unattempted in a round
// (an older row of its key failed transiently) stays exactly as it was
// claimed, its earlier error, attempts and due time included, although on
// Postgres the round marks its rows sent while the PubAcks are awaited and
// undoes that for the rows not acknowledged.
func TestStoreUnattemptedRowKeepsItsState(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *sql.DB) {
		ctx := ctxT(t)
		e := newRelayEnv(t, db, harness.EmbeddedNATS(t))
		add(t, ctx, db, e.ob,
			outbox.Message{ID: "x", Subject: e.nats.Subject("nowhere.x"), Data: []byte("x"), OrderingKey: "k"},
			outbox.Message{ID: "y", Subject: e.subj("y"), Data: []byte("y"), OrderingKey: "k"},
		)
		js := &flakyJS{JetStream: e.nats.JS, fail: map[string]bool{"y": true}}
		now := time.Now()
		clock := func() time.Time { return now }
		r := e.relay(t, js, &outbox.RelayConfig{Now: clock, Backoff: retry.Constant(time.Minute)})
		// x has no stream: failed; y fails transiently.
		if _, _, err := outbox.Round(ctx, r); err != nil {
			t.Fatal(err)
		}
		state := func() map[string]outbox.Row { return rowsByID(t, ctx, db, e.ob) }
		before := state()["y"]
		if before.State != outbox.StatePending || before.Attempts != 1 || before.LastError == "" || before.NextAttemptAt.IsZero() {
			t.Fatalf("y after its transient failure: %+v", before)
		}
		// x requeued and failing transiently now, y due and healthy: y is
		// not attempted, since x comes first in key k.
		createStream(t, e.nats.JS, jetstream.StreamConfig{Name: e.nats.Name("LATE"), Subjects: []string{e.nats.Subject("nowhere.>")}})
		if n, err := e.ob.Requeue(ctx, db, "x"); err != nil || n != 1 {
			t.Fatalf("Requeue = %d, %v; want 1", n, err)
		}
		js.fail = map[string]bool{"x": true}
		now = now.Add(2 * time.Minute)
		claimed, done, err := outbox.Round(ctx, r)
		if err != nil || claimed != 2 || done != 0 {
			t.Fatalf("Round = %d claimed, %d done, %v; want 2, 0, nil", claimed, done, err)
		}
		s := state()
		if x := s["x"]; x.State != outbox.StatePending || x.Attempts != 2 || !x.SentAt.IsZero() || !x.NextAttemptAt.After(now) {
			t.Fatalf("x after its transient failure: %+v", x)
		}
		after := s["y"]
		if after.State != before.State || after.Attempts != before.Attempts || after.LastError != before.LastError ||
			!after.NextAttemptAt.Equal(before.NextAttemptAt) || !after.SentAt.IsZero() {
			t.Fatalf("unattempted y changed:\n before %+v\n after  %+v", before, after)
		}
		if got := len(streamMsgs(t, ctx, e.stream)); got != 0 {
			t.Fatalf("stream holds %d messages, want none", got)
		}
		st := r.Stats()
		if st.Published != 0 || st.Failed != 1 || st.Retried != 2 {
			t.Fatalf("stats = %+v", st)
		}
	})
}

func TestStoreCleanup(t *testing.T) {
	forEachBackend(t, func(t *testing.T, db *sql.DB) {
		ctx := ctxT(t)
		e := newRelayEnv(t, db, harness.EmbeddedNATS(t))
		now := time.Now()
		clock := func() time.Time { return now }
		var msgs []outbox.Message
		for i := range 25 {
			msgs = append(msgs, outbox.Message{ID: fmt.Sprint("old", i), Subject: e.subj("x")})
		}
		add(t, ctx, db, e.ob, msgs...)
		r := e.relay(t, nil, &outbox.RelayConfig{Now: clock, Retention: time.Hour, CleanupBatch: 10})
		if _, _, err := outbox.Round(ctx, r); err != nil {
			t.Fatal(err)
		}
		now = now.Add(30 * time.Minute)
		add(t, ctx, db, e.ob, outbox.Message{ID: "young", Subject: e.subj("x")}, outbox.Message{ID: "failed", Subject: e.nats.Subject("nowhere")})
		if _, _, err := outbox.Round(ctx, r); err != nil {
			t.Fatal(err)
		}
		add(t, ctx, db, e.ob, outbox.Message{ID: "pending", Subject: e.subj("x")})
		if n, err := r.Cleanup(ctx); err != nil || n != 0 {
			t.Fatalf("early Cleanup = %d, %v", n, err)
		}
		now = now.Add(45 * time.Minute)
		if n, err := r.Cleanup(ctx); err != nil || n != 25 {
			t.Fatalf("Cleanup = %d, %v; want 25", n, err)
		}
		if c := counts(t, ctx, db, e.ob); c[outbox.StateSent] != 1 || c[outbox.StateFailed] != 1 || c[outbox.StatePending] != 1 {
			t.Fatalf("counts after cleanup = %v", c)
		}
	})
}

func TestRelayDuplicatesWindowValidated(t *testing.T) {
	ctx := ctxT(t)
	env := harness.EmbeddedNATS(t)
	createStream(t, env.JS, jetstream.StreamConfig{Name: env.Name("SHORT"), Subjects: []string{env.Subject("short")}, Duplicates: 10 * time.Second})
	db := openSQLite(t)
	newOutbox(t, db, outbox.Config{})
	r, err := outbox.NewRelay(db, outbox.JetStream(env.JS), outbox.RelayConfig{Streams: []string{env.Name("SHORT")}, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Run(ctx); !errors.Is(err, outbox.ErrDuplicatesWindow) {
		t.Fatalf("Run = %v, want ErrDuplicatesWindow", err)
	}
	if h := r.RedeliveryHorizon(); h <= outbox.CrashAllowance {
		t.Fatalf("horizon %v", h)
	}
}

func TestRejectedClassification(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{jetstream.ErrNoStreamResponse, false}, // no leader right now, or no stream: confirmed apart
		{nats.ErrNoResponders, false},
		{nats.ErrMaxPayload, true},
		{fmt.Errorf("wrapped: %w", jetstream.ErrStreamMessageExceedsMaximum), true},
		{&jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence}, true},
		{&jetstream.APIError{Code: 503}, false},
		{&jetstream.APIError{Code: 408}, false},
		{outbox.ErrPublishTimeout, false},
		{jetstream.ErrAsyncPublishTimeout, false},
		{nats.ErrConnectionClosed, false},
		{context.DeadlineExceeded, false},
	} {
		if got := outbox.Rejected(c.err); got != c.want {
			t.Errorf("Rejected(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
