package outbox

import (
	"errors"
	"testing"
	"unsafe"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestPubAckParsing checks the relay's reading of PubAcks against the
// answers nats-server sends, and falls back to the JSON decoder for
// anything its quick path does not take.
func TestPubAckParsing(t *testing.T) {
	noResp := nats.Header{}
	noResp.Set("Status", "503")
	cases := []struct {
		name   string
		data   string
		header nats.Header
		want   PublishResult
		errIs  error
		reject bool
	}{
		{name: "plain", data: `{"stream":"ORDERS","seq":42}`, want: PublishResult{Stream: "ORDERS"}},
		{name: "domain", data: `{"stream":"ORDERS","domain":"hub","seq":7}`, want: PublishResult{Stream: "ORDERS"}},
		{name: "duplicate as the server writes it", data: `{"stream":"ORDERS","seq":42,"duplicate": true}`, want: PublishResult{Stream: "ORDERS", Duplicate: true}},
		{name: "duplicate without space", data: `{"stream":"ORDERS","seq":42,"duplicate":true}`, want: PublishResult{Stream: "ORDERS", Duplicate: true}},
		{name: "duplicate false", data: `{"stream":"ORDERS","seq":42,"duplicate":false}`, want: PublishResult{Stream: "ORDERS"}},
		{name: "stream named duplicate", data: `{"stream":"duplicate","seq":1}`, want: PublishResult{Stream: "duplicate"}},
		{name: "other field order", data: `{"seq":3,"duplicate":true,"stream":"ORDERS"}`, want: PublishResult{Stream: "ORDERS", Duplicate: true}},
		{name: "escaped name", data: `{"stream":"A\u0042","seq":1}`, want: PublishResult{Stream: "AB"}},
		{name: "no responders", header: noResp, errIs: jetstream.ErrNoStreamResponse},
		{name: "empty", errIs: jetstream.ErrInvalidJSAck},
		{name: "garbage", data: `{"stream":"ORDERS","seq":`, errIs: jetstream.ErrInvalidJSAck},
		{name: "no stream", data: `{"seq":1}`, errIs: jetstream.ErrInvalidJSAck},
		{name: "too large", data: `{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"},"stream":"ORDERS","seq":0}`,
			errIs: jetstream.ErrStreamMessageExceedsMaximum, reject: true},
		{name: "unavailable", data: `{"error":{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}}`},
	}
	a := &ackRouter{}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := a.pubAck(&nats.Msg{Data: []byte(c.data), Header: c.header})
			if c.errIs == nil && c.want == (PublishResult{}) {
				// An API error that is an outage: an error, not rejected.
				var api *jetstream.APIError
				if !errors.As(got.Err, &api) || got.Rejected {
					t.Fatalf("got %+v, want a retried *jetstream.APIError", got)
				}
				return
			}
			if c.errIs != nil {
				if !errors.Is(got.Err, c.errIs) || got.Rejected != c.reject {
					t.Fatalf("got %+v (err %v), want error %v, rejected %v", got, got.Err, c.errIs, c.reject)
				}
				return
			}
			if got != c.want {
				t.Fatalf("got %+v, want %+v", got, c.want)
			}
		})
	}
}

// TestPubAckStreamNameReused checks that consecutive PubAcks of one stream
// share one copy of its name instead of a string each, and that a change
// of stream is seen.
func TestPubAckStreamNameReused(t *testing.T) {
	a := &ackRouter{}
	first := a.pubAck(&nats.Msg{Data: []byte(`{"stream":"ORDERS","seq":1}`)})
	second := a.pubAck(&nats.Msg{Data: []byte(`{"stream":"ORDERS","seq":2}`)})
	if first.Stream != "ORDERS" || unsafe.StringData(first.Stream) != unsafe.StringData(second.Stream) {
		t.Errorf("streams %q and %q do not share their bytes", first.Stream, second.Stream)
	}
	if r := a.pubAck(&nats.Msg{Data: []byte(`{"stream":"PAYMENTS","seq":1}`)}); r.Stream != "PAYMENTS" {
		t.Errorf("stream %q after ORDERS, want PAYMENTS", r.Stream)
	}
}
