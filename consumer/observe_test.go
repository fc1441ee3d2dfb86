package consumer_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/retry"
)

// recorder is an Observer that writes down every call, and checks that each
// End gets the context its Start returned.
type recorder struct {
	mu     sync.Mutex
	events []string
	dels   []consumer.Delivery
	bad    []string
}

type ctxKey string

func (r *recorder) add(s string) {
	r.mu.Lock()
	r.events = append(r.events, s)
	r.mu.Unlock()
}

func (r *recorder) check(ctx context.Context, key ctxKey) {
	if ctx.Value(key) == nil {
		r.mu.Lock()
		r.bad = append(r.bad, string(key))
		r.mu.Unlock()
	}
}

func (r *recorder) StartMessage(ctx context.Context, m *consumer.Message) context.Context {
	r.add("start")
	return context.WithValue(ctx, ctxKey("message"), true)
}

func (r *recorder) StartStore(ctx context.Context, m *consumer.Message, op consumer.StoreOp) context.Context {
	r.check(ctx, "message")
	r.add("store:" + op.String())
	return context.WithValue(ctx, ctxKey("store"), true)
}

func (r *recorder) EndStore(ctx context.Context, m *consumer.Message, op consumer.StoreOp, d time.Duration, err error) {
	r.check(ctx, "store")
	if d < 0 {
		r.add("negative duration")
	}
	if err != nil {
		r.add("end:" + op.String() + ":err")
		return
	}
	r.add("end:" + op.String())
}

func (r *recorder) StartHandler(ctx context.Context, m *consumer.Message) context.Context {
	r.check(ctx, "message")
	r.add("handler")
	return context.WithValue(ctx, ctxKey("handler"), true)
}

func (r *recorder) EndHandler(ctx context.Context, m *consumer.Message, d time.Duration, err error) {
	r.check(ctx, "handler")
	if err != nil {
		r.add("handled:err")
		return
	}
	r.add("handled")
}

func (r *recorder) EndMessage(ctx context.Context, m *consumer.Message, d consumer.Delivery) {
	r.check(ctx, "message")
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, fmt.Sprintf("end:%v:%v", d.Outcome.Action, d.Claim))
	r.dels = append(r.dels, d)
}

func (r *recorder) take() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := strings.Join(r.events, " ")
	r.events = nil
	return s
}

func TestObserverSeesEachStep(t *testing.T) {
	rec := &recorder{}
	store := &faultyStore{Store: memstore.New(memstore.Config{})}
	handlerSawSpan := false
	p := newPipeline(t, consumer.Config{Guard: guard(store), Observer: rec}, func(ctx context.Context, m *consumer.Message) error {
		handlerSawSpan = ctx.Value(ctxKey("handler")) != nil
		switch string(m.Header["Idempotency-Key"][0]) {
		case "fail":
			return errBoom
		case "perm":
			return retry.Permanent(errBoom)
		}
		return nil
	})
	ctx := context.Background()
	steps := []struct {
		name string
		m    *consumer.Message
		want string
	}{
		{"success", msg("k", 1), "start store:claim end:claim handler handled store:complete end:complete end:ack:acquired"},
		{"duplicate", msg("k", 1), "start store:claim end:claim end:ack:duplicate"},
		{"conflict", func() *consumer.Message {
			m := msg("k", 1)
			m.Data = []byte(`{"order":"o-2"}`)
			return m
		}(), "start store:claim end:claim end:dead_letter:conflict"},
		{"transient", msg("fail", 1), "start store:claim end:claim handler handled:err store:release end:release end:retry:acquired"},
		{"permanent", msg("perm", 1), "start store:claim end:claim handler handled:err store:delete end:delete end:dead_letter:acquired"},
		{"invalid", &consumer.Message{ID: "x", Data: []byte("{}"), Attempt: 1}, "start store:claim end:claim:err end:dead_letter:invalid"},
	}
	for _, s := range steps {
		p.Process(ctx, s.m)
		if got := rec.take(); got != s.want {
			t.Errorf("%s: observed\n  %s\nwant\n  %s", s.name, got, s.want)
		}
	}
	if !handlerSawSpan {
		t.Error("the handler did not get StartHandler's context")
	}
	if len(rec.bad) > 0 {
		t.Errorf("End calls without their Start's context: %v", rec.bad)
	}

	store.claimErr = errBoom
	p.Process(ctx, msg("down", 1))
	if got, want := rec.take(), "start store:claim end:claim:err end:retry:store_error"; got != want {
		t.Errorf("store down: observed %q, want %q", got, want)
	}
	d := rec.dels[len(rec.dels)-1]
	if d.Outcome.Unavailable != consumer.StoreUnavailable || d.Duration <= 0 {
		t.Errorf("store down delivery %+v", d)
	}
}

func TestObserverFailedDeadLetterReleasesTheClaim(t *testing.T) {
	rec := &recorder{}
	p := newPipeline(t, consumer.Config{
		Guard:      guard(memstore.New(memstore.Config{})),
		Observer:   rec,
		DeadLetter: func(context.Context, *consumer.Message, consumer.DeadLetterInfo) error { return errBoom },
	}, func(ctx context.Context, m *consumer.Message) error { return retry.Permanent(errBoom) })
	p.Process(context.Background(), msg("k", 1))
	if got, want := rec.take(), "start store:claim end:claim handler handled:err store:release end:release end:retry:acquired"; got != want {
		t.Errorf("observed %q, want %q", got, want)
	}
	if d := rec.dels[0]; d.Outcome.Unavailable != consumer.DeadLetterUnavailable || d.Outcome.Reason != consumer.ReasonPermanent {
		t.Errorf("delivery %+v, want a retry marked dead_letter unavailable", d)
	}
}

func TestObserverWithoutGuardTakesTheHandlersClaim(t *testing.T) {
	var got []consumer.Delivery
	p := newPipeline(t, consumer.Config{Observer: consumer.OutcomeFunc(func(m *consumer.Message, d consumer.Delivery) {
		got = append(got, d)
	})}, func(ctx context.Context, m *consumer.Message) error {
		if m.Attempt == 2 {
			m.SetClaim(consumer.ClaimDuplicate)
		}
		return nil
	})
	p.Process(context.Background(), msg("k", 1))
	p.Process(context.Background(), msg("k", 2))
	if len(got) != 2 || got[0].Claim != 0 || got[1].Claim != consumer.ClaimDuplicate || got[1].Outcome.Action != consumer.Ack {
		t.Fatalf("deliveries %+v", got)
	}
}

func TestObserverSeesTakeoverAndExtend(t *testing.T) {
	store := memstore.New(memstore.Config{})
	g := guard(store)
	g.Lease = 30 * time.Millisecond
	g.Retention = time.Hour
	// A first attempt that crashed: its claim lapses with its lease.
	if _, err := g.Claim(context.Background(), dedupe.Input{Header: msg("k", 1).Header, Data: msg("k", 1).Data}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(40 * time.Millisecond)
	rec := &recorder{}
	p := newPipeline(t, consumer.Config{Guard: g, Observer: rec, HeartbeatInterval: 5 * time.Millisecond},
		func(ctx context.Context, m *consumer.Message) error {
			time.Sleep(30 * time.Millisecond)
			return nil
		})
	p.Process(context.Background(), msg("k", 2))
	got := rec.take()
	if !strings.HasPrefix(got, "start store:claim end:claim handler store:extend end:extend") ||
		!strings.HasSuffix(got, "handled store:complete end:complete end:ack:takeover") {
		t.Fatalf("observed %q", got)
	}
	if len(rec.bad) > 0 {
		t.Errorf("End calls without their Start's context: %v", rec.bad)
	}
}

func TestObserverPanicAndInterrupt(t *testing.T) {
	rec := &recorder{}
	p := newPipeline(t, consumer.Config{Observer: rec}, func(ctx context.Context, m *consumer.Message) error {
		if m.Attempt == 1 {
			panic("kaboom")
		}
		<-ctx.Done()
		return ctx.Err()
	})
	p.Process(context.Background(), msg("k", 1))
	if got, want := rec.take(), "start handler handled:err end:retry:"; got != want {
		t.Errorf("panic: observed %q, want %q", got, want)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	p.Process(ctx, msg("k", 2))
	rec.take()
	if d := rec.dels[len(rec.dels)-1]; !d.Outcome.Interrupted {
		t.Errorf("shutdown delivery %+v, want Interrupted", d)
	}
}

func TestStringsOfObserverValues(t *testing.T) {
	ops := map[consumer.StoreOp]string{consumer.StoreClaim: "claim", consumer.StoreComplete: "complete",
		consumer.StoreRelease: "release", consumer.StoreDelete: "delete", consumer.StoreExtend: "extend", consumer.StoreSnooze: "snooze", 9: "StoreOp(9)"}
	for op, want := range ops {
		if op.String() != want {
			t.Errorf("%d: %q, want %q", op, op.String(), want)
		}
	}
	claims := map[consumer.ClaimResult]string{0: "", consumer.ClaimAcquired: "acquired", consumer.ClaimTakeover: "takeover",
		consumer.ClaimDuplicate: "duplicate", consumer.ClaimBusy: "busy", consumer.ClaimConflict: "conflict",
		consumer.ClaimInvalid: "invalid", consumer.ClaimStoreError: "store_error", 42: "ClaimResult(42)"}
	for c, want := range claims {
		if c.String() != want {
			t.Errorf("%d: %q, want %q", c, c.String(), want)
		}
	}
}

// TestNoObserverAllocatesNothingMore checks that a nil Observer adds no
// allocation to a duplicate delivery (the cheapest path) compared with the
// same pipeline's own cost, by counting allocations with and without.
func TestNoObserverAllocatesNothing(t *testing.T) {
	// Without a fingerprint: its pooled buffers make allocation counts vary
	// under -race, where sync.Pool drops items at random.
	plain := func() *dedupe.Guard {
		g := guard(memstore.New(memstore.Config{}))
		g.Fingerprint, g.NoFingerprint = nil, true
		return g
	}
	p := newPipeline(t, consumer.Config{Guard: plain()}, func(ctx context.Context, m *consumer.Message) error { return nil })
	ctx := context.Background()
	m := msg("k", 1)
	p.Process(ctx, m)
	base := testing.AllocsPerRun(200, func() { p.Process(ctx, m) })
	withNop := newPipeline(t, consumer.Config{Guard: plain(), Observer: consumer.NopObserver{}},
		func(ctx context.Context, m *consumer.Message) error { return nil })
	withNop.Process(ctx, m)
	nop := testing.AllocsPerRun(200, func() { withNop.Process(ctx, m) })
	if nop != base {
		t.Errorf("a duplicate costs %v allocations with NopObserver, %v without: the hook itself must not allocate", nop, base)
	}
}

// BenchmarkProcessObserver compares a delivery (acquire, run, complete on
// memstore) with no Observer, with NopObserver and with OutcomeFunc.
func BenchmarkProcessObserver(b *testing.B) {
	for _, tc := range []struct {
		name string
		obs  consumer.Observer
	}{
		{"none", nil},
		{"nop", consumer.NopObserver{}},
		{"outcome-func", consumer.OutcomeFunc(func(*consumer.Message, consumer.Delivery) {})},
	} {
		b.Run(tc.name, func(b *testing.B) {
			g := &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.MessageIDKey(), NoFingerprint: true}
			p, err := consumer.NewPipeline(consumer.Config{Guard: g, Observer: tc.obs, Logger: quiet(), HeartbeatInterval: -1},
				func(ctx context.Context, m *consumer.Message) error { return nil })
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			ids := make([]string, b.N)
			for i := range ids {
				ids[i] = fmt.Sprint("m", i)
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				out := p.Process(ctx, &consumer.Message{ID: ids[i], Attempt: 1})
				if out.Action != consumer.Ack {
					b.Fatal(out)
				}
			}
		})
	}
}

// BenchmarkProcess is one delivery as natsjs runs it by default: a
// heartbeat armed (KeepAlive set, the default interval), without a guard
// and with a guard on memstore (default fingerprint of a ~200-byte JSON
// payload), a fresh key per delivery. It measures the pipeline's own CPU
// and allocations per message; the store's are in memstore's benchmarks.
func BenchmarkProcess(b *testing.B) {
	data := []byte(`{"payment_id":"p-000001","account":"acct-42","amount":{"value":1999,"currency":"EUR"},"merchant":"m-7","created_at":"2026-12-01T10:00:00Z","memo":"invoice 12345"}`)
	for _, tc := range []struct {
		name  string
		guard bool
	}{{"no-guard", false}, {"memstore", true}} {
		b.Run(tc.name, func(b *testing.B) {
			cfg := consumer.Config{Logger: quiet(), HeartbeatInterval: 15 * time.Second}
			if tc.guard {
				cfg.Guard = &dedupe.Guard{Store: memstore.New(memstore.Config{}), Key: dedupe.HeaderKey("Idempotency-Key"), Lease: time.Minute}
			}
			p, err := consumer.NewPipeline(cfg, func(ctx context.Context, m *consumer.Message) error { return nil })
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			keys := make([]map[string][]string, b.N)
			for i := range keys {
				keys[i] = map[string][]string{"Idempotency-Key": {fmt.Sprint("k", i)}}
			}
			keepAlive := func(context.Context) error { return nil }
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				out := p.Process(ctx, &consumer.Message{ID: "S:1", Header: keys[i], Data: data, Attempt: 1, KeepAlive: keepAlive})
				if out.Action != consumer.Ack {
					b.Fatal(out)
				}
			}
		})
	}
}

// durations is an Observer that writes down the durations it is given,
// and, with timings set, declares that it uses only those.
type durations struct {
	consumer.NopObserver
	mu                sync.Mutex
	store             []time.Duration
	handler, delivery time.Duration
	timings           consumer.Timings
}

func (o *durations) EndStore(_ context.Context, _ *consumer.Message, _ consumer.StoreOp, d time.Duration, _ error) {
	o.mu.Lock()
	o.store = append(o.store, d)
	o.mu.Unlock()
}

func (o *durations) EndHandler(_ context.Context, _ *consumer.Message, d time.Duration, _ error) {
	o.mu.Lock()
	o.handler = d
	o.mu.Unlock()
}

func (o *durations) EndMessage(_ context.Context, _ *consumer.Message, d consumer.Delivery) {
	o.mu.Lock()
	o.delivery = d.Duration
	o.mu.Unlock()
}

// timingObserver is durations that implements consumer.TimingObserver.
type timingObserver struct{ *durations }

func (o timingObserver) Timings() consumer.Timings { return o.timings }

// slowStore takes at least a millisecond for each claim and completion, so
// that the durations measured of them are positive.
type slowStore struct{ dedupe.Store }

func (s slowStore) Claim(ctx context.Context, key, fp string, lease, retention time.Duration) (dedupe.Claim, error) {
	time.Sleep(time.Millisecond)
	return s.Store.Claim(ctx, key, fp, lease, retention)
}

func (s slowStore) Complete(ctx context.Context, key, token string, res dedupe.Result, retention time.Duration) error {
	time.Sleep(time.Millisecond)
	return s.Store.Complete(ctx, key, token, res, retention)
}

// An Observer gets every duration, and one implementing TimingObserver
// only those it declares (0 for the others).
func TestObserverTimings(t *testing.T) {
	cases := []struct {
		name     string
		declares bool
		timings  consumer.Timings
	}{
		{"all by default", false, 0},
		{"none", true, 0},
		{"store", true, consumer.TimeStore},
		{"handler", true, consumer.TimeHandler},
		{"delivery", true, consumer.TimeDelivery},
		{"all", true, consumer.TimeAll},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := &durations{timings: tc.timings}
			var obs consumer.Observer = rec
			want := consumer.TimeAll
			if tc.declares {
				obs, want = timingObserver{rec}, tc.timings
			}
			p := newPipeline(t, consumer.Config{Guard: guard(slowStore{memstore.New(memstore.Config{})}), Observer: obs},
				func(context.Context, *consumer.Message) error { time.Sleep(time.Millisecond); return nil })
			m := &consumer.Message{ID: "m1", Header: map[string][]string{"Idempotency-Key": {"k1"}}, Data: []byte(`{}`), Attempt: 1}
			if out := p.Process(context.Background(), m); out.Action != consumer.Ack {
				t.Fatalf("outcome %+v", out)
			}
			check := func(what string, d time.Duration, measured bool) {
				t.Helper()
				if measured && d < time.Millisecond || !measured && d != 0 {
					t.Errorf("%s duration %v, want measured: %v", what, d, measured)
				}
			}
			if len(rec.store) != 2 {
				t.Fatalf("%d store durations, want 2 (claim, complete)", len(rec.store))
			}
			for _, d := range rec.store {
				check("store", d, want&consumer.TimeStore != 0)
			}
			check("handler", rec.handler, want&consumer.TimeHandler != 0)
			check("delivery", rec.delivery, want&consumer.TimeDelivery != 0)
		})
	}
}

func TestOutcomeFuncTimings(t *testing.T) {
	if got := (consumer.OutcomeFunc(nil)).Timings(); got != consumer.TimeDelivery {
		t.Errorf("OutcomeFunc timings %v, want TimeDelivery", got)
	}
}
