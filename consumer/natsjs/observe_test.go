package natsjs_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/integration/harness"
)

// downStore is a store that fails every call, and its Ping, while down.
type downStore struct {
	dedupe.Store
	down atomic.Bool
}

var errDown = errors.New("store down")

func (s *downStore) Claim(ctx context.Context, key, fp string, lease, retention time.Duration) (dedupe.Claim, error) {
	if s.down.Load() {
		return dedupe.Claim{}, errDown
	}
	return s.Store.Claim(ctx, key, fp, lease, retention)
}

func (s *downStore) Ping(context.Context) error {
	if s.down.Load() {
		return errDown
	}
	return nil
}

// pauseRecorder records deliveries and pauses.
type pauseRecorder struct {
	consumer.NopObserver
	mu          sync.Mutex
	claims      map[consumer.ClaimResult]int
	seqs        []uint64
	outcomes    []consumer.Outcome
	deadLetters []observedLetter
	paused      []consumer.Dependency
	resumed     []consumer.Dependency
	pausedFr    []time.Duration
}

func (r *pauseRecorder) EndMessage(_ context.Context, m *consumer.Message, d consumer.Delivery) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.claims == nil {
		r.claims = map[consumer.ClaimResult]int{}
	}
	r.claims[d.Claim]++
	r.seqs = append(r.seqs, m.Sequence)
	r.outcomes = append(r.outcomes, d.Outcome)
}

// observedLetter is one DeadLettered call.
type observedLetter struct {
	seq    uint64
	reason consumer.Reason
	err    error
}

func (r *pauseRecorder) DeadLettered(_ context.Context, m *consumer.Message, reason consumer.Reason, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.deadLetters = append(r.deadLetters, observedLetter{seq: m.Sequence, reason: reason, err: err})
}

func (r *pauseRecorder) Paused(_ context.Context, dep consumer.Dependency, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.paused = append(r.paused, dep)
}

func (r *pauseRecorder) Resumed(_ context.Context, dep consumer.Dependency, d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.resumed = append(r.resumed, dep)
	r.pausedFr = append(r.pausedFr, d)
}

func (r *pauseRecorder) snapshot() (claims map[consumer.ClaimResult]int, paused, resumed []consumer.Dependency, seqs []uint64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	claims = map[consumer.ClaimResult]int{}
	for k, v := range r.claims {
		claims[k] = v
	}
	return claims, append([]consumer.Dependency(nil), r.paused...), append([]consumer.Dependency(nil), r.resumed...), append([]uint64(nil), r.seqs...)
}

// TestObserverSeesPauseAndResume: with the store down the consumer pauses
// once and tells the Observer; when the store answers again it resumes,
// tells it, and the held messages are processed.
func TestObserverSeesPauseAndResume(t *testing.T) {
	t.Parallel()
	env := harness.NATS(t)
	f := newFixture(t, env)
	store := &downStore{Store: memstore.New(memstore.Config{})}
	store.down.Store(true)
	rec := &pauseRecorder{}
	cfg := f.config()
	cfg.Store = store
	cfg.Pipeline.Observer = rec
	var ran atomic.Int32
	c := newConsumer(t, env, cfg, func(ctx context.Context, m *consumer.Message) error { ran.Add(1); return nil })
	for _, k := range []string{"a", "b", "c", "d"} {
		f.publish(t, k, `{}`, nil)
	}
	start(t, c)
	eventually(t, "a pause", func() bool { _, p, _, _ := rec.snapshot(); return len(p) == 1 })
	if ran.Load() != 0 {
		t.Fatalf("the handler ran %d times while the store was down", ran.Load())
	}
	store.down.Store(false)
	f.waitSettled(t)
	eventually(t, "every message acquired", func() bool { c, _, _, _ := rec.snapshot(); return c[consumer.ClaimAcquired] == 4 })
	claims, paused, resumed, seqs := rec.snapshot()
	if len(paused) != 1 || paused[0] != consumer.StoreUnavailable || len(resumed) != 1 || resumed[0] != consumer.StoreUnavailable {
		t.Errorf("paused %v, resumed %v: want one pause and one resumption for the store", paused, resumed)
	}
	if claims[consumer.ClaimStoreError] < 3 {
		t.Errorf("claims %v: want at least 3 store errors before the pause", claims)
	}
	for _, s := range seqs {
		if s < 1 || s > 4 {
			t.Errorf("delivery with stream sequence %d, want 1..4", s)
		}
	}
}
