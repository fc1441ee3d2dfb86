package memstore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/maphash"
	"math"
	"math/bits"
	"math/rand/v2"
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

// errArena is returned when a shard cannot hold another key, fingerprint or
// result: 4 GiB of them in one shard, or 65,536 over 16 KiB.
var errArena = errors.New("memstore: shard out of memory chunks")

// Config configures a Store. Its zero value means defaults.
type Config struct {
	// MaxKeys bounds the number of live records. Default 1,000,000.
	MaxKeys int
	// Shards is the number of independently locked shards, rounded up to a
	// power of two. Default 64.
	Shards int
	// Now is the clock. Default: the wall clock read once by New, advanced
	// by the monotonic clock (one clock read per operation, about half the
	// cost of time.Now). Times, lease expiry and fences then follow the
	// monotonic clock: they never go back, and a step of the wall clock
	// after New (a manual setting, an NTP step) does not move them, while
	// NTP's gradual slewing does; like Go's timers, they do not count time
	// the machine spent suspended.
	Now func() time.Time
}

// Store is an in-memory dedupe.Store: sharded, bounded by MaxKeys, with
// expired records evicted as the store is used (no background goroutine, so
// nothing to stop). It is safe for concurrent use. Records do not survive the
// process: use it for tests and single-process consumers.
type Store struct {
	shards   []shard
	seed     maphash.Seed
	mask     uint64
	bits     uint // log2 of the number of shards
	perShard int  // inserts into a shard between two sweeps of it
	maxKeys  int64
	count    atomic.Int64     // records held across all shards
	sweepAll sync.Mutex       // one whole-store sweep at a time
	now      func() time.Time // Config.Now; nil for the default clock
	base     time.Time        // the default clock: the wall and monotonic clocks read by New
	baseNs   int64            // base in Unix nanoseconds
}

// New returns an empty Store.
func New(cfg Config) *Store {
	return newStore(cfg, defaultChunk)
}

func newStore(cfg Config, chunk int) *Store {
	o := cfg
	if o.MaxKeys <= 0 {
		o.MaxKeys = 1_000_000
	}
	if o.Shards <= 0 {
		o.Shards = 64
	}
	n := 1
	for n < o.Shards {
		n <<= 1
	}
	per := (o.MaxKeys + n - 1) / n
	s := &Store{
		shards:   make([]shard, n),
		seed:     maphash.MakeSeed(),
		mask:     uint64(n - 1),
		bits:     uint(bits.TrailingZeros(uint(n))),
		perShard: per,
		maxKeys:  int64(o.MaxKeys),
		now:      o.Now,
	}
	if s.now == nil {
		s.base = time.Now()
		s.baseNs = s.base.UnixNano()
	}
	for i := range s.shards {
		s.shards[i].num = uint64(i)
		// A random start, so that tokens of two Stores of a process
		// hardly ever coincide (a token passed to the wrong Store).
		s.shards[i].tokSeq = 1 + rand.Uint64()>>24
		s.shards[i].arena = newArena(chunk)
	}
	return s
}

// Len returns the number of records held, live or not yet evicted.
func (s *Store) Len() int {
	total := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		total += sh.recs.len()
		sh.mu.Unlock()
	}
	return total
}

// clock returns the time in Unix nanoseconds: Config.Now's, else the wall
// clock of New plus the monotonic time since (time.Since reads only the
// monotonic clock).
func (s *Store) clock() int64 {
	if s.now == nil {
		return s.baseNs + int64(time.Since(s.base))
	}
	return s.now().UnixNano()
}

// shard returns key's shard and the key's hash within it.
func (s *Store) shard(key string) (*shard, uint32) {
	h := maphash.String(s.seed, key)
	return &s.shards[h&s.mask], uint32(h >> 32)
}

// Tokens are the 16 lower-case hex digits of a number that no other lease
// of the Store has had: the shard's number in the low bits, a sequence
// number the shard counts up above them, from a random start below 2^40
// (2^58 leases per shard of 64 before it could wrap). A token needs
// uniqueness, not secrecy (see storekit.NewToken): it is compared for
// equality only. A shard writes the text of tokenBatch tokens at once into
// one string, so that a lease's token is a slice of it and costs no
// allocation of its own.
const (
	tokenLen   = 16
	tokenBatch = 64
)

// token returns the text and the number of a new token of sh.
func (s *Store) token(sh *shard) (string, uint64) {
	j := sh.tokSeq - sh.tokBase
	if sh.toks == "" || j >= tokenBatch {
		var buf [tokenBatch * tokenLen]byte
		for k := range uint64(tokenBatch) {
			putToken(buf[k*tokenLen:], (sh.tokSeq+k)<<s.bits|sh.num)
		}
		sh.toks = string(buf[:])
		sh.tokBase = sh.tokSeq
		j = 0
	}
	v := sh.tokSeq<<s.bits | sh.num
	sh.tokSeq++
	return sh.toks[j*tokenLen : (j+1)*tokenLen], v
}

// putToken writes the text of token number v, its 16 hex digits, into b.
func putToken(b []byte, v uint64) {
	binary.BigEndian.PutUint64(b[:8], hex8(uint32(v>>32)))
	binary.BigEndian.PutUint64(b[8:tokenLen], hex8(uint32(v)))
}

// isToken reports whether t is the text of token number v.
func isToken(t string, v uint64) bool {
	// Two 8-byte words compared with the text's halves, rather than the
	// text written out and compared as a string.
	return len(t) == tokenLen &&
		binary.BigEndian.Uint64([]byte(t[:8])) == hex8(uint32(v>>32)) &&
		binary.BigEndian.Uint64([]byte(t[8:tokenLen])) == hex8(uint32(v))
}

// hex8 returns the 8 lower-case hex digits of v as the bytes of a uint64,
// the last digit in the lowest byte. It spreads v's nibbles into one byte
// each, then adds '0' to each, and 'a'-'0'-10 more to those over 9: no
// byte overflows into the next.
func hex8(v uint32) uint64 {
	const ones = 0x0101010101010101
	x := uint64(v)
	x = (x | x<<16) & 0x0000ffff0000ffff
	x = (x | x<<8) & 0x00ff00ff00ff00ff
	x = (x | x<<4) & 0x0f0f0f0f0f0f0f0f
	over9 := (x + 6*ones) >> 4 & ones
	return x + '0'*ones + over9*('a'-'0'-10)
}

// after returns t+d in Unix nanoseconds, saturating instead of overflowing.
func after(t int64, d time.Duration) int64 {
	if d > 0 && t > math.MaxInt64-int64(d) {
		return math.MaxInt64
	}
	return t + int64(d)
}

// sweep removes expired records from sh. Called with sh.mu held.
func (s *Store) sweep(sh *shard, now int64) {
	removed := 0
	for i := 0; i < sh.recs.len(); {
		if sh.recs.at(i).exp <= now {
			sh.remove(i) // the last record moves to i
			removed++
		} else {
			i++
		}
	}
	s.count.Add(int64(-removed))
	sh.inserts = 0
	sh.tidy()
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

// Claim implements dedupe.Store with the state machine of storekit.Decide,
// applied to the store's compact records (the conformance suite and a
// differential test against Decide hold it to that). A Duplicate's
// Result.Data is a copy the caller may keep and modify. Tokens are unique
// within the Store. Fences follow storekit.NextFence of the key's last
// fence while its record is in progress; a completed record does not keep
// its fence, so the first lease after its retention has the clock's fence,
// as after the record was swept or deleted.
func (s *Store) Claim(ctx context.Context, key, fingerprint string, lease, retention time.Duration) (dedupe.Claim, error) {
	sh, h := s.shard(key)
	sh.hint(h)
	if err := ctx.Err(); err != nil {
		return dedupe.Claim{}, err
	}
	if err := storekit.ValidateLease(lease, retention); err != nil {
		return dedupe.Claim{}, err
	}
	t := s.clock()
	var c dedupe.Claim
	tok, fence, attempt, takeover, err := s.claim(&c, sh, h, key, fingerprint, t, lease, retention)
	if err != nil && errors.Is(err, ErrFull) {
		// The bound counts records not yet evicted: sweep the whole store
		// once and try again before refusing the key.
		s.sweepEvery(t)
		tok, fence, attempt, takeover, err = s.claim(&c, sh, h, key, fingerprint, t, lease, retention)
	}
	if tok == "" {
		return c, err
	}
	return dedupe.Claim{Status: dedupe.Acquired, Token: tok, Fence: fence, Takeover: takeover, Attempt: attempt}, nil
}

// claim applies Claim under the lock of key's shard sh (h is the key's
// hash, see Store.shard). An Acquired answer comes back as its token (never
// empty), fence, attempt and takeover, in registers, so that Claim writes
// the answer once instead of copying it from one call's results to the next
// (copies that stalled on store forwarding); any other answer claim writes
// to out, with an empty token.
func (s *Store) claim(out *dedupe.Claim, sh *shard, h uint32, key, fp string, t int64, leaseFor, retention time.Duration) (string, uint64, int, bool, error) {
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i := sh.find(key, h)
	if i >= 0 {
		r := sh.recs.at(i)
		if t < r.exp {
			if r.state() == dedupe.StateInProgress {
				l := &sh.leases[r.res]
				released := l.tok == 0
				if !released && t < l.until {
					*out = dedupe.Claim{Status: dedupe.Busy, RetryAfter: time.Duration(l.until - t), Fingerprint: sh.fingerprint(r, fp)}
					return "", 0, 0, false, nil
				}
				if !sh.setKey(r, key, fp) {
					return "", 0, 0, false, fmt.Errorf("%w (claim of %q)", errArena, key)
				}
				tok := s.grant(sh, r, l, t, leaseFor, retention)
				sh.maybeCompact() // setKey may have let the old entry die
				return tok, l.fence, l.attempts, !released, nil
			}
			if _, stored, _ := sh.arena.key(r.off); fp != "" && len(stored) > 0 && string(stored) != fp {
				*out = dedupe.Claim{Status: dedupe.Conflict, Fingerprint: string(stored)}
				return "", 0, 0, false, nil
			}
			*out = dedupe.Claim{Status: dedupe.Duplicate, Fingerprint: sh.fingerprint(r, fp)}
			out.Result.Failed = r.state() == dedupe.StateFailed
			if r.meta&hasResult != 0 {
				data, _ := sh.arena.result(r.res)
				// Replay a copy: a caller that modifies the replayed bytes
				// must not change what later duplicates see.
				out.Result.Data = append([]byte(nil), data...)
			}
			return "", 0, 0, false, nil
		}
		// Retention is over: the record counts as absent, but an
		// in-progress one's fence still orders the new lease.
		if !sh.setKey(r, key, fp) {
			return "", 0, 0, false, fmt.Errorf("%w (claim of %q)", errArena, key)
		}
		var prev uint64
		if r.state() == dedupe.StateInProgress {
			prev = sh.leases[r.res].fence
		} else {
			sh.clear(r)
			r.res = sh.newLease(lease{})
			r.meta = uint32(dedupe.StateInProgress)
		}
		l := &sh.leases[r.res]
		*l = lease{fence: prev}
		tok := s.grant(sh, r, l, t, leaseFor, retention)
		sh.maybeCompact() // the old result and key entry may have died
		return tok, l.fence, l.attempts, false, nil
	}

	// Amortised eviction: a sweep of the shard after as many inserts as its
	// share of MaxKeys keeps the cost O(1) per insert; a full store sweeps
	// the key's shard at once. The bound is global (MaxKeys records in all),
	// so an unlucky spread of keys over shards never refuses a key while
	// there is room.
	sh.inserts++
	if sh.inserts >= s.perShard || s.count.Load() >= s.maxKeys {
		s.sweep(sh, t)
	}
	for {
		n := s.count.Load()
		if n >= s.maxKeys {
			return "", 0, 0, false, fmt.Errorf("%w: %d records, MaxKeys %d (claim of %q)", ErrFull, n, s.maxKeys, key)
		}
		if s.count.CompareAndSwap(n, n+1) {
			break
		}
	}
	off, ok := sh.arena.putKey(key, fp)
	if !ok {
		s.count.Add(-1)
		return "", 0, 0, false, fmt.Errorf("%w (claim of %q)", errArena, key)
	}
	li := sh.newLease(lease{})
	i = sh.add(rec{off: off, res: li, hash: h, meta: uint32(dedupe.StateInProgress)})
	l := &sh.leases[li]
	tok := s.grant(sh, sh.recs.at(i), l, t, leaseFor, retention)
	return tok, l.fence, l.attempts, false, nil
}

// grant gives in-progress record r, whose lease is l, a new lease, and
// returns its token.
func (s *Store) grant(sh *shard, r *rec, l *lease, t int64, leaseFor, retention time.Duration) string {
	text, num := s.token(sh)
	l.tok = num
	l.attempts = max(l.attempts, 0) + 1
	l.fence = nextFence(l.fence, t)
	l.until = after(t, leaseFor)
	r.exp = max(after(t, retention), l.until)
	return text
}

// nextFence is storekit.NextFence of prev at Unix nanosecond t (a test holds
// them equal), without building a time.Time.
func nextFence(prev uint64, t int64) uint64 {
	var clock uint64
	if t >= 1000 {
		clock = uint64(t / 1000)
	}
	return max(prev+1, clock)
}

// owned locks key's shard sh (h is the key's hash) and returns the number
// of its record when token is the current token of a live in-progress
// record; else it unlocks sh and returns dedupe.ErrLeaseLost. An expired
// lease that nobody took over is still owned: the token, not the clock, is
// the authority.
func (s *Store) owned(sh *shard, h uint32, key, token string, t int64) (int, error) {
	sh.mu.Lock()
	i := sh.find(key, h)
	if i < 0 {
		sh.mu.Unlock()
		return 0, dedupe.ErrLeaseLost
	}
	r := sh.recs.at(i)
	if t >= r.exp || r.state() != dedupe.StateInProgress {
		sh.mu.Unlock()
		return 0, dedupe.ErrLeaseLost
	}
	if num := sh.leases[r.res].tok; num == 0 || !isToken(token, num) {
		sh.mu.Unlock()
		return 0, dedupe.ErrLeaseLost
	}
	return i, nil
}

// Complete implements dedupe.Store. The result bytes are copied.
func (s *Store) Complete(ctx context.Context, key, token string, res dedupe.Result, retention time.Duration) error {
	sh, h := s.shard(key)
	sh.hint(h)
	if err := ctx.Err(); err != nil {
		return err
	}
	if retention <= 0 {
		return fmt.Errorf("%w: retention %v must be positive", dedupe.ErrInvalidLease, retention)
	}
	t := s.clock()
	i, err := s.owned(sh, h, key, token, t)
	if err != nil {
		return err
	}
	defer sh.mu.Unlock()
	r := sh.recs.at(i)
	meta := uint32(dedupe.StateDone)
	if res.Failed {
		meta = uint32(dedupe.StateFailed)
	}
	var off uint32
	if len(res.Data) > 0 {
		var ok bool
		if off, ok = sh.arena.putResult(res.Data); !ok {
			return fmt.Errorf("%w (complete of %q)", errArena, key)
		}
		meta |= hasResult
	}
	sh.dropLease(r.res)
	r.res = off
	r.meta = meta
	r.exp = after(t, retention)
	return nil
}

// Release implements dedupe.Store.
func (s *Store) Release(ctx context.Context, key, token string) error {
	return s.release(ctx, key, token, false)
}

// Snooze implements dedupe.Snoozer.
func (s *Store) Snooze(ctx context.Context, key, token string) error {
	return s.release(ctx, key, token, true)
}

// release ends the lease of key's record (Release and Snooze): the token
// cleared and the lease ended, the attempt count (less the snoozed attempt)
// and retention kept.
func (s *Store) release(ctx context.Context, key, token string, snooze bool) error {
	sh, h := s.shard(key)
	sh.hint(h)
	if err := ctx.Err(); err != nil {
		return err
	}
	i, err := s.owned(sh, h, key, token, s.clock())
	if err != nil {
		return err
	}
	defer sh.mu.Unlock()
	l := &sh.leases[sh.recs.at(i).res]
	l.tok = 0
	l.until = 0
	if snooze {
		l.attempts = max(l.attempts-1, 0)
	}
	return nil
}

// Delete implements dedupe.Store.
func (s *Store) Delete(ctx context.Context, key, token string) error {
	sh, h := s.shard(key)
	sh.hint(h)
	if err := ctx.Err(); err != nil {
		return err
	}
	i, err := s.owned(sh, h, key, token, s.clock())
	if err != nil {
		return err
	}
	defer sh.mu.Unlock()
	sh.remove(i)
	s.count.Add(-1)
	sh.maybeCompact()
	return nil
}

// Ping implements dedupe.Pinger: a memory store is always reachable.
func (s *Store) Ping(ctx context.Context) error { return ctx.Err() }

// Extend implements dedupe.Store.
func (s *Store) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	sh, h := s.shard(key)
	sh.hint(h)
	if err := ctx.Err(); err != nil {
		return err
	}
	if lease <= 0 {
		return fmt.Errorf("%w: lease %v must be positive", dedupe.ErrInvalidLease, lease)
	}
	t := s.clock()
	i, err := s.owned(sh, h, key, token, t)
	if err != nil {
		return err
	}
	defer sh.mu.Unlock()
	r := sh.recs.at(i)
	l := &sh.leases[r.res]
	l.until = after(t, lease)
	r.exp = max(r.exp, l.until)
	return nil
}

var (
	_ dedupe.Store   = (*Store)(nil)
	_ dedupe.Snoozer = (*Store)(nil)
	_ dedupe.Pinger  = (*Store)(nil)
)
