package redisstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemq/idemq/dedupe"
)

// DefaultPrefix is the key prefix used when Options.Prefix is empty.
const DefaultPrefix = "idemq:"

// GCMargin is added to a record's remaining logical lifetime (retention end,
// or lease end if later, minus the injected now) to get its Redis PEXPIRE.
// The physical TTL is garbage collection only and never ends a live record:
// 1 minute.
const GCMargin = time.Minute

// Options configures a Store. A nil *Options means defaults.
type Options struct {
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

// DefaultMaxBatch is Options.MaxBatch when zero: 128 operations per
// pipeline.
const DefaultMaxBatch = 128

// Store is a dedupe.Store on Redis. It is safe for concurrent use and holds
// no resources of its own: close the client when done.
type Store struct {
	c        redis.UniversalClient
	prefix   string
	now      func() time.Time
	claim    *redis.Script
	complete *redis.Script
	release  *redis.Script
	extend   *redis.Script

	// maxBatch is Options.MaxBatch; the queue of calls waiting for a
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
func New(c redis.UniversalClient, opts *Options) *Store {
	var o Options
	if opts != nil {
		o = *opts
	}
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
		claim:    redis.NewScript(claimLua),
		complete: redis.NewScript(completeLua),
		release:  redis.NewScript(releaseLua),
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

// Claim implements dedupe.Store in one round trip. Times are kept in whole
// milliseconds: the injected now is truncated, lease and retention are
// rounded up, so RetryAfter may differ from the exact remainder by less than
// a millisecond.
func (s *Store) Claim(ctx context.Context, key, fingerprint string, lease, retention time.Duration) (dedupe.Claim, error) {
	if err := ctx.Err(); err != nil {
		return dedupe.Claim{}, err
	}
	args, token, err := s.claimArgs(fingerprint, lease, retention)
	if err != nil {
		return dedupe.Claim{}, err
	}
	o := &op{script: s.claim, key: s.Key(key), args: args}
	if err := s.exec(ctx, o); err != nil {
		return dedupe.Claim{}, err
	}
	cmd, err := o.result()
	if err != nil {
		return dedupe.Claim{}, fmt.Errorf("redisstore: claim %q: %w", key, err)
	}
	v, err := cmd.Slice()
	if err != nil {
		return dedupe.Claim{}, fmt.Errorf("redisstore: claim %q: %w", key, err)
	}
	return parseClaim(v, token)
}

func (s *Store) claimArgs(fingerprint string, lease, retention time.Duration) ([]any, string, error) {
	if err := dedupe.ValidateLease(lease, retention); err != nil {
		return nil, "", err
	}
	token := dedupe.NewToken()
	return []any{s.now().UnixMilli(), ms(lease), ms(retention), fingerprint, token, gcMargin}, token, nil
}

// errReply reports a script reply of an unexpected shape.
var errReply = errors.New("redisstore: unexpected script reply")

func parseClaim(v []any, token string) (dedupe.Claim, error) {
	if len(v) != 5 {
		return dedupe.Claim{}, fmt.Errorf("%w: %v", errReply, v)
	}
	code, ok1 := v[0].(int64)
	retry, ok2 := v[1].(int64)
	fp, ok3 := v[2].(string)
	failed, ok4 := v[3].(int64)
	data, ok5 := v[4].(string)
	if !ok1 || !ok2 || !ok3 || !ok4 || !ok5 {
		return dedupe.Claim{}, fmt.Errorf("%w: %T %T %T %T %T", errReply, v[0], v[1], v[2], v[3], v[4])
	}
	switch code {
	case 1:
		return dedupe.Claim{Status: dedupe.Acquired, Token: token}, nil
	case 5:
		return dedupe.Claim{Status: dedupe.Acquired, Token: token, Takeover: true}, nil
	case 2:
		return dedupe.Claim{Status: dedupe.Busy, RetryAfter: time.Duration(retry) * time.Millisecond, Fingerprint: fp}, nil
	case 3:
		return dedupe.Claim{
			Status:      dedupe.Duplicate,
			Result:      dedupe.Result{Failed: failed == 1, Data: []byte(data)},
			Fingerprint: fp,
		}, nil
	case 4:
		return dedupe.Claim{Status: dedupe.Conflict, Fingerprint: fp}, nil
	}
	return dedupe.Claim{}, fmt.Errorf("%w: code %d", errReply, code)
}

// Complete implements dedupe.Store in one round trip.
func (s *Store) Complete(ctx context.Context, key, token string, res dedupe.Result, retention time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	args, err := s.completeArgs(res, retention)
	if err != nil {
		return err
	}
	return s.owned(ctx, s.complete, "complete", key, token, args...)
}

func (s *Store) completeArgs(res dedupe.Result, retention time.Duration) ([]any, error) {
	if retention <= 0 {
		return nil, fmt.Errorf("%w: retention %v must be positive", dedupe.ErrInvalidLease, retention)
	}
	state := dedupe.StateDone
	if res.Failed {
		state = dedupe.StateFailed
	}
	// res.Data goes out as a binary-safe bulk string; go-redis writes a
	// []byte argument as is.
	data := res.Data
	if data == nil {
		data = []byte{}
	}
	return []any{state.String(), data, ms(retention), gcMargin}, nil
}

// Release implements dedupe.Store in one round trip.
func (s *Store) Release(ctx context.Context, key, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.owned(ctx, s.release, "release", key, token)
}

// Extend implements dedupe.Store in one round trip.
func (s *Store) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if lease <= 0 {
		return fmt.Errorf("%w: lease %v must be positive", dedupe.ErrInvalidLease, lease)
	}
	return s.owned(ctx, s.extend, "extend", key, token, ms(lease), gcMargin)
}

// owned runs one of the token-checked scripts with ARGV now, token, rest...
func (s *Store) owned(ctx context.Context, sc *redis.Script, name, key, token string, rest ...any) error {
	if token == "" {
		return dedupe.ErrLeaseLost
	}
	o := &op{script: sc, key: s.Key(key), args: append([]any{s.now().UnixMilli(), token}, rest...)}
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

var _ dedupe.Store = (*Store)(nil)
