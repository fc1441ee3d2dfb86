package natskv

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/dedupe"
)

// ErrNotFound is returned by Get when no live record exists for the key
// (never claimed, deleted, or retention over).
var ErrNotFound = errors.New("natskv: record not found")

// Get returns the live record stored for key, with its result (read from
// its chunks when it was stored in chunks), for inspection (the idemq CLI);
// the state machine never needs it. It returns an error wrapping
// ErrNotFound when there is none or its retention is over (by Config.Now).
func (s *Store) Get(ctx context.Context, key string) (*dedupe.Record, error) {
	r, err := s.read(ctx, key, kvKey(key))
	if err != nil {
		return nil, err
	}
	if r == nil {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, key)
	}
	return r, nil
}

// read returns the live record at KV key k (nil when there is none), its
// result reassembled; key names it in errors and in the record.
func (s *Store) read(ctx context.Context, key, k string) (*dedupe.Record, error) {
	r, ch, _, err := s.load(ctx, key, k)
	if err != nil || r == nil || !r.Live(s.now()) {
		return nil, err
	}
	if ch != nil {
		if r.Result, err = s.readChunks(ctx, key, ch); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// List calls fn for every live record in the bucket whose dedupe key starts
// with prefix ("" for all), in no particular order, until fn returns an
// error (which List returns) or every key was visited. It lists the
// bucket's keys (one JetStream consumer over the bucket's last values) and
// reads each record with a Get, so it costs a round trip per record. The
// record's Key is its dedupe key — except for keys longer than
// MaxInlineKey, stored under their hash, whose dedupe key cannot be known:
// those have an empty Key, match only the prefix "", and are passed with
// their KV key (see KVKey) as hashed.
func (s *Store) List(ctx context.Context, prefix string, fn func(r *dedupe.Record, hashed string) error) error {
	lister, err := s.kv.ListKeys(ctx)
	if errors.Is(err, jetstream.ErrNoKeysFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("natskv: list bucket %q: %w", s.kv.Bucket(), err)
	}
	defer func() { _ = lister.Stop() }()
	for k := range lister.Keys() {
		var key, hashed string
		switch {
		case strings.HasPrefix(k, "k_"):
			b, err := base64.RawURLEncoding.DecodeString(k[2:])
			if err != nil {
				continue // not a key this package wrote
			}
			key = string(b)
			if !strings.HasPrefix(key, prefix) {
				continue
			}
		case strings.HasPrefix(k, "h_"):
			if prefix != "" {
				continue
			}
			hashed = k
		default:
			continue // result chunks, foreign keys
		}
		r, err := s.read(ctx, key, k)
		if err != nil {
			return err
		}
		if r == nil {
			continue // deleted since it was listed, or retention over
		}
		if err := fn(r, hashed); err != nil {
			return err
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return nil
}
