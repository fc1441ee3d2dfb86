package natskv

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"time"

	"github.com/idemq/idemq/dedupe"
)

// MaxInlineKey is the longest dedupe key, in bytes, stored under its own
// base64url encoding; longer keys are stored under the base64url SHA-256 of
// the key: 189 bytes (an encoded key of at most 254 characters).
const MaxInlineKey = 189

// kvKey maps an arbitrary dedupe key to a valid KV key ([-/_=.a-zA-Z0-9],
// no leading, trailing or double dot): "k_" + base64url(key) without
// padding, or "h_" + base64url(sha256(key)) when key is longer than
// MaxInlineKey. The two forms never collide (different first letters), and
// neither contains a dot, so no key addresses a subject hierarchy.
func kvKey(key string) string {
	if len(key) <= MaxInlineKey {
		return "k_" + base64.RawURLEncoding.EncodeToString([]byte(key))
	}
	sum := sha256.Sum256([]byte(key))
	return "h_" + base64.RawURLEncoding.EncodeToString(sum[:])
}

// chunkKey names the n-th chunk of a result stored apart from its record.
// id is a fresh random hex string per Complete, so chunks are immutable.
func chunkKey(id string, n int) string {
	return "r_" + id + "_" + strconv.Itoa(n)
}

// Record value layout, version 3 (all integers varint-encoded):
//
//	byte     version (3; version 2 lacks the fence field, version 1 also
//	         the attempts field: both read as 0)
//	byte     state (dedupe.State)
//	byte     flags: 1 = result stored in chunks
//	varint   lease end, Unix nanoseconds (0 = none)
//	varint   created, Unix nanoseconds
//	varint   retention end, Unix nanoseconds
//	uvarint  attempts (version 2 and later)
//	uvarint  fence (version 3)
//	uvarint  len, token
//	uvarint  len, fingerprint
//	then, inline:   the result bytes up to the end of the value
//	or, chunked:    uvarint chunk count, uvarint total length, uvarint len, chunk id
const (
	codecVersion  = 3
	codecV2       = 2
	codecV1       = 1
	flagChunked   = 1
	fixedOverhead = 3 + 3*binary.MaxVarintLen64
)

// chunks describes a result stored in separate keys.
type chunks struct {
	n     int
	total int
	id    string
}

// errCorrupt reports a value this package cannot decode.
var errCorrupt = errors.New("natskv: corrupt record")

func unixNano(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

func fromUnixNano(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// encode serialises r. When ch is not nil the result is referenced by ch
// instead of held inline.
func encode(r *dedupe.Record, ch *chunks) []byte {
	n := fixedOverhead + 3*binary.MaxVarintLen64 + len(r.Token) + len(r.Fingerprint)
	if ch == nil {
		n += len(r.Result)
	} else {
		n += 3*binary.MaxVarintLen64 + len(ch.id)
	}
	b := make([]byte, 0, n)
	var flags byte
	if ch != nil {
		flags |= flagChunked
	}
	b = append(b, codecVersion, byte(r.State), flags)
	b = binary.AppendVarint(b, unixNano(r.LeaseUntil))
	b = binary.AppendVarint(b, unixNano(r.CreatedAt))
	b = binary.AppendVarint(b, unixNano(r.ExpiresAt))
	b = binary.AppendUvarint(b, uint64(max(r.Attempts, 0)))
	b = binary.AppendUvarint(b, r.Fence)
	b = binary.AppendUvarint(b, uint64(len(r.Token)))
	b = append(b, r.Token...)
	b = binary.AppendUvarint(b, uint64(len(r.Fingerprint)))
	b = append(b, r.Fingerprint...)
	if ch == nil {
		return append(b, r.Result...)
	}
	b = binary.AppendUvarint(b, uint64(ch.n))
	b = binary.AppendUvarint(b, uint64(ch.total))
	b = binary.AppendUvarint(b, uint64(len(ch.id)))
	return append(b, ch.id...)
}

// decode parses a value written by encode. The returned record's Result
// aliases b; ch is non-nil when the result is in chunks.
func decode(key string, b []byte) (*dedupe.Record, *chunks, error) {
	if len(b) < 3 || b[0] != codecVersion && b[0] != codecV2 && b[0] != codecV1 {
		return nil, nil, fmt.Errorf("%w: key %q: bad header", errCorrupt, key)
	}
	r := &dedupe.Record{Key: key, State: dedupe.State(b[1])}
	if r.State < dedupe.StateInProgress || r.State > dedupe.StateFailed {
		return nil, nil, fmt.Errorf("%w: key %q: unknown state %d", errCorrupt, key, b[1])
	}
	version, flags := b[0], b[2]
	b = b[3:]
	var err error
	next := func() int64 {
		v, n := binary.Varint(b)
		if n <= 0 {
			err = errCorrupt
			return 0
		}
		b = b[n:]
		return v
	}
	nextU := func() uint64 {
		v, n := binary.Uvarint(b)
		if n <= 0 {
			err = errCorrupt
			return 0
		}
		b = b[n:]
		return v
	}
	str := func() string {
		l := nextU()
		if err != nil || l > uint64(len(b)) {
			err = errCorrupt
			return ""
		}
		s := string(b[:l])
		b = b[l:]
		return s
	}
	r.LeaseUntil = fromUnixNano(next())
	r.CreatedAt = fromUnixNano(next())
	r.ExpiresAt = fromUnixNano(next())
	if version >= codecV2 {
		a := nextU()
		if a > math.MaxInt32 {
			err = errCorrupt
		}
		r.Attempts = int(a)
	}
	if version >= codecVersion {
		r.Fence = nextU()
	}
	r.Token = str()
	r.Fingerprint = str()
	if err != nil {
		return nil, nil, fmt.Errorf("%w: key %q", errCorrupt, key)
	}
	if flags&flagChunked == 0 {
		r.Result = b
		return r, nil, nil
	}
	ch := &chunks{n: int(nextU()), total: int(nextU())}
	ch.id = str()
	if err != nil || ch.n <= 0 || ch.total < 0 {
		return nil, nil, fmt.Errorf("%w: key %q: bad chunk reference", errCorrupt, key)
	}
	return r, ch, nil
}
