package memstore

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/storekit"
)

// ErrFull is returned by Claim of a new key when the store holds MaxKeys
// live records (a sweep of every shard found none expired). The store never forgets a live record to make room:
// forgetting one would let its redelivery run twice. Treat ErrFull as a
// transient error (the consumer redelivers later).
var ErrFull = errors.New("memstore: store is full")

// Config configures a Store. Its zero value means defaults.
type Config struct {
	// MaxKeys bounds the number of live records. Default 1,000,000.
	MaxKeys int
	// Shards is the number of independently locked shards, rounded up to a
	// power of two. Default 64.
	Shards int
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Store is an in-memory dedupe.Store: sharded, bounded by MaxKeys, with
// expired records evicted as the store is used (no background goroutine, so
// nothing to stop). It is safe for concurrent use. Records do not survive the
// process: use it for tests and single-process consumers.
type Store struct {
	shards   []shard
	mask     uint64
	perShard int // inserts into a shard between two sweeps of it
	maxKeys  int64
	count    atomic.Int64 // records held across all shards
	sweepAll sync.Mutex   // one whole-store sweep at a time
	now      func() time.Time
}

type shard struct {
	mu      sync.Mutex
	m       map[string]entry
	inserts int // since the last sweep
	_       [40]byte
}

// entry is a compact dedupe.Record: times as Unix nanoseconds, the key held
// only by the map.
type entry struct {
	fingerprint string
	token       string
	result      []byte
	leaseUntil  int64
	createdAt   int64
	expiresAt   int64
	fence       uint64
	attempts    int32
	state       dedupe.State
}

// New returns an empty Store.
func New(cfg Config) *Store {
	o := cfg
	if o.MaxKeys <= 0 {
		o.MaxKeys = 1_000_000
	}
	if o.Shards <= 0 {
		o.Shards = 64
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	n := 1
	for n < o.Shards {
		n <<= 1
	}
	per := (o.MaxKeys + n - 1) / n
	s := &Store{shards: make([]shard, n), mask: uint64(n - 1), perShard: per, maxKeys: int64(o.MaxKeys), now: o.Now}
	for i := range s.shards {
		s.shards[i].m = make(map[string]entry)
	}
	return s
}

// Len returns the number of records held, live or not yet evicted.
func (s *Store) Len() int {
	total := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		total += len(sh.m)
		sh.mu.Unlock()
	}
	return total
}

func (s *Store) shard(key string) *shard {
	// FNV-1a, inlined to avoid an allocation per call.
	h := uint64(14695981039346656037)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= 1099511628211
	}
	return &s.shards[h&s.mask]
}

func toRecord(key string, e entry) *dedupe.Record {
	return &dedupe.Record{
		Key:         key,
		Fingerprint: e.fingerprint,
		State:       e.state,
		Token:       e.token,
		Attempts:    int(e.attempts),
		Fence:       e.fence,
		LeaseUntil:  time.Unix(0, e.leaseUntil),
		Result:      e.result,
		CreatedAt:   time.Unix(0, e.createdAt),
		ExpiresAt:   time.Unix(0, e.expiresAt),
	}
}

func toEntry(r *dedupe.Record) entry {
	e := entry{
		fingerprint: r.Fingerprint,
		token:       r.Token,
		attempts:    int32(min(r.Attempts, math.MaxInt32)),
		fence:       r.Fence,
		result:      r.Result,
		createdAt:   r.CreatedAt.UnixNano(),
		expiresAt:   r.ExpiresAt.UnixNano(),
		state:       r.State,
	}
	if !r.LeaseUntil.IsZero() {
		e.leaseUntil = r.LeaseUntil.UnixNano()
	}
	return e
}

func (s *Store) lookup(sh *shard, key string) *dedupe.Record {
	e, ok := sh.m[key]
	if !ok {
		return nil
	}
	return toRecord(key, e)
}

// sweep removes expired entries from sh. Called with sh.mu held.
func (s *Store) sweep(sh *shard, now int64) {
	removed := 0
	for k, e := range sh.m {
		if e.expiresAt <= now {
			delete(sh.m, k)
			removed++
		}
	}
	s.count.Add(int64(-removed))
	sh.inserts = 0
}

// sweepEvery sweeps every shard in turn, holding one shard lock at a time.
// Claim calls it, holding no lock, when the store is full: expired records
// of other shards must not make the store refuse a new key.
func (s *Store) sweepEvery(now int64) {
	if !s.sweepAll.TryLock() {
		return // another caller is sweeping already
	}
	defer s.sweepAll.Unlock()
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		s.sweep(sh, now)
		sh.mu.Unlock()
	}
}

// Claim implements dedupe.Store. A Duplicate's Result.Data is a copy the
// caller may keep and modify.
func (s *Store) Claim(ctx context.Context, key, fingerprint string, lease, retention time.Duration) (dedupe.Claim, error) {
	if err := ctx.Err(); err != nil {
		return dedupe.Claim{}, err
	}
	if err := storekit.ValidateLease(lease, retention); err != nil {
		return dedupe.Claim{}, err
	}
	now := s.now()
	c, err := s.claim(key, fingerprint, now, lease, retention)
	if errors.Is(err, ErrFull) {
		// The bound counts records not yet evicted: sweep the whole store
		// once and try again before refusing the key.
		s.sweepEvery(now.UnixNano())
		c, err = s.claim(key, fingerprint, now, lease, retention)
	}
	return c, err
}

func (s *Store) claim(key, fingerprint string, now time.Time, lease, retention time.Duration) (dedupe.Claim, error) {
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	cur := s.lookup(sh, key)
	c, next := storekit.Decide(cur, key, fingerprint, now, lease, retention)
	if next == nil {
		if c.Status == dedupe.Duplicate && c.Result.Data != nil {
			// Replay a copy: a caller that modifies the replayed bytes
			// must not change what later duplicates see.
			c.Result.Data = append([]byte(nil), c.Result.Data...)
		}
		return c, nil
	}
	if _, exists := sh.m[key]; !exists {
		// Amortised eviction: a sweep of the shard after as many inserts as
		// its share of MaxKeys keeps the cost O(1) per insert; a full store
		// sweeps the key's shard at once. The bound is global (MaxKeys
		// records in all), so an unlucky spread of keys over shards never
		// refuses a key while there is room.
		sh.inserts++
		if sh.inserts >= s.perShard || s.count.Load() >= s.maxKeys {
			s.sweep(sh, now.UnixNano())
		}
		for {
			n := s.count.Load()
			if n >= s.maxKeys {
				return dedupe.Claim{}, fmt.Errorf("%w: %d records, MaxKeys %d (claim of %q)", ErrFull, n, s.maxKeys, key)
			}
			if s.count.CompareAndSwap(n, n+1) {
				break
			}
		}
	}
	sh.m[key] = toEntry(next)
	return c, nil
}

// Complete implements dedupe.Store. The result bytes are copied.
func (s *Store) Complete(ctx context.Context, key, token string, res dedupe.Result, retention time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if retention <= 0 {
		return fmt.Errorf("%w: retention %v must be positive", dedupe.ErrInvalidLease, retention)
	}
	now := s.now()
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	res.Data = append([]byte(nil), res.Data...)
	next, err := storekit.CompleteRecord(s.lookup(sh, key), token, res, now, retention)
	if err != nil {
		return err
	}
	sh.m[key] = toEntry(next)
	return nil
}

// Release implements dedupe.Store.
func (s *Store) Release(ctx context.Context, key, token string) error {
	return s.rewrite(ctx, key, token, storekit.ReleaseRecord)
}

// rewrite replaces key's record with what change makes of it, under the
// key's shard lock (Release and Snooze).
func (s *Store) rewrite(ctx context.Context, key, token string, change func(*dedupe.Record, string, time.Time) (*dedupe.Record, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := s.now()
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	next, err := change(s.lookup(sh, key), token, now)
	if err != nil {
		return err
	}
	sh.m[key] = toEntry(next)
	return nil
}

// Snooze implements dedupe.Snoozer.
func (s *Store) Snooze(ctx context.Context, key, token string) error {
	return s.rewrite(ctx, key, token, storekit.SnoozeRecord)
}

// Delete implements dedupe.Store.
func (s *Store) Delete(ctx context.Context, key, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now := s.now()
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if err := storekit.DeleteRecord(s.lookup(sh, key), token, now); err != nil {
		return err
	}
	delete(sh.m, key)
	s.count.Add(-1)
	return nil
}

// Ping implements dedupe.Pinger: a memory store is always reachable.
func (s *Store) Ping(ctx context.Context) error { return ctx.Err() }

// Extend implements dedupe.Store.
func (s *Store) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if lease <= 0 {
		return fmt.Errorf("%w: lease %v must be positive", dedupe.ErrInvalidLease, lease)
	}
	now := s.now()
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	next, err := storekit.ExtendRecord(s.lookup(sh, key), token, now, lease)
	if err != nil {
		return err
	}
	sh.m[key] = toEntry(next)
	return nil
}

var _ dedupe.Store = (*Store)(nil)
