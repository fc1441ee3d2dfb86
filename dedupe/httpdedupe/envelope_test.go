package httpdedupe

import (
	"bytes"
	"errors"
	"net/http"
	"reflect"
	"testing"
)

func TestEnvelopeRoundTrip(t *testing.T) {
	for _, s := range []*stored{
		{status: 201, header: http.Header{"Content-Type": {"application/json"}, "Location": {"/payments/1"}, "Link": {"a", "b"}}, body: []byte(`{"id":1}`)},
		{status: 402, header: http.Header{}, body: nil},
		{status: 200, header: http.Header{"X-Empty": {}}, body: bytes.Repeat([]byte{0, 1, 2}, 1000), truncated: true},
	} {
		got, err := decode(s.encode())
		if err != nil {
			t.Fatal(err)
		}
		if got.status != s.status || got.truncated != s.truncated || !bytes.Equal(got.body, s.body) || !reflect.DeepEqual(got.header, s.header) {
			t.Fatalf("round trip of %+v gave %+v", s, got)
		}
	}
}

func TestEnvelopeCorrupt(t *testing.T) {
	good := (&stored{status: 200, header: http.Header{"A": {"b"}}, body: []byte("x")}).encode()
	for _, b := range [][]byte{nil, {1}, {2, 0, 200, 1, 0}, {1, 0, 5}, good[:4], good[:6], {1, 0, 0xc8, 0x01, 0xff, 0xff, 0xff, 0xff, 0x0f}} {
		if _, err := decode(b); !errors.Is(err, errCorrupt) {
			t.Errorf("decode(%v) = %v, want errCorrupt", b, err)
		}
	}
}
