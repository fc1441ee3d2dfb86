package redisstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"

	"github.com/idemq/idemq/dedupe"
)

// ErrNotFound is returned by Get when no live record exists for the key
// (never claimed, deleted, or retention over).
var ErrNotFound = errors.New("redisstore: record not found")

// ScanCount is the COUNT hint Scan gives each SCAN call, and the most keys
// it reads with one MGET: 500.
const ScanCount = 500

// Get returns the live record stored for key, for inspection (the idemq
// CLI, dashboards); the state machine never needs it. It returns an error
// wrapping ErrNotFound when there is none or its retention is over (by
// Config.Now), and a "malformed record" error when the value at the key is
// not a record of this store.
func (s *Store) Get(ctx context.Context, key string) (*dedupe.Record, error) {
	v, err := s.c.Get(ctx, s.Key(key)).Result()
	if errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, key)
	}
	if err != nil {
		return nil, fmt.Errorf("redisstore: get %q: %w", key, err)
	}
	r, _, err := decode(key, v)
	if err != nil {
		return nil, err
	}
	if !r.Live(s.now()) {
		return nil, fmt.Errorf("%w: %q (retention over)", ErrNotFound, key)
	}
	return r, nil
}

// Scan calls fn for every live record whose dedupe key starts with prefix
// ("" for all), in no particular order, until fn returns an error (which
// Scan returns) or every key was visited. It walks the keys with SCAN MATCH
// Config.Prefix+prefix* (on every master of a Redis Cluster, every shard of
// a Ring) and reads them with MGET, ScanCount at a time, so it never blocks
// the server; a key written or deleted during the scan may or may not be
// visited, and one may be visited twice (SCAN's guarantee). Values under the
// prefix that are not records of this store (another application's keys)
// are skipped. A record's Key is its dedupe key.
func (s *Store) Scan(ctx context.Context, prefix string, fn func(*dedupe.Record) error) error {
	match := globEscape(s.prefix+prefix) + "*"
	var mu sync.Mutex // fn is called from one goroutine at a time
	each := func(ctx context.Context, c redis.UniversalClient) error {
		var cursor uint64
		for {
			keys, next, err := c.Scan(ctx, cursor, match, ScanCount).Result()
			if err != nil {
				return fmt.Errorf("redisstore: scan %q: %w", match, err)
			}
			if err := s.visit(ctx, c, keys, &mu, fn); err != nil {
				return err
			}
			if next == 0 {
				return nil
			}
			cursor = next
		}
	}
	switch c := s.c.(type) {
	case *redis.ClusterClient:
		return c.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error { return each(ctx, n) })
	case *redis.Ring:
		return c.ForEachShard(ctx, func(ctx context.Context, n *redis.Client) error { return each(ctx, n) })
	default:
		return each(ctx, s.c)
	}
}

// visit reads keys (full Redis keys) and calls fn for the live records.
// Keys are read one by one on a cluster node, where an MGET across slots is
// refused, and with one MGET elsewhere.
func (s *Store) visit(ctx context.Context, c redis.UniversalClient, keys []string, mu *sync.Mutex, fn func(*dedupe.Record) error) error {
	if len(keys) == 0 {
		return nil
	}
	vals := make([]any, len(keys))
	if _, cluster := s.c.(*redis.ClusterClient); cluster {
		pipe := c.Pipeline()
		cmds := make([]*redis.StringCmd, len(keys))
		for i, k := range keys {
			cmds[i] = pipe.Get(ctx, k)
		}
		if _, err := pipe.Exec(ctx); err != nil && !isReply(err) {
			return fmt.Errorf("redisstore: scan: read %d keys: %w", len(keys), err)
		}
		for i, cmd := range cmds {
			if v, err := cmd.Result(); err == nil {
				vals[i] = v
			}
		}
	} else {
		var err error
		if vals, err = c.MGet(ctx, keys...).Result(); err != nil {
			return fmt.Errorf("redisstore: scan: read %d keys: %w", len(keys), err)
		}
	}
	now := s.now()
	mu.Lock()
	defer mu.Unlock()
	for i, v := range vals {
		str, ok := v.(string)
		if !ok { // deleted meanwhile, or not a string
			continue
		}
		r, _, err := decode(strings.TrimPrefix(keys[i], s.prefix), str)
		if err != nil || !r.Live(now) {
			continue
		}
		if err := fn(r); err != nil {
			return err
		}
	}
	return nil
}

// globEscape escapes the glob metacharacters of SCAN MATCH in s.
func globEscape(s string) string {
	var b strings.Builder
	for i := range len(s) { // bytes: keys are binary-safe
		switch s[i] {
		case '*', '?', '[', ']', '\\':
			b.WriteByte('\\')
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
