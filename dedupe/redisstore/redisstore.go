package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
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
	// WaitReplicas, when positive, makes Complete (and CompleteMany) return
	// only once at least that many replicas of the master that took the
	// write have acknowledged it: the store sends WAIT WaitReplicas
	// WaitTimeout after the completions of each pipeline, one per master
	// and pipeline (not one per call), on the connection that carried them.
	// When fewer replicas acknowledge within WaitTimeout the completion
	// fails with an error wrapping ErrNotReplicated. Default 0: no WAIT,
	// Complete returns once the master has the write. See "Replication"
	// in the package documentation for what it does and does not promise.
	//
	// Claim, Release, Snooze, Delete and Extend never wait: losing one of
	// their writes in a failover amounts to a lease that ended early, which
	// fencing tokens already cover. WaitReplicas needs a *redis.Client
	// (single server or Sentinel failover client), *redis.ClusterClient or
	// *redis.Ring; with another UniversalClient, every Complete fails.
	WaitReplicas int
	// WaitTimeout bounds how long a completion waits for WaitReplicas
	// replicas (WAIT's timeout, in whole milliseconds), when WaitReplicas is
	// positive. Default DefaultWaitTimeout (1s). Keep it below the client's
	// ReadTimeout (go-redis default 3s), which bounds the whole pipeline's
	// answer; Complete's callers wait up to this long longer while a
	// replica lags or is down, and so do the calls batched with them.
	WaitTimeout time.Duration
}

// DefaultWaitTimeout is Config.WaitTimeout when zero: 1 second.
const DefaultWaitTimeout = time.Second

// ErrNotReplicated is wrapped by the error of Complete (and CompleteMany's
// per-request errors) when Config.WaitReplicas replicas did not
// acknowledge the completion within Config.WaitTimeout (or WAIT failed).
// The master took the write: the record is complete there, so a retried
// Complete answers dedupe.ErrLeaseLost and a Claim answers Duplicate as
// long as that master serves the key. What is not known is whether the
// record survives the master's loss. It is a store error, not an answer
// (neither dedupe.ErrLeaseLost nor dedupe.IsInvalidInput): a consumer
// treats it as the store being unavailable. It wraps dedupe.ErrNotDurable,
// on which consumer.Pipeline acknowledges the message without retrying
// Complete and logs the doubt.
var ErrNotReplicated = fmt.Errorf("redisstore: completion not acknowledged by enough replicas (%w)", dedupe.ErrNotDurable)

// DefaultMaxBatch is Config.MaxBatch when zero: 128 operations per
// pipeline.
const DefaultMaxBatch = 128

// Store is a dedupe.Store on Redis. It is safe for concurrent use and holds
// no resources of its own: close the client when done.
type Store struct {
	c      redis.UniversalClient
	topo   topology
	prefix string
	now    func() time.Time
	swap   script
	owned  script

	waitReplicas int
	waitTimeout  time.Duration

	// maxBatch is Config.MaxBatch; the queue of calls waiting for a
	// pipeline, and whether a caller is flushing it, are guarded by mu.
	// taken and batch are the flushing leader's scratch space.
	maxBatch     int
	mu           sync.Mutex
	queue        []*op
	flushing     bool
	taken, batch []*op
}

// topology says which keys one script may touch together.
type topology uint8

const (
	// topoOther: each key alone (a Ring, whose shards go-redis picks by
	// the first key only, or a client type the store does not know).
	topoOther topology = iota
	// topoSingle: any keys (a single server, or a Sentinel failover
	// client: one master at a time).
	topoSingle
	// topoCluster: keys of one hash slot.
	topoCluster
)

// New returns a Store that keeps its records in c. c may be a *redis.Client,
// *redis.ClusterClient, *redis.Ring or failover client: every operation
// touches exactly one key, and the store's scripts touch several keys only
// where the client sends them to one server (see Batching). The scripts are
// sent with EVALSHA and loaded with EVAL the first time a server does not
// know them.
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
	if o.WaitReplicas > 0 && o.WaitTimeout <= 0 {
		o.WaitTimeout = DefaultWaitTimeout
	}
	s := &Store{
		c:            c,
		prefix:       o.Prefix,
		now:          o.Now,
		swap:         newScript(swapLua),
		owned:        newScript(ownedLua),
		maxBatch:     o.MaxBatch,
		waitReplicas: max(o.WaitReplicas, 0),
		waitTimeout:  o.WaitTimeout,
	}
	switch c.(type) {
	case *redis.Client:
		s.topo = topoSingle
	case *redis.ClusterClient:
		s.topo = topoCluster
	default:
		s.topo = topoOther
	}
	return s
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
		if err, abandoned := s.exec(ctx, p.op); err != nil {
			p.release(abandoned)
			return dedupe.Claim{}, err
		}
		c, swap, err := s.settle(p)
		p.release(false)
		if err != nil || swap == nil {
			return c, err
		}
		err, abandoned := s.exec(ctx, swap)
		var n int64
		if err == nil {
			var cmd *redis.Cmd
			if cmd, err = swap.result(); err == nil {
				n, err = cmd.Int64()
			}
		}
		if !abandoned {
			putOp(swap)
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

var claimPool = sync.Pool{New: func() any { return new(pendingClaim) }}

func (s *Store) newClaim(key, fingerprint string, lease, retention time.Duration) *pendingClaim {
	p := claimPool.Get().(*pendingClaim)
	*p = pendingClaim{
		key: key, fingerprint: fingerprint, token: storekit.NewToken(),
		now: s.now().UnixMilli(), leaseMs: ms(lease), retentionMs: ms(retention),
	}
	leaseEnd := p.now + p.leaseMs
	expires := max(p.now+p.retentionMs, leaseEnd)
	p.fence = storekit.NextFence(0, time.UnixMilli(p.now))
	o := getOp(kindCommand, s.Key(key))
	o.val = appendRecord(o.val[:0], stateInProgress, expires, leaseEnd, p.now, 1, p.fence, p.token, fingerprint, nil)
	o.wire[0].b = o.val
	o.px = expires - p.now + gcMargin
	o.args = append(o.args, "set", &o.key, &o.wire[0], "px", &o.px, "nx", "get")
	p.op = o
	return p
}

// release returns p and its op to their pools; an abandoned op (its
// caller gave up while it was on the wire) stays out.
func (p *pendingClaim) release(abandoned bool) {
	if !abandoned {
		putOp(p.op)
	}
	*p = pendingClaim{}
	claimPool.Put(p)
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
	swap := getOp(kindSwap, p.op.key)
	swap.args = append(swap.args, version, encodeRecord(next), px)
	return c, swap, nil
}

// errReply reports a reply of an unexpected shape.
var errReply = errors.New("redisstore: unexpected reply")

// Complete implements dedupe.Store in one round trip (or a share of one).
// With Config.WaitReplicas it returns once that many replicas have the
// completed record, or fails with an error wrapping ErrNotReplicated.
func (s *Store) Complete(ctx context.Context, key, token string, res dedupe.Result, retention time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	o, err := s.completeOp(key, token, res, retention)
	if err != nil || o == nil {
		return err
	}
	return s.run1(ctx, o, "complete", key)
}

// completeOp returns the owned op of a Complete, or nil and the answer
// when the call can be answered without the server: an invalid retention,
// or a token that cannot be current.
func (s *Store) completeOp(key, token string, res dedupe.Result, retention time.Duration) (*op, error) {
	if retention <= 0 {
		return nil, fmt.Errorf("%w: retention %v must be positive", dedupe.ErrInvalidLease, retention)
	}
	o := s.ownedOp(ownedComplete, key, token)
	if o == nil {
		return nil, dedupe.ErrLeaseLost
	}
	retMs := ms(retention)
	o.state = stateDone
	if res.Failed {
		o.state = stateFailed
	}
	o.t1, o.t2 = o.now+retMs, retMs+gcMargin
	o.data = res.Data
	return o, nil
}

// Release implements dedupe.Store in one round trip.
func (s *Store) Release(ctx context.Context, key, token string) error {
	return s.simple(ctx, ownedRelease, "release", key, token)
}

// Snooze implements dedupe.Snoozer in one round trip.
func (s *Store) Snooze(ctx context.Context, key, token string) error {
	return s.simple(ctx, ownedSnooze, "snooze", key, token)
}

// Delete implements dedupe.Store in one round trip.
func (s *Store) Delete(ctx context.Context, key, token string) error {
	return s.simple(ctx, ownedDelete, "delete", key, token)
}

// Extend implements dedupe.Store in one round trip.
func (s *Store) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if lease <= 0 {
		return fmt.Errorf("%w: lease %v must be positive", dedupe.ErrInvalidLease, lease)
	}
	o := s.ownedOp(ownedExtend, key, token)
	if o == nil {
		return dedupe.ErrLeaseLost
	}
	o.t1, o.t2 = o.now+ms(lease), gcMargin
	return s.run1(ctx, o, "extend", key)
}

// simple runs an owned op that needs nothing but the token.
func (s *Store) simple(ctx context.Context, kind byte, name, key, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	o := s.ownedOp(kind, key, token)
	if o == nil {
		return dedupe.ErrLeaseLost
	}
	return s.run1(ctx, o, name, key)
}

// ownedOp returns an owned op of kind for key and token, stamped with now,
// or nil when token cannot be a record's current token: empty, holding a
// ':' (which ends a stored token) or longer than any token.
func (s *Store) ownedOp(kind byte, key, token string) *op {
	if token == "" || len(token) > maxToken || strings.IndexByte(token, ':') >= 0 {
		return nil
	}
	o := getOp(kindOwned, s.Key(key))
	o.owned, o.token, o.now = kind, token, s.now().UnixMilli()
	return o
}

// run1 runs one owned op through the batching queue and returns its
// answer.
func (s *Store) run1(ctx context.Context, o *op, name, key string) error {
	err, abandoned := s.exec(ctx, o)
	if abandoned {
		return err
	}
	if err == nil {
		err = o.answer(name, key)
	}
	putOp(o)
	return err
}

// answer is what an owned op's call returns once it ran: nil,
// dedupe.ErrLeaseLost, or an error naming the operation.
func (o *op) answer(name, key string) error {
	switch {
	case o.err != nil:
		return o.err
	case errors.Is(o.rerr, ErrNotReplicated):
		return fmt.Errorf("%w: %s %q", o.rerr, name, key)
	case o.rerr != nil:
		return fmt.Errorf("redisstore: %s %q: %w", name, key, o.rerr)
	}
	switch o.code {
	case '1':
		return nil
	case '0':
		return dedupe.ErrLeaseLost
	case 'W':
		return fmt.Errorf("redisstore: %s %q: %w: the key holds a value that is not a string", name, key, errRecord)
	}
	return fmt.Errorf("redisstore: %s %q: %w: answer %q", name, key, errReply, o.code)
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
