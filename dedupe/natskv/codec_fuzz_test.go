package natskv

import (
	"bytes"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
)

// FuzzDecode checks that decode never panics on arbitrary bytes, accepts
// only records with a known state and a sound chunk reference, and that
// what it accepts re-encodes to a value that decodes to the same record.
func FuzzDecode(f *testing.F) {
	now := time.Unix(1893456000, 123456789)
	f.Add(encode(&dedupe.Record{State: dedupe.StateInProgress, Token: "tok", Fingerprint: "fp",
		LeaseUntil: now.Add(30 * time.Second), CreatedAt: now, ExpiresAt: now.Add(time.Hour)}, nil))
	f.Add(encode(&dedupe.Record{State: dedupe.StateDone, Token: "tok", Result: []byte(`{"ok":true}`),
		CreatedAt: now, ExpiresAt: now.Add(time.Hour)}, nil))
	f.Add(encode(&dedupe.Record{State: dedupe.StateFailed, CreatedAt: now, ExpiresAt: now},
		&chunks{n: 3, total: 3 << 20, id: "0123456789abcdef"}))
	f.Add([]byte{})
	f.Add([]byte{codecVersion, byte(dedupe.StateDone)})
	f.Add([]byte{codecVersion, 0, 0, 0, 0, 0, 0, 0})                    // state 0
	f.Add([]byte{codecVersion, 9, 0, 0, 0, 0, 0, 0})                    // unknown state
	f.Add([]byte{codecVersion, 2, flagChunked, 0, 0, 0, 0, 0, 0, 0, 0}) // zero chunks
	f.Add([]byte{codecVersion, 2, flagChunked, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01, 0, 0})
	f.Add([]byte{codecVersion, 2, 0, 0, 0, 0, 5, 'a'}) // token past the end
	f.Add([]byte{2, 2, 0, 0, 0, 0, 0, 0})
	f.Add([]byte{1, 2, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r, ch, err := decode("k", b)
		if err != nil {
			if r != nil || ch != nil {
				t.Fatalf("decode returned a record and %v", err)
			}
			return
		}
		if r.State < dedupe.StateInProgress || r.State > dedupe.StateFailed {
			t.Fatalf("decode accepted state %d", r.State)
		}
		if ch != nil && (ch.n <= 0 || ch.total < 0) {
			t.Fatalf("decode accepted chunks %+v", ch)
		}
		r2, ch2, err := decode("k", encode(r, ch))
		if err != nil {
			t.Fatalf("re-encoded %+v does not decode: %v", r, err)
		}
		sameRecord(t, r2, r)
		if (ch == nil) != (ch2 == nil) || ch != nil && *ch != *ch2 {
			t.Fatalf("chunks: got %+v, want %+v", ch2, ch)
		}
	})
}

// FuzzEncodeDecode checks that every record round-trips through encode and
// decode, inline or chunked.
func FuzzEncodeDecode(f *testing.F) {
	f.Add(uint8(1), int64(1893456030000000000), int64(1893456000000000000), int64(1893459600000000000), "tok", "fp", []byte(nil), false, 0, 0, "", uint64(1893456000000000), uint16(3))
	f.Add(uint8(2), int64(0), int64(-1), int64(1<<62), "", "", []byte("res"), true, 4, 1<<20, "0123456789abcdef", uint64(1<<64-1), uint16(0))
	f.Fuzz(func(t *testing.T, st uint8, lease, created, expires int64, token, fp string, result []byte, chunked bool, n, total int, id string, fence uint64, attempts uint16) {
		at := func(ns int64) time.Time {
			if ns == 0 {
				return time.Time{}
			}
			return time.Unix(0, ns)
		}
		in := &dedupe.Record{
			Key:         "k",
			State:       dedupe.State(st%3 + 1),
			Token:       token,
			Fingerprint: fp,
			LeaseUntil:  at(lease),
			CreatedAt:   at(created),
			ExpiresAt:   at(expires),
			Fence:       fence,
			Attempts:    int(attempts),
		}
		var ch *chunks
		if chunked {
			if n <= 0 || total < 0 {
				t.Skip("a chunk reference has at least one chunk")
			}
			ch = &chunks{n: n, total: total, id: id}
		} else {
			in.Result = result
		}
		r, ch2, err := decode("k", encode(in, ch))
		if err != nil {
			t.Fatalf("decode(encode(%+v, %+v)): %v", in, ch, err)
		}
		sameRecord(t, r, in)
		if (ch == nil) != (ch2 == nil) || ch != nil && *ch != *ch2 {
			t.Fatalf("chunks: got %+v, want %+v", ch2, ch)
		}
	})
}

func sameRecord(t *testing.T, got, want *dedupe.Record) {
	t.Helper()
	if got.Key != want.Key || got.State != want.State || got.Token != want.Token || got.Fingerprint != want.Fingerprint ||
		got.Fence != want.Fence || got.Attempts != want.Attempts ||
		!bytes.Equal(got.Result, want.Result) ||
		!got.LeaseUntil.Equal(want.LeaseUntil) || !got.CreatedAt.Equal(want.CreatedAt) || !got.ExpiresAt.Equal(want.ExpiresAt) {
		t.Fatalf("got %+v, want %+v", got, want)
	}
}
