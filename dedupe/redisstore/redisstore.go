package redisstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/storekit"
)

// DefaultPrefix is the key prefix used when Config.Prefix is empty.
const DefaultPrefix = "idemq:"

// GCMargin is added to a record's remaining logical lifetime (retention end,
// or lease end if later, minus the injected now) to get its Redis PEXPIRE.
// The physical TTL is garbage collection only and never ends a live record:
// 1 minute.
const GCMargin = time.Minute

// Config configures a Store. Its zero value means defaults.
type Config struct {
	// Prefix is prepended to every key. Default DefaultPrefix ("idemq:").
	// With Redis Cluster, a prefix holding a hash tag ("{idemq}:") would put
	// every key in one slot; the default spreads them.
	Prefix string
	// Now is the clock every expiry is computed from, in Go, and passed to
	// the scripts. The Redis server's clock is never consulted. Default
	// time.Now.
	Now func() time.Time
	// MaxBatch caps how many concurrent calls are coalesced into one
	// pipeline (one round trip). While a pipeline is in flight, calls from
	// other goroutines queue; the first of them then sends everything queued
	// in the next pipeline, up to MaxBatch operations. A lone caller still
	// pays one round trip per call. Default DefaultMaxBatch (128); 1 turns
	// batching off, so that every call is its own round trip on its own pool
	// connection (then size the client's PoolSize to the concurrency).
	MaxBatch int
}

// DefaultMaxBatch is Config.MaxBatch when zero: 128 operations per
// pipeline.
const DefaultMaxBatch = 128

// Store is a dedupe.Store on Redis. It is safe for concurrent use and holds
// no resources of its own: close the client when done.
type Store struct {
	c        redis.UniversalClient
	prefix   string
	now      func() time.Time
	swap     *redis.Script
	complete *redis.Script
	release  *redis.Script
	del      *redis.Script
	snooze   *redis.Script
	extend   *redis.Script

	// maxBatch is Config.MaxBatch; the queue of calls waiting for a
	// pipeline, and whether a caller is flushing it, are guarded by mu.
	maxBatch int
	mu       sync.Mutex
	queue    []*op
	flushing bool
}

// New returns a Store that keeps its records in c. c may be a *redis.Client,
// *redis.ClusterClient, *redis.Ring or failover client: every operation
// touches exactly one key. The scripts are sent with EVALSHA and loaded with
// EVAL the first time a server does not know them.
func New(c redis.UniversalClient, cfg Config) *Store {
	o := cfg
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxBatch == 0 {
		o.MaxBatch = DefaultMaxBatch
	}
	return &Store{
		c:        c,
		prefix:   o.Prefix,
		now:      o.Now,
		swap:     redis.NewScript(swapLua),
		complete: redis.NewScript(completeLua),
		release:  redis.NewScript(releaseLua),
		del:      redis.NewScript(deleteLua),
		snooze:   redis.NewScript(snoozeLua),
		extend:   redis.NewScript(extendLua),
		maxBatch: o.MaxBatch,
	}
}

// Key returns the Redis key holding the record for a dedupe key: the prefix
// followed by key, unchanged (Redis keys are binary-safe).
func (s *Store) Key(key string) string { return s.prefix + key }

// ms converts d to whole milliseconds, rounding up so that a positive
// duration never becomes zero.
func ms(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

var gcMargin = ms(GCMargin)

// Claim implements dedupe.Store in one round trip: SET NX GET creates the
// record of an absent key, or returns the existing one, from which
// storekit.Decide answers Busy, Duplicate or Conflict. Only a takeover (the
// lease expired) or a record past its retention but not yet collected
// takes a second round trip, a script that swaps the record if it is still
// the one decided on. Times are kept in whole milliseconds: the injected now
// is truncated, lease and retention are rounded up, so RetryAfter may differ
// from the exact remainder by less than a millisecond.
func (s *Store) Claim(ctx context.Context, key, fingerprint string, lease, retention time.Duration) (dedupe.Claim, error) {
	if err := ctx.Err(); err != nil {
		return dedupe.Claim{}, err
	}
	if err := storekit.ValidateLease(lease, retention); err != nil {
		return dedupe.Claim{}, err
	}
	for range maxSwaps {
		p := s.newClaim(key, fingerprint, lease, retention)
		if err := s.exec(ctx, p.op); err != nil {
			return dedupe.Claim{}, err
		}
		c, swap, err := s.settle(p)
		if err != nil || swap == nil {
			return c, err
		}
		if err := s.exec(ctx, swap); err != nil {
			return dedupe.Claim{}, err
		}
		cmd, err := swap.result()
		var n int64
		if err == nil {
			n, err = cmd.Int64()
		}
		if err != nil {
			return dedupe.Claim{}, fmt.Errorf("redisstore: claim %q: %w", key, err)
		}
		if n == 1 {
			return c, nil
		}
		// The record changed between the two round trips: decide again.
	}
	return dedupe.Claim{}, fmt.Errorf("redisstore: claim %q: %w", key, errContention)
}

// maxSwaps bounds Claim's attempts when the record keeps changing under it.
const maxSwaps = 16

// errContention reports a key whose record changed under every attempt of
// a Claim.
var errContention = errors.New("record changed under every attempt")

// pendingClaim is a claim's first round trip: SET NX GET of a fresh
// in-progress record.
type pendingClaim struct {
	op                        *op
	key, fingerprint, token   string
	now, leaseMs, retentionMs int64
	fence                     uint64
}

func (s *Store) newClaim(key, fingerprint string, lease, retention time.Duration) *pendingClaim {
	p := &pendingClaim{
		key: key, fingerprint: fingerprint, token: storekit.NewToken(),
		now: s.now().UnixMilli(), leaseMs: ms(lease), retentionMs: ms(retention),
	}
	leaseEnd := p.now + p.leaseMs
	expires := max(p.now+p.retentionMs, leaseEnd)
	p.fence = storekit.NextFence(0, time.UnixMilli(p.now))
	val := encode(stateInProgress, expires, leaseEnd, p.now, 1, p.fence, p.token, fingerprint, nil)
	k := s.Key(key)
	p.op = &op{key: k, args: []any{"set", k, val, "px", expires - p.now + gcMargin, "nx", "get"}}
	return p
}

// settle turns the reply of p into the answer, or into the swap script to
// run when the state machine must replace the existing record.
func (s *Store) settle(p *pendingClaim) (dedupe.Claim, *op, error) {
	cmd, err := p.op.result()
	if errors.Is(err, redis.Nil) {
		return dedupe.Claim{Status: dedupe.Acquired, Token: p.token, Fence: p.fence, Attempt: 1}, nil, nil
	}
	if err != nil {
		return dedupe.Claim{}, nil, fmt.Errorf("redisstore: claim %q: %w", p.key, err)
	}
	old, ok := cmd.Val().(string)
	if !ok {
		return dedupe.Claim{}, nil, fmt.Errorf("%w: %T", errReply, cmd.Val())
	}
	cur, version, err := decode(p.key, old)
	if err != nil {
		return dedupe.Claim{}, nil, err
	}
	now := time.UnixMilli(p.now)
	c, next := storekit.Decide(cur, p.key, p.fingerprint, now,
		time.Duration(p.leaseMs)*time.Millisecond, time.Duration(p.retentionMs)*time.Millisecond)
	if next == nil {
		return c, nil, nil
	}
	px := next.ExpiresAt.UnixMilli() - p.now + gcMargin
	return c, &op{script: s.swap, key: p.op.key, args: []any{version, encodeRecord(next), px}}, nil
}

// errReply reports a reply of an unexpected shape.
var errReply = errors.New("redisstore: unexpected reply")

// Complete implements dedupe.Store in one round trip.
func (s *Store) Complete(ctx context.Context, key, token string, res dedupe.Result, retention time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	now, rest, err := s.completeArgs(res, retention)
	if err != nil {
		return err
	}
	return s.owned(ctx, s.complete, "complete", key, token, now, rest...)
}

// completeArgs returns now and the complete script's arguments after the
// token: the new header (state, retention end, no lease), the result and
// the PX.
func (s *Store) completeArgs(res dedupe.Result, retention time.Duration) (int64, []any, error) {
	if retention <= 0 {
		return 0, nil, fmt.Errorf("%w: retention %v must be positive", dedupe.ErrInvalidLease, retention)
	}
	state := byte(stateDone)
	if res.Failed {
		state = stateFailed
	}
	now := s.now().UnixMilli()
	retMs := ms(retention)
	head := appendMillis(append(make([]byte, 0, 1+2*digits), state), now+retMs)
	head = appendMillis(head, 0)
	// res.Data goes out as a binary-safe bulk string; go-redis writes a
	// []byte argument as is.
	data := res.Data
	if data == nil {
		data = []byte{}
	}
	return now, []any{head, data, retMs + gcMargin}, nil
}

// Release implements dedupe.Store in one round trip.
func (s *Store) Release(ctx context.Context, key, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.owned(ctx, s.release, "release", key, token, s.now().UnixMilli())
}

// Snooze implements dedupe.Snoozer in one round trip.
func (s *Store) Snooze(ctx context.Context, key, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.owned(ctx, s.snooze, "snooze", key, token, s.now().UnixMilli())
}

// Delete implements dedupe.Store in one round trip.
func (s *Store) Delete(ctx context.Context, key, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.owned(ctx, s.del, "delete", key, token, s.now().UnixMilli())
}

// Extend implements dedupe.Store in one round trip.
func (s *Store) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if lease <= 0 {
		return fmt.Errorf("%w: lease %v must be positive", dedupe.ErrInvalidLease, lease)
	}
	now := s.now().UnixMilli()
	return s.owned(ctx, s.extend, "extend", key, token, now, appendMillis(nil, now+ms(lease)), gcMargin)
}

// ownedOp is one of the token-checked scripts with ARGV now (13 digits),
// token + ":", rest...
func (s *Store) ownedOp(sc *redis.Script, key, token string, now int64, rest ...any) *op {
	args := make([]any, 0, 2+len(rest))
	args = append(args, string(appendMillis(nil, now)), token+":")
	return &op{script: sc, key: s.Key(key), args: append(args, rest...)}
}

// owned runs a token-checked script for key; rest starts with now (Unix
// ms), followed by the script's own arguments.
func (s *Store) owned(ctx context.Context, sc *redis.Script, name, key, token string, now int64, rest ...any) error {
	if token == "" {
		return dedupe.ErrLeaseLost
	}
	o := s.ownedOp(sc, key, token, now, rest...)
	if err := s.exec(ctx, o); err != nil {
		return err
	}
	cmd, err := o.result()
	var n int64
	if err == nil {
		n, err = cmd.Int64()
	}
	if err != nil {
		return fmt.Errorf("redisstore: %s %q: %w", name, key, err)
	}
	if n != 1 {
		return dedupe.ErrLeaseLost
	}
	return nil
}

// Ping implements dedupe.Pinger with a PING.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.c.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redisstore: ping: %w", err)
	}
	return nil
}

// CheckDurability implements dedupe.DurabilityChecker: it reads the
// server's appendonly, appendfsync and save settings with CONFIG GET and
// says what a restart or crash would forget. With a cluster or failover
// client the answer is one node's. Managed services that refuse CONFIG
// give an error: the check could not be made.
func (s *Store) CheckDurability(ctx context.Context) (string, error) {
	get := func(name string) (string, error) {
		m, err := s.c.ConfigGet(ctx, name).Result()
		if err != nil {
			return "", fmt.Errorf("redisstore: CONFIG GET %s: %w", name, err)
		}
		v, ok := m[name]
		if !ok {
			return "", fmt.Errorf("redisstore: CONFIG GET %s: no value", name)
		}
		return v, nil
	}
	aof, err := get("appendonly")
	if err != nil {
		return "", err
	}
	if aof == "yes" {
		fsync, err := get("appendfsync")
		if err != nil {
			return "", err
		}
		if fsync == "no" {
			return "Redis writes its append-only file without fsync (appendfsync no): a machine crash can forget records completed in the last 30 s or so, and duplicates of those messages would run again", nil
		}
		return "", nil
	}
	save, err := get("save")
	if err != nil {
		return "", err
	}
	if save == "" {
		return `Redis persists nothing (appendonly no, save ""): a restart forgets every dedupe record, and duplicates of messages already processed would run again; enable appendonly yes`, nil
	}
	return fmt.Sprintf("Redis persists by snapshots only (appendonly no, save %q): a restart forgets the records completed since the last snapshot, and duplicates of those messages would run again; enable appendonly yes", save), nil
}

var (
	_ dedupe.Store             = (*Store)(nil)
	_ dedupe.Pinger            = (*Store)(nil)
	_ dedupe.DurabilityChecker = (*Store)(nil)
)
