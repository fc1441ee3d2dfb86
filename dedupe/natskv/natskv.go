package natskv

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/storekit"
)

// Defaults of Config.
const (
	// DefaultBucket is the KV bucket used when Config.Bucket is empty.
	DefaultBucket = "idemq_dedupe"
	// DefaultTTL is the bucket's TTL (stream MaxAge) when Config.TTL is
	// zero: 72 hours.
	DefaultTTL = 72 * time.Hour
	// MaxAttempts bounds how many times one operation re-reads the record
	// after losing a compare-and-set race before it gives up with
	// ErrContention: 64.
	MaxAttempts = 64
)

// ErrContention is returned when an operation lost MaxAttempts
// compare-and-set races in a row on one key. It is transient: retry later.
var ErrContention = errors.New("natskv: too much contention on one key")

// ErrRetentionTooLong is returned (wrapping dedupe.ErrInvalidLease) when a
// retention or lease is longer than the bucket's TTL: the server would
// delete the record while it is still live.
var ErrRetentionTooLong = fmt.Errorf("%w: longer than the bucket TTL", dedupe.ErrInvalidLease)

// Config configures a Store. Its zero value means defaults.
type Config struct {
	// Bucket is the KV bucket holding the records, created when missing.
	// Default DefaultBucket ("idemq_dedupe").
	Bucket string
	// TTL is the bucket's TTL (MaxAge) when New creates it: garbage
	// collection of records whose retention is over. Retentions and leases
	// longer than the bucket's TTL are rejected. Default DefaultTTL (72h).
	// An existing bucket keeps its own TTL, which the Store then uses.
	TTL time.Duration
	// Replicas is the bucket's replication factor when New creates it.
	// Default 1.
	Replicas int
	// Now is the clock every expiry is computed from. Default time.Now.
	Now func() time.Time
}

// Store is a dedupe.Store on a NATS JetStream KV bucket. It is safe for
// concurrent use and owns nothing that needs closing.
type Store struct {
	kv       jetstream.KeyValue
	ttl      time.Duration // 0: records never expire physically
	maxValue int           // largest value stored in one message, bytes
	now      func() time.Time
}

// New returns a Store on the bucket opts.Bucket, creating the bucket (with
// History 1, file storage, opts.TTL and opts.Replicas) when it does not
// exist and binding to it when it does.
func New(ctx context.Context, js jetstream.JetStream, cfg Config) (*Store, error) {
	o := cfg
	if o.Bucket == "" {
		o.Bucket = DefaultBucket
	}
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	if o.TTL < 0 {
		return nil, fmt.Errorf("natskv: TTL %v must be positive", o.TTL)
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	kv, err := js.KeyValue(ctx, o.Bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:      o.Bucket,
			Description: "idemq dedupe records",
			History:     1,
			TTL:         o.TTL,
			Storage:     jetstream.FileStorage,
			Replicas:    o.Replicas,
		})
		if errors.Is(err, jetstream.ErrBucketExists) { // created meanwhile by another process
			kv, err = js.KeyValue(ctx, o.Bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("natskv: bucket %q: %w", o.Bucket, err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		return nil, fmt.Errorf("natskv: bucket %q status: %w", o.Bucket, err)
	}
	// Leave room for the message headers within the server's max payload.
	maxValue := int(js.Conn().MaxPayload()) - 4096
	if maxValue < 1024 {
		maxValue = 1024
	}
	return &Store{kv: kv, ttl: st.TTL(), maxValue: maxValue, now: o.Now}, nil
}

// Bucket returns the name of the KV bucket holding the records.
func (s *Store) Bucket() string { return s.kv.Bucket() }

// KVKey returns the KV key that holds the record for a dedupe key (see
// MaxInlineKey for the encoding).
func (s *Store) KVKey(key string) string { return kvKey(key) }

// checkOwner validates the arguments of Complete and Extend: a live ctx, a
// positive duration within the bucket's TTL, and a token.
func (s *Store) checkOwner(ctx context.Context, what string, d time.Duration, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d <= 0 {
		return fmt.Errorf("%w: %s %v must be positive", dedupe.ErrInvalidLease, what, d)
	}
	if err := s.checkTTL(what, d); err != nil {
		return err
	}
	if token == "" {
		return dedupe.ErrLeaseLost
	}
	return nil
}

func (s *Store) checkTTL(what string, d time.Duration) error {
	if s.ttl > 0 && d > s.ttl {
		return fmt.Errorf("%w: %s %v, bucket TTL %v", ErrRetentionTooLong, what, d, s.ttl)
	}
	return nil
}

// load reads the record for kvKey k. It returns a nil record and revision
// 0 when the key is absent or deleted.
func (s *Store) load(ctx context.Context, key, k string) (*dedupe.Record, *chunks, uint64, error) {
	e, err := s.kv.Get(ctx, k)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil, 0, nil
	}
	if err != nil {
		return nil, nil, 0, fmt.Errorf("natskv: get %q: %w", key, err)
	}
	r, ch, err := decode(key, e.Value())
	if err != nil {
		return nil, nil, 0, err
	}
	return r, ch, e.Revision(), nil
}

// lostRace reports whether err means a compare-and-set lost to a
// concurrent writer. Replicated (R>1) buckets report a wrong last sequence
// as error code 10164, single-replica ones as 10071.
func lostRace(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) ||
		errors.Is(err, jetstream.ErrKeyRevisionMismatch) ||
		(errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
			apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant))
}

// Claim implements dedupe.Store: Get, then storekit.Decide, then Create (key
// absent) or Update with the read revision, re-reading on a lost race.
func (s *Store) Claim(ctx context.Context, key, fingerprint string, lease, retention time.Duration) (dedupe.Claim, error) {
	if err := ctx.Err(); err != nil {
		return dedupe.Claim{}, err
	}
	if err := storekit.ValidateLease(lease, retention); err != nil {
		return dedupe.Claim{}, err
	}
	if err := s.checkTTL("retention", retention); err != nil {
		return dedupe.Claim{}, err
	}
	k := kvKey(key)
	for range MaxAttempts {
		if err := ctx.Err(); err != nil {
			return dedupe.Claim{}, err
		}
		cur, ch, rev, err := s.load(ctx, key, k)
		if err != nil {
			return dedupe.Claim{}, err
		}
		c, next := storekit.Decide(cur, key, fingerprint, s.now(), lease, retention)
		if next == nil {
			if c.Status == dedupe.Duplicate {
				if ch != nil {
					c.Result.Data, err = s.readChunks(ctx, key, ch)
					if err != nil {
						return dedupe.Claim{}, err
					}
				} else if c.Result.Data == nil {
					c.Result.Data = []byte{}
				}
			}
			return c, nil
		}
		if rev == 0 {
			_, err = s.kv.Create(ctx, k, encode(next, nil))
		} else {
			_, err = s.kv.Update(ctx, k, encode(next, nil), rev)
		}
		if lostRace(err) {
			continue
		}
		if err != nil {
			return dedupe.Claim{}, fmt.Errorf("natskv: claim %q: %w", key, err)
		}
		return c, nil
	}
	return dedupe.Claim{}, fmt.Errorf("%w: claim %q", ErrContention, key)
}

// Complete implements dedupe.Store: Get, storekit.CompleteRecord, Update with
// the read revision. A result too large for one message (the server's max
// payload less 4 KiB) is first written in chunks under keys of its own,
// named by a fresh id, and the record refers to them.
func (s *Store) Complete(ctx context.Context, key, token string, res dedupe.Result, retention time.Duration) error {
	if err := s.checkOwner(ctx, "retention", retention, token); err != nil {
		return err
	}
	k := kvKey(key)
	// One instant for every attempt, taken before any chunk is written, so
	// that the logical retention ends before the chunks' physical TTL.
	now := s.now()
	var ch *chunks
	for range MaxAttempts {
		if err := ctx.Err(); err != nil {
			return err
		}
		cur, _, rev, err := s.load(ctx, key, k)
		if err != nil {
			return err
		}
		next, err := storekit.CompleteRecord(cur, token, res, now, retention)
		if err != nil {
			s.dropChunks(ctx, ch)
			return err
		}
		var val []byte
		if ch == nil && len(next.Result)+fixedOverhead+len(next.Token)+len(next.Fingerprint)+32 > s.maxValue {
			if ch, err = s.writeChunks(ctx, key, res.Data); err != nil {
				return err
			}
		}
		val = encode(next, ch)
		_, err = s.kv.Update(ctx, k, val, rev)
		if lostRace(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("natskv: complete %q: %w", key, err)
		}
		return nil
	}
	return fmt.Errorf("%w: complete %q", ErrContention, key)
}

// writeChunks stores data in chunks of at most maxValue bytes.
func (s *Store) writeChunks(ctx context.Context, key string, data []byte) (*chunks, error) {
	ch := &chunks{id: storekit.NewToken(), total: len(data)}
	for off := 0; off < len(data); off += s.maxValue {
		end := min(off+s.maxValue, len(data))
		if _, err := s.kv.Put(ctx, chunkKey(ch.id, ch.n), data[off:end]); err != nil {
			s.dropChunks(ctx, ch)
			return nil, fmt.Errorf("natskv: complete %q: write result chunk %d: %w", key, ch.n, err)
		}
		ch.n++
	}
	return ch, nil
}

// readChunks reassembles a chunked result.
func (s *Store) readChunks(ctx context.Context, key string, ch *chunks) ([]byte, error) {
	data := make([]byte, 0, ch.total)
	for i := range ch.n {
		e, err := s.kv.Get(ctx, chunkKey(ch.id, i))
		if err != nil {
			return nil, fmt.Errorf("natskv: claim %q: read result chunk %d of %d: %w", key, i, ch.n, err)
		}
		data = append(data, e.Value()...)
	}
	if len(data) != ch.total {
		return nil, fmt.Errorf("%w: key %q: result is %d bytes, want %d", errCorrupt, key, len(data), ch.total)
	}
	return data, nil
}

// dropChunks deletes chunks that no record refers to, best effort, even
// when ctx is already cancelled (for at most 5s): the bucket TTL removes
// whatever is left.
func (s *Store) dropChunks(ctx context.Context, ch *chunks) {
	if ch == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	for i := range ch.n {
		_ = s.kv.Purge(ctx, chunkKey(ch.id, i))
	}
}

// Release implements dedupe.Store: Get, storekit.ReleaseRecord, then Update
// with the read revision.
func (s *Store) Release(ctx context.Context, key, token string) error {
	return s.ownedWrite(ctx, "release", key, token, func(cur *dedupe.Record) (*dedupe.Record, error) {
		return storekit.ReleaseRecord(cur, token, s.now())
	})
}

// Snooze implements dedupe.Snoozer: Get, storekit.SnoozeRecord, then Update
// with the read revision.
func (s *Store) Snooze(ctx context.Context, key, token string) error {
	return s.ownedWrite(ctx, "snooze", key, token, func(cur *dedupe.Record) (*dedupe.Record, error) {
		return storekit.SnoozeRecord(cur, token, s.now())
	})
}

// Delete implements dedupe.Store: Get, storekit.DeleteRecord, then Delete
// with the read revision as the expected last revision.
func (s *Store) Delete(ctx context.Context, key, token string) error {
	return s.ownedWrite(ctx, "delete", key, token, func(cur *dedupe.Record) (*dedupe.Record, error) {
		return nil, storekit.DeleteRecord(cur, token, s.now())
	})
}

// ownedWrite reads key's record, asks change for the record to store (nil:
// delete it) and writes it if the record did not change meanwhile, trying
// again up to MaxAttempts times when it did.
func (s *Store) ownedWrite(ctx context.Context, op, key, token string, change func(*dedupe.Record) (*dedupe.Record, error)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if token == "" {
		return dedupe.ErrLeaseLost
	}
	k := kvKey(key)
	for range MaxAttempts {
		if err := ctx.Err(); err != nil {
			return err
		}
		cur, _, rev, err := s.load(ctx, key, k)
		if err != nil {
			return err
		}
		next, err := change(cur)
		if err != nil {
			return err
		}
		if next == nil {
			err = s.kv.Delete(ctx, k, jetstream.LastRevision(rev))
		} else {
			_, err = s.kv.Update(ctx, k, encode(next, nil), rev)
		}
		if lostRace(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("natskv: %s %q: %w", op, key, err)
		}
		return nil
	}
	return fmt.Errorf("%w: %s %q", ErrContention, op, key)
}

// Ping implements dedupe.Pinger: it reads the bucket's status.
func (s *Store) Ping(ctx context.Context) error {
	if _, err := s.kv.Status(ctx); err != nil {
		return fmt.Errorf("natskv: ping: %w", err)
	}
	return nil
}

// Extend implements dedupe.Store: Get, storekit.ExtendRecord, Update with the
// read revision.
func (s *Store) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	if err := s.checkOwner(ctx, "lease", lease, token); err != nil {
		return err
	}
	k := kvKey(key)
	for range MaxAttempts {
		if err := ctx.Err(); err != nil {
			return err
		}
		cur, _, rev, err := s.load(ctx, key, k)
		if err != nil {
			return err
		}
		next, err := storekit.ExtendRecord(cur, token, s.now(), lease)
		if err != nil {
			return err
		}
		_, err = s.kv.Update(ctx, k, encode(next, nil), rev)
		if lostRace(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("natskv: extend %q: %w", key, err)
		}
		return nil
	}
	return fmt.Errorf("%w: extend %q", ErrContention, key)
}

var _ dedupe.Store = (*Store)(nil)
