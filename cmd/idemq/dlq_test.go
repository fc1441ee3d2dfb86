package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/integration/harness"
)

// eachServer runs fn against the real server (IDEMQ_NATS_URL) and an
// embedded one, in parallel.
func eachServer(t *testing.T, fn func(t *testing.T, env *harness.NATSEnv)) {
	t.Helper()
	t.Run("real", func(t *testing.T) {
		t.Parallel()
		fn(t, harness.NATS(t))
	})
	t.Run("embedded", func(t *testing.T) {
		t.Parallel()
		fn(t, harness.EmbeddedNATS(t))
	})
}

// dlqFixture is a source stream ORDERS (subjects <p>.orders.>) and a
// dead-letter stream DLQ (subjects <p>.dlq.>) holding, in this order:
//
//	1 permanent  dlq.orders  JSON body, original Nats-Msg-Id "orig-1"
//	2 conflict   dlq.orders  text body
//	3 exhausted  dlq.other   binary body, a 2 KiB error
//	4 permanent  dlq.other   JSON body
//	5 (a plain message on dlq.orders, not a dead letter)
type dlqFixture struct {
	env    *harness.NATSEnv
	orders string
	dlq    string
	bodies map[uint64][]byte
}

var errLong = errors.New(strings.Repeat("upstream said no; ", 120))

func newDLQFixture(t *testing.T, env *harness.NATSEnv) *dlqFixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	f := &dlqFixture{env: env, orders: env.Name("ORDERS"), dlq: env.Name("DLQ"), bodies: map[uint64][]byte{}}
	for name, subj := range map[string]string{f.orders: "orders.>", f.dlq: "dlq.>"} {
		if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: []string{env.Subject(subj)}}); err != nil {
			t.Fatalf("create stream %s: %v", name, err)
		}
	}
	letters := []struct {
		dlqSubject string
		l          natsjs.Letter
	}{
		{"dlq.orders", natsjs.Letter{
			Subject:  env.Subject("orders.created"),
			Header:   nats.Header{"Idempotency-Key": {"key-1"}, "Nats-Msg-Id": {"orig-1"}, "Idemq-Causation-Id": {"cause-1"}},
			Data:     []byte(`{"order":"o-1","amount":100}`),
			Sequence: 11, Attempts: 1, Reason: consumer.ReasonPermanent, Err: errors.New("card declined"),
		}},
		{"dlq.orders", natsjs.Letter{
			Subject:  env.Subject("orders.created"),
			Header:   nats.Header{"Idempotency-Key": {"key-2"}},
			Data:     []byte("plain text body\nsecond line"),
			Sequence: 12, Attempts: 1, Reason: consumer.ReasonConflict, Err: errors.New("same key, different body"),
		}},
		{"dlq.other", natsjs.Letter{
			Subject:  env.Subject("orders.shipped"),
			Data:     []byte{0x00, 0x01, 0xfe, 0xff, 'x'},
			Sequence: 13, Attempts: 5, Reason: consumer.ReasonExhausted, Err: errLong,
		}},
		{"dlq.other", natsjs.Letter{
			Subject:  env.Subject("orders.created"),
			Header:   nats.Header{"Idempotency-Key": {"key-4"}},
			Data:     []byte(`{"order":"o-4"}`),
			Sequence: 14, Attempts: 2, Reason: consumer.ReasonPermanent, Err: errors.New("bad account"),
		}},
	}
	for i, x := range letters {
		dl := &natsjs.DeadLetterer{JS: env.JS, Subject: env.Subject(x.dlqSubject), Stream: f.dlq, Host: "test-host",
			Now: func() time.Time { return t0 }}
		x.l.Stream, x.l.Consumer = f.orders, "worker"
		if err := dl.PublishLetter(ctx, x.l); err != nil {
			t.Fatalf("dead-letter %d: %v", i+1, err)
		}
		f.bodies[uint64(i+1)] = x.l.Data
	}
	if _, err := env.JS.Publish(ctx, env.Subject("dlq.orders"), []byte("not a dead letter")); err != nil {
		t.Fatalf("publish plain message: %v", err)
	}
	return f
}

// cli runs idemq against the fixture's server and DLQ stream.
func (f *dlqFixture) cli(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	args = append(args[:2:2], append([]string{"-nats", f.env.URL, "-stream", f.dlq}, args[2:]...)...)
	return runCLI(t, args...)
}

// seqs returns the sequences in the DLQ stream.
func (f *dlqFixture) seqs(t *testing.T) []uint64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	d, err := openDLQ(ctx, f.env.JS, f.dlq)
	if err != nil {
		t.Fatal(err)
	}
	seqs, err := d.seqs(ctx, selector{})
	if err != nil {
		t.Fatal(err)
	}
	return seqs
}

// orders returns the messages stored in ORDERS, in order.
func (f *dlqFixture) orderMsgs(t *testing.T) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	s, err := f.env.JS.Stream(ctx, f.orders)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := uint64(1); ; seq = out[len(out)-1].Sequence + 1 {
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(">"))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
}

func listSeqs(t *testing.T, out string) []uint64 {
	t.Helper()
	var seqs []uint64
	for _, line := range strings.Split(strings.TrimSpace(out), "\n")[1:] {
		n, err := strconv.ParseUint(strings.Fields(line)[0], 10, 64)
		if err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		seqs = append(seqs, n)
	}
	return seqs
}

func TestDLQList(t *testing.T) {
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newDLQFixture(t, env)
		tests := []struct {
			name string
			args []string
			want []uint64
		}{
			{"all", nil, []uint64{1, 2, 3, 4, 5}},
			{"reason", []string{"-reason", "permanent"}, []uint64{1, 4}},
			{"subject", []string{"-subject", env.Subject("dlq.other")}, []uint64{3, 4}},
			{"subject wildcard", []string{"-subject", env.Subject("dlq.>")}, []uint64{1, 2, 3, 4, 5}},
			{"subject and reason", []string{"-subject", env.Subject("dlq.orders"), "-reason", "conflict"}, []uint64{2}},
			{"limit", []string{"-limit", "2"}, []uint64{1, 2}},
			{"no match", []string{"-reason", "invalid"}, nil},
		}
		for _, tt := range tests {
			code, out, errOut := f.cli(t, append([]string{"dlq", "list"}, tt.args...)...)
			if code != exitOK {
				t.Fatalf("%s: exit %d: %s", tt.name, code, errOut)
			}
			if got := listSeqs(t, out); fmt.Sprint(got) != fmt.Sprint(tt.want) {
				t.Errorf("%s: seqs %v, want %v\n%s", tt.name, got, tt.want, out)
			}
		}

		_, out, _ := f.cli(t, "dlq", "list", "-reason", "exhausted")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if !strings.HasPrefix(lines[0], "SEQ") || len(lines) != 2 {
			t.Fatalf("list output:\n%s", out)
		}
		for _, want := range []string{"exhausted", env.Subject("orders.shipped"), f.orders + ":13", "5", t0.Format(time.RFC3339), "upstream said no", "…"} {
			if !strings.Contains(lines[1], want) {
				t.Errorf("line %q lacks %q", lines[1], want)
			}
		}
		if n := len([]rune(lines[1])); n > 200 {
			t.Errorf("line is %d columns wide, want at most 200", n)
		}

		_, out, _ = f.cli(t, "dlq", "list", "-json", "-reason", "exhausted")
		// Numeric headers are JSON numbers, like seq.
		for _, want := range []string{`"seq":3,`, `"original_sequence":13,`, `"attempts":5,`} {
			if !strings.Contains(out, want) {
				t.Errorf("-json output lacks %s: %s", want, out)
			}
		}
		var e listEntry
		if err := json.Unmarshal([]byte(out), &e); err != nil {
			t.Fatalf("-json output %q: %v", out, err)
		}
		if e.Seq != 3 || e.Reason != "exhausted" || e.OriginalStream != f.orders || e.OriginalSequence != 13 ||
			e.Attempts != 5 || e.Consumer != "worker" || e.Host != "test-host" || e.Size != 5 ||
			e.Error != consumer.ErrorText(errLong) || e.FailedAt != t0.Format(time.RFC3339) {
			t.Errorf("-json entry %+v", e)
		}

		// Listing consumed nothing: every message is still there and no
		// consumer was created.
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		s, err := env.JS.Stream(ctx, f.dlq)
		if err != nil {
			t.Fatal(err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.State.Msgs != 5 || info.State.Consumers != 0 {
			t.Errorf("after list: %d messages, %d consumers; want 5, 0", info.State.Msgs, info.State.Consumers)
		}
	})
}

func TestDLQListMissingStream(t *testing.T) {
	env := harness.EmbeddedNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	other := env.Name("OTHER")
	if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: other, Subjects: []string{env.Subject("other.>")}}); err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{{"dlq", "list"}, {"dlq", "show", "1"}, {"dlq", "replay", "-all"}, {"dlq", "purge", "-all"}} {
		args := append(append([]string(nil), cmd...), "-nats", env.URL, "-stream", env.Name("NOPE"))
		code, _, errOut := runCLI(t, args...)
		// The error names the stream asked for, the server asked, the
		// streams it has, and the two flags that fix it.
		for _, want := range []string{"dead-letter stream not found", env.Name("NOPE"), "127.0.0.1", other, "-stream NAME", "-nats URL"} {
			if code != exitError || !strings.Contains(errOut, want) {
				t.Errorf("%s: exit %d, stderr %q; want exit 1 and %q", strings.Join(cmd, " "), code, errOut, want)
			}
		}
	}
}

func TestDLQShow(t *testing.T) {
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newDLQFixture(t, env)
		code, out, errOut := f.cli(t, "dlq", "show", "1")
		if code != exitOK {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		for _, want := range []string{
			"Sequence:  1", "Subject:   " + env.Subject("dlq.orders"),
			"Idemq-Reason: permanent", "Idemq-Error: card declined",
			"Idemq-Original-Subject: " + env.Subject("orders.created"),
			"Idemq-Original-Stream: " + f.orders, "Idemq-Original-Sequence: 11", "Idemq-Consumer: worker",
			"Idemq-Attempts: 1", "Idemq-Failed-At: " + t0.Format(time.RFC3339), "Idemq-Host: test-host",
			"Idemq-Original-Msg-Id: orig-1", "Nats-Msg-Id: " + f.orders + ":11", "Idempotency-Key: key-1",
			"Body (JSON, 28 bytes):\n{\n  \"order\": \"o-1\",\n  \"amount\": 100\n}\n",
		} {
			if !strings.Contains(out, want) {
				t.Errorf("show 1 lacks %q:\n%s", want, out)
			}
		}
		// Show flags may follow SEQ.
		_, out, _ = runCLI(t, "dlq", "show", "2", "-nats", env.URL, "-stream", f.dlq)
		if !strings.Contains(out, "Body (text, 27 bytes):\nplain text body\nsecond line\n") {
			t.Errorf("show 2:\n%s", out)
		}
		_, out, _ = f.cli(t, "dlq", "show", "3")
		if !strings.Contains(out, "Body (binary, 5 bytes):\n00000000  00 01 fe ff 78") {
			t.Errorf("show 3:\n%s", out)
		}
		_, out, _ = f.cli(t, "dlq", "show", "5")
		if !strings.Contains(out, "not an idemq dead letter") || !strings.Contains(out, "Headers:\n  (none)") {
			t.Errorf("show 5:\n%s", out)
		}
		code, _, errOut = f.cli(t, "dlq", "show", "99")
		if code != exitError || !strings.Contains(errOut, errNoLetter.Error()) {
			t.Errorf("show 99: exit %d, %q", code, errOut)
		}
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		if err := showLetter(ctx, env.JS, f.dlq, 99, &bytes.Buffer{}); !errors.Is(err, errNoLetter) {
			t.Errorf("showLetter(99) = %v, want errNoLetter", err)
		}
	})
}

// countingLimiter counts waits; after cancelAfter waits (if set) it cancels
// the replay's context.
type countingLimiter struct {
	mu          sync.Mutex
	waits       int
	cancelAfter int
	cancel      context.CancelFunc
}

func (c *countingLimiter) Wait(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.waits++
	if c.cancelAfter > 0 && c.waits > c.cancelAfter {
		c.cancel()
		return ctx.Err()
	}
	return nil
}

func TestNewLimiter(t *testing.T) {
	l := newLimiter(50)
	if l.Limit() != 50 || l.Burst() != 1 {
		t.Errorf("newLimiter(50): limit %v burst %d, want 50, 1", l.Limit(), l.Burst())
	}
	if l := newLimiter(0); l.Limit() != rate.Inf {
		t.Errorf("newLimiter(0): limit %v, want Inf", l.Limit())
	}
	l = newLimiter(0.5)
	if l.Limit() != 0.5 || l.Burst() != 1 {
		t.Errorf("newLimiter(0.5): limit %v burst %d", l.Limit(), l.Burst())
	}
}

func TestDLQReplay(t *testing.T) {
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newDLQFixture(t, env)
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()

		lim := &countingLimiter{}
		var log bytes.Buffer
		st, err := replay(ctx, env.JS, replayOptions{Stream: f.dlq, Seq: 1, Limiter: lim}, &log)
		if err != nil {
			t.Fatal(err)
		}
		if st.Replayed != 1 || st.Deduped != 0 || lim.waits != 1 {
			t.Fatalf("first replay: %+v, %d waits", st, lim.waits)
		}
		msgs := f.orderMsgs(t)
		if len(msgs) != 1 {
			t.Fatalf("ORDERS holds %d messages, want 1", len(msgs))
		}
		m := msgs[0]
		if m.Subject != env.Subject("orders.created") || !bytes.Equal(m.Data, f.bodies[1]) {
			t.Errorf("replayed %s %q", m.Subject, m.Data)
		}
		for k, want := range map[string]string{
			"Idempotency-Key":     "key-1",
			"Idemq-Causation-Id":  "cause-1",
			"Idemq-Replayed-From": f.dlq + ":1",
			"Nats-Msg-Id":         "replay." + f.dlq + ".1",
		} {
			if got := m.Header.Get(k); got != want {
				t.Errorf("header %s = %q, want %q", k, got, want)
			}
		}
		// The dead-letter publish stored its expected-stream check with the
		// dead letter; replay must not carry it to another stream.
		if v := m.Header.Get("Nats-Expected-Stream"); v != "" {
			t.Errorf("replayed message carries Nats-Expected-Stream %q", v)
		}
		for _, k := range deadLetterHeaders {
			if k == headerReplayedFrom || k == jetstream.MsgIDHeader {
				continue
			}
			if v := m.Header.Values(k); len(v) > 0 {
				t.Errorf("replayed message keeps dead-letter header %s: %q", k, v)
			}
		}

		// A second replay of the same dead letter is dropped by the stream.
		code, _, errOut := f.cli(t, "dlq", "replay", "-seq", "1", "-rate", "0")
		if code != exitOK || !strings.Contains(errOut, "replayed 1 of 1 (1 deduped") {
			t.Fatalf("second replay: exit %d, %q", code, errOut)
		}
		if n := len(f.orderMsgs(t)); n != 1 {
			t.Fatalf("after the second replay ORDERS holds %d messages, want 1", n)
		}

		// -keep-msg-id restores the original id; the original publish never
		// reached ORDERS, so it is stored.
		st, err = replay(ctx, env.JS, replayOptions{Stream: f.dlq, Seq: 1, KeepMsgID: true}, &log)
		if err != nil || st.Replayed != 1 || st.Deduped != 0 {
			t.Fatalf("keep-msg-id replay: %+v, %v", st, err)
		}
		if msgs := f.orderMsgs(t); len(msgs) != 2 || msgs[1].Header.Get("Nats-Msg-Id") != "orig-1" {
			t.Fatalf("keep-msg-id: %d messages, id %q", len(msgs), msgs[len(msgs)-1].Header.Get("Nats-Msg-Id"))
		}

		// -seq with a reason that does not match is refused.
		if _, err := replay(ctx, env.JS, replayOptions{Stream: f.dlq, Seq: 2, Reason: "permanent"}, &log); err == nil {
			t.Error("replay -seq 2 -reason permanent succeeded")
		}
		// A message that is not a dead letter cannot be replayed by -seq.
		if _, err := replay(ctx, env.JS, replayOptions{Stream: f.dlq, Seq: 5}, &log); !errors.Is(err, errNotDeadLetter) {
			t.Errorf("replay -seq 5: %v, want errNotDeadLetter", err)
		}

		// Dry run: says what it would do, publishes nothing.
		code, out, errOut := f.cli(t, "dlq", "replay", "-all", "-reason", "permanent", "-dry-run")
		if code != exitOK || strings.Count(out, "would replay") != 2 || !strings.Contains(out, "replay."+f.dlq+".4") ||
			!strings.Contains(errOut, "dry run: 2 selected") {
			t.Fatalf("dry run: exit %d\n%s\n%s", code, out, errOut)
		}
		if n := len(f.orderMsgs(t)); n != 2 {
			t.Fatalf("dry run published: ORDERS holds %d messages", n)
		}

		// -reason permanent -delete: 1 (deduped) and 4 replayed, both deleted.
		lim = &countingLimiter{}
		st, err = replay(ctx, env.JS, replayOptions{Stream: f.dlq, All: true, Reason: "permanent", Delete: true, Limiter: lim}, &log)
		if err != nil {
			t.Fatal(err)
		}
		if st.Selected != 2 || st.Replayed != 2 || st.Deduped != 1 || st.Deleted != 2 || lim.waits != 2 {
			t.Fatalf("replay -reason permanent -delete: %+v, %d waits", st, lim.waits)
		}
		if got := f.seqs(t); fmt.Sprint(got) != "[2 3 5]" {
			t.Fatalf("DLQ after -delete: %v, want [2 3 5]", got)
		}
		msgs = f.orderMsgs(t)
		if len(msgs) != 3 || !bytes.Equal(msgs[2].Data, f.bodies[4]) || msgs[2].Header.Get("Idemq-Replayed-From") != f.dlq+":4" {
			t.Fatalf("ORDERS after -delete: %d messages", len(msgs))
		}

		// -all: 2 and 3 replayed, 5 skipped (not a dead letter): exit 1.
		code, _, errOut = f.cli(t, "dlq", "replay", "-all", "-rate", "1000")
		if code != exitError || !strings.Contains(errOut, "replayed 2 of 3") || !strings.Contains(errOut, "skipped 1") {
			t.Fatalf("replay -all: exit %d, %q", code, errOut)
		}
		msgs = f.orderMsgs(t)
		if len(msgs) != 5 || !bytes.Equal(msgs[4].Data, f.bodies[3]) || msgs[4].Subject != env.Subject("orders.shipped") {
			t.Fatalf("ORDERS after -all: %d messages", len(msgs))
		}
	})
}

func TestDLQReplayStopsOnCancel(t *testing.T) {
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newDLQFixture(t, env)
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		lim := &countingLimiter{cancelAfter: 2, cancel: cancel}
		st, err := replay(ctx, env.JS, replayOptions{Stream: f.dlq, All: true, Delete: true, Limiter: lim}, &bytes.Buffer{})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
		if st.Replayed != 2 || st.Deleted != 2 || st.Selected != 5 {
			t.Fatalf("stats %+v, want 2 replayed and deleted of 5", st)
		}
		if !strings.Contains(st.String(), "replayed 2 of 5") {
			t.Errorf("summary %q", st)
		}
		if got := f.seqs(t); fmt.Sprint(got) != "[3 4 5]" {
			t.Errorf("DLQ after cancel: %v, want [3 4 5]", got)
		}
	})
}

// fakeBar records what replay reports.
type fakeBar struct {
	total, added int
	finished     bool
}

func (b *fakeBar) Add(n int) error { b.added += n; return nil }
func (b *fakeBar) Finish() error   { b.finished = true; return nil }

func TestDLQReplayProgress(t *testing.T) {
	env := harness.EmbeddedNATS(t)
	f := newDLQFixture(t, env)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	bar := &fakeBar{}
	_, err := replay(ctx, env.JS, replayOptions{Stream: f.dlq, All: true, Reason: "permanent",
		Progress: func(total int) progress { bar.total = total; return bar }}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if bar.total != 2 || bar.added != 2 || !bar.finished {
		t.Fatalf("progress %+v", bar)
	}

	// With a terminal the CLI draws a progressbar/v3 bar on stderr instead of
	// the summary line.
	a, _, errb := testApp()
	a.progress = true
	code := a.run(ctx, []string{"dlq", "replay", "-nats", env.URL, "-stream", f.dlq, "-all", "-reason", "conflict", "-rate", "0"})
	if code != exitOK || !strings.Contains(errb.String(), "replay "+f.dlq) || !strings.Contains(errb.String(), "1/1") {
		t.Fatalf("exit %d, stderr %q", code, errb.String())
	}
}

func TestDLQPurge(t *testing.T) {
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newDLQFixture(t, env)
		code, _, errOut := f.cli(t, "dlq", "purge", "-reason", "permanent")
		if code != exitUsage || !strings.Contains(errOut, "would delete 2 messages") {
			t.Fatalf("purge without -yes: exit %d, %q", code, errOut)
		}
		code, _, errOut = f.cli(t, "dlq", "purge", "-all")
		if code != exitUsage || !strings.Contains(errOut, "would delete 5 messages") {
			t.Fatalf("purge -all without -yes: exit %d, %q", code, errOut)
		}
		if got := f.seqs(t); len(got) != 5 {
			t.Fatalf("refused purge deleted messages: %v", got)
		}
		code, out, errOut := f.cli(t, "dlq", "purge", "-reason", "permanent", "-yes")
		if code != exitOK || !strings.Contains(out, "deleted 2 messages") {
			t.Fatalf("purge -reason: exit %d, %q %q", code, out, errOut)
		}
		if got := f.seqs(t); fmt.Sprint(got) != "[2 3 5]" {
			t.Fatalf("after purge -reason permanent: %v", got)
		}
		code, out, _ = f.cli(t, "dlq", "purge", "-all", "-yes")
		if code != exitOK || !strings.Contains(out, "deleted 3 messages") {
			t.Fatalf("purge -all: exit %d, %q", code, out)
		}
		if got := f.seqs(t); len(got) != 0 {
			t.Fatalf("after purge -all: %v", got)
		}
		code, out, _ = f.cli(t, "dlq", "list")
		if code != exitOK || strings.Count(out, "\n") != 1 || !strings.HasPrefix(out, "SEQ") {
			t.Fatalf("list of an empty stream: exit %d %q", code, out)
		}
	})
}

// TestDLQDirectGet reads a DLQ stream that allows direct gets: the metadata
// headers a direct get adds (Nats-Stream, Nats-Sequence, …) are not shown and
// not replayed.
func TestDLQDirectGet(t *testing.T) {
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		dlqName, target := env.Name("DDLQ"), env.Name("TARGET")
		if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: dlqName, Subjects: []string{env.Subject("dlq.>")}, AllowDirect: true}); err != nil {
			t.Fatal(err)
		}
		if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: target, Subjects: []string{env.Subject("in.>")}}); err != nil {
			t.Fatal(err)
		}
		dl := &natsjs.DeadLetterer{JS: env.JS, Subject: env.Subject("dlq.x")}
		for i := range 3 {
			err := dl.PublishLetter(ctx, natsjs.Letter{Subject: env.Subject("in.x"), Data: []byte(`{"n":` + strconv.Itoa(i) + `}`),
				Stream: target, Sequence: uint64(i + 1), Attempts: 3, Reason: consumer.ReasonExhausted, Err: errors.New("timeout")})
			if err != nil {
				t.Fatal(err)
			}
		}
		code, out, errOut := runCLI(t, "dlq", "list", "-nats", env.URL, "-stream", dlqName, "-subject", env.Subject("dlq.x"))
		if code != exitOK || fmt.Sprint(listSeqs(t, out)) != "[1 2 3]" {
			t.Fatalf("list: exit %d\n%s\n%s", code, out, errOut)
		}
		_, out, _ = runCLI(t, "dlq", "show", "-nats", env.URL, "-stream", dlqName, "2")
		if strings.Contains(out, "Nats-Sequence") || strings.Contains(out, "Nats-Time-Stamp") || !strings.Contains(out, `"n": 1`) {
			t.Errorf("show via direct get:\n%s", out)
		}
		st, err := replay(ctx, env.JS, replayOptions{Stream: dlqName, Seq: 2}, &bytes.Buffer{})
		if err != nil || st.Replayed != 1 {
			t.Fatalf("replay: %+v %v", st, err)
		}
		s, err := env.JS.Stream(ctx, target)
		if err != nil {
			t.Fatal(err)
		}
		m, err := s.GetMsg(ctx, 1)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"Nats-Stream", "Nats-Sequence", "Nats-Time-Stamp", "Nats-Subject"} {
			if v := m.Header.Get(k); v != "" {
				t.Errorf("replayed message carries %s: %q", k, v)
			}
		}
		if string(m.Data) != `{"n":1}` || m.Header.Get("Nats-Msg-Id") != "replay."+dlqName+".2" {
			t.Errorf("replayed %q, id %q", m.Data, m.Header.Get("Nats-Msg-Id"))
		}
	})
}

// TestDLQRoutes: replay and purge select dead letters by the subject (route)
// they are stored on, like list -subject.
func TestDLQRoutes(t *testing.T) {
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newDLQFixture(t, env)
		other := env.Subject("dlq.other")
		code, _, errOut := f.cli(t, "dlq", "replay", "-all", "-subject", other, "-dry-run")
		if code != exitOK || !strings.Contains(errOut, "2 selected") {
			t.Fatalf("replay -subject -dry-run: exit %d, %q", code, errOut)
		}
		code, _, errOut = f.cli(t, "dlq", "replay", "-seq", "1", "-subject", other, "-dry-run")
		if code == exitOK || !strings.Contains(errOut, "not on") {
			t.Fatalf("replay -seq of a letter on another route: exit %d, %q", code, errOut)
		}
		code, out, errOut := f.cli(t, "dlq", "purge", "-subject", other, "-yes")
		if code != exitOK || !strings.Contains(out, "deleted 2 messages") {
			t.Fatalf("purge -subject: exit %d, %q %q", code, out, errOut)
		}
		if got := f.seqs(t); fmt.Sprint(got) != "[1 2 5]" {
			t.Fatalf("after purge -subject %s: %v", other, got)
		}
	})
}
