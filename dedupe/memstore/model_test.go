package memstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/storekit"
	"github.com/idemq/idemq/dedupe/storetest"
)

// model is the state machine as storekit runs it, on dedupe.Records in a
// map that never forgets: what the store must answer.
type model struct {
	recs map[string]*dedupe.Record
	now  func() time.Time
}

func (m *model) Claim(key, fp string, lease, retention time.Duration) dedupe.Claim {
	c, next := storekit.Decide(m.recs[key], key, fp, m.now(), lease, retention)
	if next != nil {
		m.recs[key] = next
	}
	return c
}

func (m *model) apply(key string, f func(*dedupe.Record) (*dedupe.Record, error)) error {
	next, err := f(m.recs[key])
	if err == nil {
		m.recs[key] = next
	}
	return err
}

// TestMatchesStorekit runs random operations — claims, completions,
// releases, snoozes, deletes, extensions, with tokens current, stale,
// borrowed from other keys and made up, and a clock that stands still or
// jumps past leases and retentions — against the store and against
// storekit's state machine, and requires the same answer every time. Tiny
// arena chunks and a small MaxKeys make the store sweep, compact, reindex
// and give private chunks back all the time; the store's internal
// invariants are checked after every operation.
func TestMatchesStorekit(t *testing.T) {
	for _, shards := range []int{1, 4} {
		for seed := range uint64(6) {
			t.Run(fmt.Sprintf("shards=%d/seed=%d", shards, seed), func(t *testing.T) {
				runModel(t, shards, seed, 40, 4000, 1)
			})
		}
	}
	// More records than a page holds, so that removals move records
	// across pages.
	t.Run("pages", func(t *testing.T) {
		runModel(t, 1, 99, 3*pageSize, 30_000, 97)
	})
}

// runModel runs steps random operations on nkeys keys, checking the
// store's invariants every checkEvery steps.
func runModel(t *testing.T, shards int, seed uint64, nkeys, steps, checkEvery int) {
	rnd := rand.New(rand.NewPCG(seed, 0x5eed))
	var clock storetest.Clock
	s := newStore(Config{Now: clock.Now, Shards: shards, MaxKeys: nkeys * 3 / 2}, 256)
	m := &model{recs: map[string]*dedupe.Record{}, now: clock.Now}
	ctx := context.Background()

	keys := make([]string, nkeys)
	for i := range keys {
		keys[i] = fmt.Sprintf("k%d", i) + strings.Repeat("x", rnd.IntN(3)*rnd.IntN(120))
	}
	fps := []string{"", "a", "b", strings.Repeat("f", 70)}
	durs := []time.Duration{time.Millisecond, time.Second, 5 * time.Second, time.Minute}
	// Tokens: the store's text and the model's, per key, in issue order.
	type tok struct{ store, model string }
	toks := map[string][]tok{}
	lastFence := map[string]uint64{}
	var all []tok

	pickToken := func(key string) tok {
		ks := toks[key]
		switch r := rnd.IntN(10); {
		case r < 6 && len(ks) > 0:
			return ks[len(ks)-1]
		case r < 7 && len(ks) > 0:
			return ks[rnd.IntN(len(ks))]
		case r < 8 && len(all) > 0:
			return all[rnd.IntN(len(all))]
		case r < 9:
			// Never issued: a sequence number the test does not reach,
			// zero, upper-case digits.
			made := []string{"", "wrong", "ffffffffffffff00", "0000000000000000", fmt.Sprintf("%016X", uint64(0xab)<<s.bits)}
			x := made[rnd.IntN(len(made))]
			return tok{x, x}
		}
		return tok{"", ""}
	}
	result := func() dedupe.Result {
		var data []byte
		switch rnd.IntN(5) {
		case 1:
			data = []byte{}
		case 2:
			data = []byte(fmt.Sprint("r", rnd.IntN(100)))
		case 3:
			data = bytes.Repeat([]byte{byte(rnd.IntN(256))}, 60+rnd.IntN(200))
		case 4:
			data = bytes.Repeat([]byte{'z'}, 1000)
		}
		return dedupe.Result{Failed: rnd.IntN(3) == 0, Data: data}
	}
	sameErr := func(step int, op string, got, want error) {
		t.Helper()
		if (got == nil) != (want == nil) || (want != nil && !errors.Is(got, dedupe.ErrLeaseLost)) {
			t.Fatalf("step %d: %s: store %v, storekit %v", step, op, got, want)
		}
	}

	for step := range steps {
		key := keys[rnd.IntN(len(keys))]
		switch op := rnd.IntN(14); {
		case op < 5:
			fp := fps[rnd.IntN(len(fps))]
			lease := durs[rnd.IntN(len(durs))]
			retention := lease * time.Duration(1+rnd.IntN(3))
			prev := m.recs[key]
			reset := !prev.Live(clock.Now()) || prev.State != dedupe.StateInProgress
			got, err := s.Claim(ctx, key, fp, lease, retention)
			if err != nil {
				t.Fatalf("step %d: Claim(%q): %v", step, key, err)
			}
			want := m.Claim(key, fp, lease, retention)
			if got.Status != want.Status || got.Takeover != want.Takeover || got.Attempt != want.Attempt ||
				got.RetryAfter != want.RetryAfter || got.Fingerprint != want.Fingerprint ||
				got.Result.Failed != want.Result.Failed || !bytes.Equal(got.Result.Data, want.Result.Data) ||
				(got.Token == "") != (want.Token == "") || (got.Fence == 0) != (want.Fence == 0) {
				t.Fatalf("step %d: Claim(%q, %q):\nstore    %+v\nstorekit %+v", step, key, fp, got, want)
			}
			if got.Status == dedupe.Acquired {
				if !reset && got.Fence <= lastFence[key] {
					t.Fatalf("step %d: Claim(%q): fence %d, not above the record's last %d", step, key, got.Fence, lastFence[key])
				}
				lastFence[key] = got.Fence
				tk := tok{got.Token, want.Token}
				toks[key] = append(toks[key], tk)
				all = append(all, tk)
			}
		case op < 8:
			tk, res, retention := pickToken(key), result(), durs[rnd.IntN(len(durs))]
			err := s.Complete(ctx, key, tk.store, res, retention)
			want := m.apply(key, func(r *dedupe.Record) (*dedupe.Record, error) {
				return storekit.CompleteRecord(r, tk.model, dedupe.Result{Failed: res.Failed, Data: bytes.Clone(res.Data)}, clock.Now(), retention)
			})
			sameErr(step, "Complete", err, want)
			if len(res.Data) > 0 {
				res.Data[0]++ // the store must hold its own copy
			}
		case op < 9:
			tk := pickToken(key)
			sameErr(step, "Release", s.Release(ctx, key, tk.store), m.apply(key, func(r *dedupe.Record) (*dedupe.Record, error) {
				return storekit.ReleaseRecord(r, tk.model, clock.Now())
			}))
		case op < 10:
			tk := pickToken(key)
			sameErr(step, "Snooze", s.Snooze(ctx, key, tk.store), m.apply(key, func(r *dedupe.Record) (*dedupe.Record, error) {
				return storekit.SnoozeRecord(r, tk.model, clock.Now())
			}))
		case op < 11:
			tk := pickToken(key)
			err := s.Delete(ctx, key, tk.store)
			want := storekit.DeleteRecord(m.recs[key], tk.model, clock.Now())
			if want == nil {
				delete(m.recs, key)
			}
			sameErr(step, "Delete", err, want)
		case op < 12:
			tk, lease := pickToken(key), durs[rnd.IntN(len(durs))]
			sameErr(step, "Extend", s.Extend(ctx, key, tk.store, lease), m.apply(key, func(r *dedupe.Record) (*dedupe.Record, error) {
				return storekit.ExtendRecord(r, tk.model, clock.Now(), lease)
			}))
		default:
			clock.Advance([]time.Duration{0, time.Millisecond, time.Second, 3 * time.Second, time.Minute, 2 * time.Minute}[rnd.IntN(6)])
			if rnd.IntN(4) == 0 {
				s.sweepEvery(clock.Now().UnixNano()) // what a full store does
			}
		}
		if step%checkEvery == 0 {
			checkInvariants(t, s, step)
		}
	}
	checkInvariants(t, s, steps)
}

// checkInvariants fails unless every shard's index, records, leases and
// arena agree with one another and with the store's count.
func checkInvariants(t *testing.T, s *Store, step int) {
	t.Helper()
	total := 0
	for si := range s.shards {
		sh := &s.shards[si]
		sh.mu.Lock()
		total += sh.recs.len()
		used := 0
		m := uint32(len(sh.idx) - 1)
		if len(sh.idx) > 0 && len(sh.ctrl) != len(sh.idx)+ctrlGroup {
			t.Fatalf("step %d: shard %d: %d control bytes for %d slots", step, si, len(sh.ctrl), len(sh.idx))
		}
		if len(sh.idx) > 0 && (sh.ctrlAt.Load() != uintptr(unsafe.Pointer(&sh.ctrl[0])) || sh.idxAt.Load() != uintptr(unsafe.Pointer(&sh.idx[0])) || sh.ctrlMask.Load() != m) {
			t.Fatalf("step %d: shard %d: hint's tables %#x, %#x and mask %#x are not the index's", step, si, sh.ctrlAt.Load(), sh.idxAt.Load(), sh.ctrlMask.Load())
		}
		for q := range min(len(sh.idx), ctrlGroup) {
			if sh.ctrl[len(sh.idx)+q] != sh.ctrl[q] {
				t.Fatalf("step %d: shard %d: control byte %d is %#x, its clone %#x", step, si, q, sh.ctrl[q], sh.ctrl[len(sh.idx)+q])
			}
		}
		for p, v := range sh.idx {
			if (v == 0) != (sh.ctrl[p] == 0) {
				t.Fatalf("step %d: shard %d: index slot %#x has control byte %#x", step, si, v, sh.ctrl[p])
			}
			if v != 0 {
				used++
				if int(v&m) > sh.recs.len() || v&m == 0 || v&^m != sh.recs.at(int(v&m)-1).hash&^m {
					t.Fatalf("step %d: shard %d: index slot %#x: record %d of %d, or the wrong tag", step, si, v, int(v&m)-1, sh.recs.len())
				}
				if c := ctrlTag(sh.recs.at(int(v&m) - 1).hash); sh.ctrl[p] != c {
					t.Fatalf("step %d: shard %d: index slot %#x has control byte %#x, want %#x", step, si, v, sh.ctrl[p], c)
				}
			}
		}
		if used != sh.indexed || sh.indexed > sh.recs.len() || sh.recs.len()-sh.indexed >= pendBatch || (sh.recs.len() > 0 && sh.recs.len()*4 > len(sh.idx)*3) {
			t.Fatalf("step %d: shard %d: %d index entries in %d slots for %d records, %d indexed", step, si, used, len(sh.idx), sh.recs.len(), sh.indexed)
		}
		for i := sh.indexed; i < sh.recs.len(); i++ {
			if sh.pend&pendBit(sh.recs.at(i).hash) == 0 {
				t.Fatalf("step %d: shard %d: pending record %d not in the pending mask", step, si, i)
			}
		}
		live, private, inProgress := 0, 0, 0
		leaseUsed := map[uint32]bool{}
		for _, f := range sh.freeL {
			leaseUsed[f] = true
		}
		for i := range sh.recs.len() {
			r := sh.recs.at(i)
			k, _, n := sh.arena.key(r.off)
			h := maphash.String(s.seed, string(k))
			if &s.shards[h&s.mask] != sh || uint32(h>>32) != r.hash {
				t.Fatalf("step %d: shard %d: record %q has the wrong hash or shard", step, si, k)
			}
			if got := sh.find(string(k), r.hash); got != i {
				t.Fatalf("step %d: shard %d: find(%q) = %d, want %d", step, si, k, got, i)
			}
			count := func(n int) {
				if sh.arena.big(n) {
					private++
				} else {
					live += n
				}
			}
			count(n)
			switch {
			case r.state() == dedupe.StateInProgress:
				inProgress++
				if int(r.res) >= len(sh.leases) || leaseUsed[r.res] {
					t.Fatalf("step %d: shard %d: record %q has lease %d, used twice or out of %d", step, si, k, r.res, len(sh.leases))
				}
				leaseUsed[r.res] = true
			case r.meta&hasResult != 0:
				data, n := sh.arena.result(r.res)
				if len(data) == 0 {
					t.Fatalf("step %d: shard %d: record %q has an empty result entry", step, si, k)
				}
				count(n)
			}
		}
		if len(leaseUsed) != len(sh.leases) || inProgress+len(sh.freeL) != len(sh.leases) {
			t.Fatalf("step %d: shard %d: %d leases, %d in progress, %d free", step, si, len(sh.leases), inProgress, len(sh.freeL))
		}
		chunks := 0
		for _, c := range sh.arena.chunks {
			if c != nil {
				chunks++
			}
		}
		if live != sh.arena.live || chunks != sh.arena.shared+private || chunks+len(sh.arena.free) != len(sh.arena.chunks) ||
			sh.arena.live > sh.arena.shared*sh.arena.chunk {
			t.Fatalf("step %d: shard %d: arena live %d (records hold %d), %d shared chunks, %d chunks, %d private, %d free of %d",
				step, si, sh.arena.live, live, sh.arena.shared, chunks, private, len(sh.arena.free), len(sh.arena.chunks))
		}
		sh.mu.Unlock()
	}
	if n := s.count.Load(); n != int64(total) {
		t.Fatalf("step %d: count %d, %d records held", step, n, total)
	}
}

// TestCompactionReclaims checks that the arena gives memory back: after a
// generation of keys expires and is swept, the shared chunks in use are
// about what the live records need.
func TestCompactionReclaims(t *testing.T) {
	var clock storetest.Clock
	s := newStore(Config{Now: clock.Now, Shards: 1, MaxKeys: 20_000}, 1024)
	ctx := context.Background()
	fill := func(gen int, n int) {
		for i := range n {
			key := fmt.Sprintf("gen%d-key%05d", gen, i)
			c, err := s.Claim(ctx, key, strings.Repeat("f", 64), time.Second, time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.Complete(ctx, key, c.Token, dedupe.Result{Data: []byte("result")}, time.Minute); err != nil {
				t.Fatal(err)
			}
		}
	}
	fill(0, 10_000)
	clock.Advance(time.Minute)
	fill(1, 100)
	s.sweepEvery(clock.Now().UnixNano())
	checkInvariants(t, s, 0)
	sh := &s.shards[0]
	if sh.recs.len() != 100 {
		t.Fatalf("%d records after the sweep, want 100", sh.recs.len())
	}
	// 100 records of about 100 bytes: a dozen 1 KiB chunks, not the
	// thousand the first generation filled.
	if sh.arena.shared > 20 || len(sh.idx) > 512 || len(sh.recs.pages) != 1 || cap(sh.recs.pages[0]) > 1000 || sh.recs.spare != nil {
		t.Errorf("after the sweep: %d shared chunks, %d index slots, %d record pages, the first of capacity %d, spare %v; want them shrunk",
			sh.arena.shared, len(sh.idx), len(sh.recs.pages), cap(sh.recs.pages[0]), sh.recs.spare != nil)
	}
}

// TestLeasesRepacked checks that the lease table shrinks once most
// in-progress records have completed, and that the leases still held keep
// working.
func TestLeasesRepacked(t *testing.T) {
	var clock storetest.Clock
	s := newStore(Config{Now: clock.Now, Shards: 1, MaxKeys: 1000}, defaultChunk)
	ctx := context.Background()
	tokens := make([]string, 300)
	for i := range tokens {
		c, err := s.Claim(ctx, fmt.Sprint("key-", i), "fp", time.Minute, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		tokens[i] = c.Token
	}
	for i := 10; i < len(tokens); i++ {
		if err := s.Complete(ctx, fmt.Sprint("key-", i), tokens[i], dedupe.Result{}, time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	s.sweepEvery(clock.Now().UnixNano())
	checkInvariants(t, s, 0)
	if n := len(s.shards[0].leases); n != 10 {
		t.Fatalf("%d leases after the sweep, want the 10 in use", n)
	}
	for i := range 10 {
		key := fmt.Sprint("key-", i)
		if err := s.Extend(ctx, key, tokens[i], time.Hour); err != nil {
			t.Fatalf("Extend(%q) after repacking: %v", key, err)
		}
		if i%2 == 0 {
			if err := s.Complete(ctx, key, tokens[i], dedupe.Result{Data: []byte("done")}, time.Hour); err != nil {
				t.Fatalf("Complete(%q) after repacking: %v", key, err)
			}
		} else if c, err := s.Claim(ctx, key, "fp", time.Minute, time.Hour); err != nil || c.Status != dedupe.Busy {
			t.Fatalf("Claim(%q) after repacking: %v %v, want busy", key, c.Status, err)
		}
	}
	checkInvariants(t, s, 1)
}

// TestArenaOutOfChunks checks that a shard whose arena has no chunk number
// left refuses the claim or completion with an error, changing nothing.
func TestArenaOutOfChunks(t *testing.T) {
	var clock storetest.Clock
	// 16-byte chunks: every entry over 4 bytes gets a chunk of its own.
	s := newStore(Config{Now: clock.Now, Shards: 1, MaxKeys: 2 * maxChunks}, 16)
	ctx := context.Background()
	var last dedupe.Claim
	for i := range maxChunks {
		c, err := s.Claim(ctx, fmt.Sprintf("key-%06d", i), "", time.Minute, time.Hour)
		if err != nil {
			t.Fatalf("claim %d: %v", i, err)
		}
		last = c
	}
	if _, err := s.Claim(ctx, "one-more-key", "", time.Minute, time.Hour); err == nil || errors.Is(err, ErrFull) {
		t.Fatalf("claim with no chunk left: %v, want an arena error", err)
	}
	key := fmt.Sprintf("key-%06d", maxChunks-1)
	if err := s.Complete(ctx, key, last.Token, dedupe.Result{Data: []byte("a result")}, time.Hour); err == nil || errors.Is(err, dedupe.ErrLeaseLost) {
		t.Fatalf("complete with no chunk left: %v, want an arena error", err)
	}
	if s.Len() != maxChunks {
		t.Fatalf("Len = %d, want %d", s.Len(), maxChunks)
	}
	checkInvariants(t, s, 0)
	// The record is still in progress, and an empty result needs no chunk.
	if err := s.Complete(ctx, key, last.Token, dedupe.Result{}, time.Hour); err != nil {
		t.Fatalf("complete with an empty result: %v", err)
	}
}

// TestHugeRetention checks that retentions beyond the year 2262 saturate
// rather than overflow into the past.
func TestHugeRetention(t *testing.T) {
	var clock storetest.Clock
	s := New(Config{Now: clock.Now})
	ctx := context.Background()
	forever := time.Duration(math.MaxInt64)
	c, err := s.Claim(ctx, "k", "fp", forever, forever)
	if err != nil || c.Status != dedupe.Acquired {
		t.Fatalf("claim: %v %v", c.Status, err)
	}
	clock.Advance(200 * 365 * 24 * time.Hour)
	if c, err := s.Claim(ctx, "k", "fp", time.Second, time.Second); err != nil || c.Status != dedupe.Busy {
		t.Fatalf("claim 200 years into an endless lease: %v %v, want busy", c.Status, err)
	}
	if err := s.Complete(ctx, "k", c.Token, dedupe.Result{Data: []byte("x")}, forever); err != nil {
		t.Fatal(err)
	}
	clock.Advance(25 * 365 * 24 * time.Hour) // 2255: Unix nanoseconds still fit
	if c, err := s.Claim(ctx, "k", "fp", time.Second, time.Second); err != nil || c.Status != dedupe.Duplicate {
		t.Fatalf("claim 25 years into an endless retention: %v %v, want duplicate", c.Status, err)
	}
}

// TestArenaBoundedWithoutInserts checks that records rewritten in place —
// a key claimed again after its retention, with a new fingerprint and a new
// result every time — do not grow the arena, although no new key ever
// makes the store sweep.
func TestArenaBoundedWithoutInserts(t *testing.T) {
	var clock storetest.Clock
	s := newStore(Config{Now: clock.Now, Shards: 1, MaxKeys: 100}, 256)
	ctx := context.Background()
	peak := 0
	for round := range 3000 {
		for k := range 10 {
			key := fmt.Sprint("key-", k)
			c, err := s.Claim(ctx, key, fmt.Sprint("fp-", round), time.Second, time.Second)
			if err != nil || c.Status != dedupe.Acquired {
				t.Fatalf("round %d: claim %q: %v %v", round, key, c.Status, err)
			}
			if round%2 == 0 { // and a release, to claim again at once
				if err := s.Release(ctx, key, c.Token); err != nil {
					t.Fatal(err)
				}
				if c, err = s.Claim(ctx, key, fmt.Sprint("fp-", round, "-again"), time.Second, time.Second); err != nil {
					t.Fatal(err)
				}
			}
			if err := s.Complete(ctx, key, c.Token, dedupe.Result{Data: []byte(fmt.Sprintf("result %040d", round))}, time.Second); err != nil {
				t.Fatal(err)
			}
		}
		clock.Advance(time.Second)
		peak = max(peak, s.shards[0].arena.shared)
	}
	checkInvariants(t, s, 0)
	// 10 records of about 70 bytes of key entry and result each: a few
	// 256-byte chunks live, and as many dead at most before compaction.
	if peak > 20 {
		t.Errorf("the arena grew to %d shared chunks for 10 records", peak)
	}
}

// TestConcurrentChurn runs goroutines that claim, complete, release, snooze
// and delete overlapping keys while the clock moves and tiny chunks and a
// small MaxKeys make shards sweep, compact and reindex under them (run it
// with -race); then every shard must still be consistent, and every key
// completed last must replay its result.
func TestConcurrentChurn(t *testing.T) {
	var clock storetest.Clock
	s := newStore(Config{Now: clock.Now, Shards: 4, MaxKeys: 300}, 256)
	ctx := context.Background()
	const workers, rounds, nkeys = 6, 3000, 200
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rnd := rand.New(rand.NewPCG(uint64(w), 7))
			for i := range rounds {
				key := fmt.Sprint("key-", rnd.IntN(nkeys))
				c, err := s.Claim(ctx, key, fmt.Sprint("fp-", rnd.IntN(3)), time.Second, 2*time.Second)
				if errors.Is(err, ErrFull) {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				if c.Status != dedupe.Acquired {
					continue
				}
				switch rnd.IntN(5) {
				case 0:
					err = s.Release(ctx, key, c.Token)
				case 1:
					err = s.Snooze(ctx, key, c.Token)
				case 2:
					err = s.Delete(ctx, key, c.Token)
				default:
					err = s.Complete(ctx, key, c.Token, dedupe.Result{Data: []byte(strings.Repeat(key, 1+rnd.IntN(8)))}, 2*time.Second)
				}
				if err != nil && !errors.Is(err, dedupe.ErrLeaseLost) {
					t.Error(err)
					return
				}
				if i%50 == 0 {
					clock.Advance(500 * time.Millisecond)
				}
			}
		}()
	}
	wg.Wait()
	checkInvariants(t, s, 0)
	for k := range nkeys {
		key := fmt.Sprint("key-", k)
		c, err := s.Claim(ctx, key, "", time.Second, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if d := c.Result.Data; c.Status == dedupe.Duplicate && (len(d) == 0 || !bytes.Equal(d, bytes.Repeat([]byte(key), len(d)/len(key)))) {
			t.Errorf("%q replays %q, not its own result", key, c.Result.Data)
		}
	}
}
