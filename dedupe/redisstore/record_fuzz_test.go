package redisstore

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
)

// FuzzDecode checks that decode never panics on arbitrary bytes, accepts
// only values of the documented record format, and that what it accepts
// re-encodes to the same value.
func FuzzDecode(f *testing.F) {
	f.Add("i189345960000018934560300001893456000000000001" + "tok:2:fp") // the first format
	f.Add("I189345960000018934560300001893456000000000001" + "00001893456000000000" + "tok:2:fp")
	f.Add(encode(stateDone, 1893459600000, 0, 1893456000000, 3, 1893456000000002, "0123456789abcdef", "sha256:ab", []byte(`{"ok":true}`)))
	f.Add(encode(stateFailed, maxMillis, 0, 0, 0, 0, "", "", nil))
	f.Add(encode(stateInProgress, 1, 2, 3, maxAttempts, 1<<64-1, "t", "fp:with:colons", []byte("r:e:s\x00")))
	f.Add("I18934596000001893456030000189345600000000000100000000000000000x00tok:0:")           // non-digit fence
	f.Add("I189345960000018934560300001893456000000000001" + "99999999999999999999" + "tok:0:") // fence past uint64
	f.Add("i18934596000001893456030000189345600000000000a:0:")                                  // non-digit attempts
	f.Add("")
	f.Add("i")
	f.Add("x189345960000018934560300001893456000000000001t:0:")
	f.Add("i-00000000000018934560300001893456000000000001t:0:")    // signed time
	f.Add("i+18934596000018934560300001893456000000000001t:0:")    // signed time
	f.Add("i189345960000018934560300001893456000000000001t:+2:fp") // signed length
	f.Add("i189345960000018934560300001893456000000000001t:-0:")
	f.Add("i189345960000018934560300001893456000000000001t:9:fp")
	f.Add("i189345960000018934560300001893456000000000001notoken")
	f.Add("i1893459600000189345603000018934560000000000012:")
	f.Fuzz(func(t *testing.T, v string) {
		r, version, err := decode("k", v)
		if err != nil {
			if r != nil || version != "" {
				t.Fatalf("decode returned a record and %v", err)
			}
			return
		}
		hl := headerLen
		if v[0] >= 'a' {
			hl = legacyLen
			if r.Fence != 0 {
				t.Fatalf("a record of the first format decoded with fence %d", r.Fence)
			}
		}
		if !strings.HasPrefix(v, version) || len(version) != hl+len(r.Token)+1 {
			t.Fatalf("version %q is not the header and token of %q", version, v)
		}
		var lease int64
		if !r.LeaseUntil.IsZero() {
			lease = r.LeaseUntil.UnixMilli()
		}
		got := encode(v[0]&^0x20, r.ExpiresAt.UnixMilli(), lease, r.CreatedAt.UnixMilli(), r.Attempts, r.Fence, r.Token, r.Fingerprint, r.Result)
		if hl == legacyLen {
			got = got[:legacyLen] + got[headerLen:]
			got = string(v[0]) + got[1:]
		}
		if got != v {
			t.Fatalf("decode accepted %q, which re-encodes as %q", v, got)
		}
	})
}

// FuzzEncodeDecode checks that every record the store can write decodes to
// the same record.
func FuzzEncodeDecode(f *testing.F) {
	f.Add(uint8(1), int64(1893459600000), int64(1893456030000), int64(1893456000000), "0123456789abcdef", "fp", []byte(nil), uint64(1893456000000000), uint32(1))
	f.Add(uint8(2), int64(maxMillis), int64(0), int64(0), "", "", []byte("result:with:colons"), uint64(1<<64-1), uint32(maxAttempts))
	f.Add(uint8(3), int64(1), int64(0), int64(1), "t", "f:p", []byte{0, 0xff}, uint64(0), uint32(0))
	f.Fuzz(func(t *testing.T, st uint8, expires, lease, created int64, token, fp string, result []byte, fence uint64, attempts uint32) {
		if strings.Contains(token, ":") {
			t.Skip("tokens never contain the separator")
		}
		clamp := func(v int64) int64 { return min(max(v, 0), maxMillis) }
		in := &dedupe.Record{
			Key:         "k",
			State:       dedupe.State(st%3 + 1),
			Token:       token,
			Fingerprint: fp,
			Result:      result,
			CreatedAt:   time.UnixMilli(clamp(created)),
			ExpiresAt:   time.UnixMilli(clamp(expires)),
			Fence:       fence,
			Attempts:    int(min(attempts, maxAttempts)),
		}
		if lease = clamp(lease); lease != 0 {
			in.LeaseUntil = time.UnixMilli(lease)
		}
		enc := encodeRecord(in)
		// The claim's path appends the same bytes to a reused buffer.
		state := []byte{stateInProgress, stateDone, stateFailed}[st%3]
		want := encode(state, expires, lease, created, int(attempts), fence, token, fp, result)
		if got := appendRecord([]byte("stale"), state, expires, lease, created, int(attempts), fence, token, fp, result); string(got) != "stale"+want {
			t.Fatalf("appendRecord appended %q, encode gives %q", got, want)
		}
		r, _, err := decode("k", enc)
		if err != nil {
			t.Fatalf("decode(encodeRecord(%+v)): %v", in, err)
		}
		if r.Key != in.Key || r.State != in.State || r.Token != in.Token || r.Fingerprint != in.Fingerprint ||
			r.Fence != in.Fence || r.Attempts != in.Attempts ||
			!bytes.Equal(r.Result, in.Result) || !r.CreatedAt.Equal(in.CreatedAt) || !r.ExpiresAt.Equal(in.ExpiresAt) ||
			!r.LeaseUntil.Equal(in.LeaseUntil) || r.LeaseUntil.IsZero() != in.LeaseUntil.IsZero() {
			t.Fatalf("round trip: got %+v, want %+v", r, in)
		}
	})
}
