package httpdedupe

import (
	"bytes"
	"net/http"
	"testing"
)

// FuzzDecode checks that decode never panics on arbitrary bytes, and that
// whatever it accepts re-encodes to a value that decodes to the same
// response.
func FuzzDecode(f *testing.F) {
	f.Add((&stored{status: 200, header: http.Header{}}).encode())
	f.Add((&stored{
		status:    201,
		header:    http.Header{"Content-Type": {"application/json"}, "Set-Cookie": {"a=1", "b=2"}},
		body:      []byte(`{"id":"p1"}`),
		truncated: true,
	}).encode())
	f.Add((&stored{status: 999, header: http.Header{"X-Empty": {}, "": {""}}}).encode())
	f.Add([]byte{})
	f.Add([]byte{envelopeVersion})
	f.Add([]byte{envelopeVersion, 0})
	f.Add([]byte{envelopeVersion, 0, 99})                                                            // status below 100
	f.Add([]byte{envelopeVersion, 0, 0xc8, 0x01, 0xff})                                              // header count past the end
	f.Add([]byte{envelopeVersion, 0, 0xc8, 0x01, 1, 5, 'a'})                                         // name longer than the rest
	f.Add([]byte{envelopeVersion, 0, 0xc8, 0x01, 1, 1, 'a', 0xff})                                   // truncated value count
	f.Add([]byte{envelopeVersion, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}) // varint overflow
	f.Add([]byte{2, 0, 0xc8, 0x01, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := decode(b)
		if err != nil {
			if s != nil {
				t.Fatalf("decode returned a response and %v", err)
			}
			return
		}
		if s.status < 100 || s.status > 999 {
			t.Fatalf("decode accepted status %d", s.status)
		}
		again, err := decode(s.encode())
		if err != nil {
			t.Fatalf("re-encoded %+v does not decode: %v", s, err)
		}
		sameStored(t, again, s)
	})
}

// FuzzEncodeDecode checks that every response with a valid status
// round-trips through encode and decode.
func FuzzEncodeDecode(f *testing.F) {
	f.Add(200, "Content-Type", "text/plain", "X-Req", []byte("hello"), false)
	f.Add(100, "", "", "", []byte{}, true)
	f.Add(999, "a", "\x00\xff", "a", []byte{0, 1, 2}, true)
	f.Fuzz(func(t *testing.T, status int, k1, v1, k2 string, body []byte, truncated bool) {
		if status < 100 || status > 999 {
			t.Skip("only 3-digit statuses are stored")
		}
		s := &stored{
			status:    status,
			header:    http.Header{k1: {v1}, k2: {v1, k1}, "X-None": {}},
			body:      body,
			truncated: truncated,
		}
		got, err := decode(s.encode())
		if err != nil {
			t.Fatalf("decode(encode(%+v)): %v", s, err)
		}
		sameStored(t, got, s)
	})
}

func sameStored(t *testing.T, got, want *stored) {
	t.Helper()
	if got.status != want.status || got.truncated != want.truncated || !bytes.Equal(got.body, want.body) {
		t.Fatalf("got status %d truncated %v body %q; want %d %v %q",
			got.status, got.truncated, got.body, want.status, want.truncated, want.body)
	}
	if len(got.header) != len(want.header) {
		t.Fatalf("got %d header names, want %d: %q vs %q", len(got.header), len(want.header), got.header, want.header)
	}
	for k, vs := range want.header {
		gvs, ok := got.header[k]
		if !ok || len(gvs) != len(vs) {
			t.Fatalf("header %q: got %q, want %q", k, gvs, vs)
		}
		for i := range vs {
			if gvs[i] != vs[i] {
				t.Fatalf("header %q: got %q, want %q", k, gvs, vs)
			}
		}
	}
}
