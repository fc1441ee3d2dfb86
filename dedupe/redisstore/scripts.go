package redisstore

import (
	"errors"
	"fmt"
	"slices"
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

// encode returns the stored form of a record, in one allocation.
func encode(state byte, expires, leaseEnd, created int64, attempts int, fence uint64, token, fp string, result []byte) string {
	var sb strings.Builder
	sb.Grow(encodedLen(token, fp, result))
	var h [headerLen + 21]byte
	sb.Write(appendHeader(h[:0], state, expires, leaseEnd, created, attempts, fence))
	sb.WriteString(token)
	sb.Write(appendFPLen(h[:0], fp))
	sb.WriteString(fp)
	sb.Write(result)
	return sb.String()
}

// appendRecord appends the stored form of a record to b: encode's bytes.
func appendRecord(b []byte, state byte, expires, leaseEnd, created int64, attempts int, fence uint64, token, fp string, result []byte) []byte {
	b = slices.Grow(b, encodedLen(token, fp, result))
	b = appendHeader(b, state, expires, leaseEnd, created, attempts, fence)
	b = append(b, token...)
	b = appendFPLen(b, fp)
	b = append(b, fp...)
	return append(b, result...)
}

// encodedLen bounds the length of a record's stored form.
func encodedLen(token, fp string, result []byte) int {
	return headerLen + len(token) + 1 + 20 + 1 + len(fp) + len(result)
}

// appendHeader appends a record's fixed-width header.
func appendHeader(b []byte, state byte, expires, leaseEnd, created int64, attempts int, fence uint64) []byte {
	b = append(b, state)
	b = appendMillis(b, expires)
	b = appendMillis(b, leaseEnd)
	b = appendMillis(b, created)
	b = appendAttempts(b, attempts)
	return appendFence(b, fence)
}

// appendFPLen appends the ":" len(fingerprint) ":" that follows the token.
func appendFPLen(b []byte, fp string) []byte {
	b = append(b, ':')
	b = strconv.AppendInt(b, int64(len(fp)), 10)
	return append(b, ':')
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

// ownedLua runs the token-checked operations (Complete, Release, Snooze,
// Delete, Extend) of every key in KEYS, in order, in one invocation: a
// batch's owned operations that share a hash slot (all of them on a single
// server) cost one script call instead of one each. ARGV[1] holds one
// character per key naming its operation; then come each key's arguments
// (see ownedArgs): now (13 digits) and the token, then what the operation
// needs. Each operation is the one the store's scripts ran alone before:
// the record must be live (now before its retention end), in progress
// ('I', 73), with that token followed by ':' (58) (storekit's owned; an
// expired lease nobody took over is still owned). Then
//
//   - C (complete; ARGV new state and times, 27 bytes; result; PX): the 27
//     bytes replace the first 27 of the record and the result follows it,
//     keeping creation time, attempts, fence, token and fingerprint;
//   - R (release): the token and the lease end are cleared, keeping the
//     rest and the key's TTL;
//   - S (snooze): release, with the attempts field lowered by one (never
//     below zero);
//   - X (delete): the key is deleted;
//   - E (extend; ARGV new lease end, 13 digits; GC margin, ms): the lease
//     end is the one given, the retention end the later of itself and the
//     lease end, PX from them and the GC margin.
//
// It returns one character per key: '1' done, '0' lease lost (nothing
// written), 'W' the key holds a value that is not a string (nothing
// written; GET's error is caught so that it does not abort the other
// keys' operations). The shebang line makes the server refuse the whole
// script up front when it is out of memory, rather than fail a write in
// the middle of it. The arguments come as they are, with no parsing in
// Lua: the server's cost per key is the GET, the SET and a few
// comparisons. The token is matched in place (string.find from byte 67,
// plain), without cutting it out of the record as a new Lua string.
const ownedLua = `#!lua
local kinds = ARGV[1]
local a = 2
local out = {}
for i = 1, #KEYS do
  local k = KEYS[i]
  local kind = string.byte(kinds, i)
  local now, tok = ARGV[a], ARGV[a + 1]
  local n = #tok
  local v = redis.pcall('GET', k)
  local ok = false
  if type(v) == 'table' then
    out[i] = 'W'
  elseif v and string.byte(v, 1) == 73 and string.byte(v, 67 + n) == 58
    and string.find(v, tok, 67, true) == 67 and now < string.sub(v, 2, 14) then
    out[i] = '1'
    ok = true
  else
    out[i] = '0'
  end
  if kind == 67 then -- C
    if ok then
      redis.call('SET', k, ARGV[a + 2] .. string.sub(v, 28) .. ARGV[a + 3], 'PX', ARGV[a + 4])
    end
    a = a + 5
  elseif kind == 69 then -- E
    if ok then
      local x = ARGV[a + 2]
      local e = string.sub(v, 2, 14)
      if x > e then e = x end
      redis.call('SET', k, 'I' .. e .. x .. string.sub(v, 28), 'PX',
        tonumber(e) - tonumber(now) + tonumber(ARGV[a + 3]))
    end
    a = a + 4
  else
    if ok then
      if kind == 82 then -- R
        redis.call('SET', k, string.sub(v, 1, 14) .. '0000000000000' .. string.sub(v, 28, 66) ..
          string.sub(v, 67 + n), 'KEEPTTL')
      elseif kind == 83 then -- S
        local t = tonumber(string.sub(v, 41, 46)) - 1
        if t < 0 then t = 0 end
        redis.call('SET', k, string.sub(v, 1, 14) .. '0000000000000' .. string.sub(v, 28, 40) ..
          string.format('%06d', t) .. string.sub(v, 47, 66) .. string.sub(v, 67 + n), 'KEEPTTL')
      else -- X
        redis.call('DEL', k)
      end
    end
    a = a + 2
  end
end
return table.concat(out)
`
