package redisstore

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/idemq/idemq/dedupe"
)

// A record is one Redis string (see "Record format" in doc.go):
//
//	byte 1        state: 'I' in progress, 'D' done, 'F' failed
//	bytes 2-14    retention end, Unix ms, 13 digits, zero-padded
//	bytes 15-27   lease end, Unix ms, 13 digits (all zeros once completed)
//	bytes 28-40   creation time, Unix ms, 13 digits
//	bytes 41-46   attempts, 6 digits, zero-padded
//	bytes 47-66   fence, 20 digits, zero-padded
//	then          token ":" len(fingerprint) ":" fingerprint result
//
// Records of the first format (lower-case states, no fence: a 46-byte
// header) are still read, with fence 0; the scripts do not own them, so
// they are never rewritten in place, only replaced by a takeover.
//
// A released record has an empty token and lease end zero.
//
// Fixed-width times let the scripts compare them as strings and cut fields
// at fixed offsets, with no parsing and no string formatting in Lua. The
// header plus the token (headerLen + len(token) + 1 bytes) identifies a
// record's version: every change of state, lease or retention rewrites the
// header, and every new lease has a new token.

const (
	headerLen   = 66
	legacyLen   = 46 // the header of the first format, without the fence
	digits      = 13
	fenceLen    = 20
	maxMillis   = 9_999_999_999_999 // the largest 13-digit time: year 2286
	attemptLen  = 6
	maxAttempts = 999_999
)

const (
	stateInProgress = 'I'
	stateDone       = 'D'
	stateFailed     = 'F'
)

// The states of the first format, which had no fence.
const (
	legacyInProgress = 'i'
	legacyDone       = 'd'
	legacyFailed     = 'f'
)

// errRecord reports a stored value that is not a record of this format.
var errRecord = errors.New("redisstore: malformed record")

// appendMillis appends v as 13 zero-padded digits, clamped to what 13
// digits hold.
func appendMillis(b []byte, v int64) []byte {
	v = min(max(v, 0), maxMillis)
	var d [digits]byte
	for i := digits - 1; i >= 0; i-- {
		d[i] = byte('0' + v%10)
		v /= 10
	}
	return append(b, d[:]...)
}

// appendAttempts appends n as 6 zero-padded digits, clamped.
func appendAttempts(b []byte, n int) []byte {
	n = min(max(n, 0), maxAttempts)
	var d [attemptLen]byte
	for i := attemptLen - 1; i >= 0; i-- {
		d[i] = byte('0' + n%10)
		n /= 10
	}
	return append(b, d[:]...)
}

// appendFence appends f as 20 zero-padded digits (every uint64 fits).
func appendFence(b []byte, f uint64) []byte {
	var d [fenceLen]byte
	for i := fenceLen - 1; i >= 0; i-- {
		d[i] = byte('0' + f%10)
		f /= 10
	}
	return append(b, d[:]...)
}

// encode returns the stored form of a record.
func encode(state byte, expires, leaseEnd, created int64, attempts int, fence uint64, token, fp string, result []byte) string {
	var sb strings.Builder
	sb.Grow(headerLen + len(token) + len(fp) + len(result) + 24)
	b := make([]byte, 0, headerLen+len(token)+24)
	b = append(b, state)
	b = appendMillis(b, expires)
	b = appendMillis(b, leaseEnd)
	b = appendMillis(b, created)
	b = appendAttempts(b, attempts)
	b = appendFence(b, fence)
	b = append(b, token...)
	b = append(b, ':')
	b = strconv.AppendInt(b, int64(len(fp)), 10)
	b = append(b, ':')
	sb.Write(b)
	sb.WriteString(fp)
	sb.Write(result)
	return sb.String()
}

// encodeRecord is encode for a dedupe.Record.
func encodeRecord(r *dedupe.Record) string {
	state := byte(stateInProgress)
	switch r.State {
	case dedupe.StateDone:
		state = stateDone
	case dedupe.StateFailed:
		state = stateFailed
	}
	var lease int64
	if !r.LeaseUntil.IsZero() {
		lease = r.LeaseUntil.UnixMilli()
	}
	return encode(state, r.ExpiresAt.UnixMilli(), lease, r.CreatedAt.UnixMilli(), r.Attempts, r.Fence, r.Token, r.Fingerprint, r.Result)
}

// decode parses a stored value. version is the part that identifies the
// record's version (header and token), for the swap script.
func decode(key, v string) (rec *dedupe.Record, version string, err error) {
	bad := func(what string) (*dedupe.Record, string, error) {
		return nil, "", fmt.Errorf("%w at %q: %s", errRecord, key, what)
	}
	if len(v) == 0 {
		return bad("too short")
	}
	r := &dedupe.Record{Key: key}
	hl := headerLen
	switch v[0] {
	case stateInProgress, legacyInProgress:
		r.State = dedupe.StateInProgress
	case stateDone, legacyDone:
		r.State = dedupe.StateDone
	case stateFailed, legacyFailed:
		r.State = dedupe.StateFailed
	default:
		return bad("unknown state")
	}
	if v[0] >= 'a' {
		hl = legacyLen
	}
	if len(v) < hl+3 {
		return bad("too short")
	}
	var t [3]int64
	for i := range t {
		f := v[1+i*digits : 1+(i+1)*digits]
		n, err := strconv.ParseInt(f, 10, 64)
		if err != nil || !decimal(f) {
			return bad("time")
		}
		t[i] = n
	}
	r.ExpiresAt = time.UnixMilli(t[0])
	if t[1] != 0 {
		r.LeaseUntil = time.UnixMilli(t[1])
	}
	r.CreatedAt = time.UnixMilli(t[2])
	a := v[1+3*digits : legacyLen]
	if !decimal(a) {
		return bad("attempts")
	}
	r.Attempts, _ = strconv.Atoi(a)
	if hl == headerLen {
		f := v[legacyLen:headerLen]
		fence, err := strconv.ParseUint(f, 10, 64)
		if err != nil || !decimal(f) {
			return bad("fence")
		}
		r.Fence = fence
	}
	rest := v[hl:]
	tok, rest, ok := strings.Cut(rest, ":")
	if !ok {
		return bad("token")
	}
	r.Token = tok
	version = v[:hl+len(tok)+1]
	n, rest, ok := strings.Cut(rest, ":")
	fpLen, err := strconv.Atoi(n)
	if !ok || err != nil || !decimal(n) || n != "0" && n[0] == '0' || fpLen > len(rest) {
		return bad("fingerprint length")
	}
	r.Fingerprint = rest[:fpLen]
	if res := rest[fpLen:]; res != "" {
		r.Result = []byte(res)
	}
	return r, version, nil
}

// decimal reports whether s is a non-empty run of ASCII digits: no sign,
// no space (strconv.ParseInt alone accepts "+1" and "-1").
func decimal(s string) bool {
	if s == "" {
		return false
	}
	for i := range len(s) {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// The scripts hold the state machine's writes that must check the record
// first; Claim of an absent key needs none (SET NX GET), and Claim of an
// existing one runs storekit.Decide in Go on the value SET NX GET returned.

// swapLua: KEYS[1] key; ARGV version, new value, PX (ms). Replaces the
// record if it is still the version the caller decided on. Returns 1, or 0
// when the record changed meanwhile.
const swapLua = `
local v = redis.call('GET', KEYS[1])
if not v or string.sub(v, 1, #ARGV[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
`

// ownedLua is the prologue of complete, release, delete and extend:
// ARGV[1] is now (13 digits), ARGV[2] the token followed by ":" (never
// empty: the caller refuses an empty token). The record must be live (now
// before its retention end), in progress ('I', 73), with that token
// (dedupe's owned). An expired lease nobody took over is still owned.
const ownedLua = `
local v = redis.call('GET', KEYS[1])
if not v or string.byte(v, 1) ~= 73 or ARGV[1] >= string.sub(v, 2, 14)
  or string.sub(v, 67, 66 + #ARGV[2]) ~= ARGV[2] then
  return 0
end
`

// completeLua: ARGV now, token ":", new state and times (27 bytes), result,
// PX (ms). Keeps creation time, attempts, fence, token and fingerprint.
// Returns 1, or 0 for a lost lease.
const completeLua = ownedLua + `
redis.call('SET', KEYS[1], ARGV[3] .. string.sub(v, 28) .. ARGV[4], 'PX', ARGV[5])
return 1
`

// releaseLua: ARGV now, token ":". Clears the token and the lease end,
// keeping retention, creation time, attempts, fence, fingerprint and the
// key's TTL. Returns 1, or 0 for a lost lease.
const releaseLua = ownedLua + `
redis.call('SET', KEYS[1], string.sub(v, 1, 14) .. '0000000000000' .. string.sub(v, 28, 66) ..
  string.sub(v, 66 + #ARGV[2]), 'KEEPTTL')
return 1
`

// snoozeLua: releaseLua, with the attempts field lowered by one (never below
// zero): the lease given back does not count as an attempt.
const snoozeLua = ownedLua + `
local a = tonumber(string.sub(v, 41, 46)) - 1
if a < 0 then a = 0 end
redis.call('SET', KEYS[1], string.sub(v, 1, 14) .. '0000000000000' .. string.sub(v, 28, 40) ..
  string.format('%06d', a) .. string.sub(v, 47, 66) .. string.sub(v, 66 + #ARGV[2]), 'KEEPTTL')
return 1
`

// deleteLua: ARGV now, token ":". Returns 1, or 0 for a lost lease.
const deleteLua = ownedLua + `
redis.call('DEL', KEYS[1])
return 1
`

// extendLua: ARGV now, token ":", new lease end (13 digits), GC margin
// (ms). The retention end becomes the later of itself and the lease end.
// Returns 1, or 0 for a lost lease.
const extendLua = ownedLua + `
local e = string.sub(v, 2, 14)
if ARGV[3] > e then e = ARGV[3] end
redis.call('SET', KEYS[1], 'I' .. e .. ARGV[3] .. string.sub(v, 28), 'PX',
  tonumber(e) - tonumber(ARGV[1]) + tonumber(ARGV[4]))
return 1
`
