package outbox

import (
	"encoding/json"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// FuzzPubAck checks the PubAck reader on any answer: it never panics, and
// whatever its quick path reads is what the JSON decoder reads.
//
//	go test -run '^$' -fuzz FuzzPubAck ./outbox/
func FuzzPubAck(f *testing.F) {
	for _, s := range []string{
		`{"stream":"ORDERS","seq":42}`,
		`{"stream":"ORDERS","domain":"hub","seq":7}`,
		`{"stream":"ORDERS","seq":42,"duplicate": true}`,
		`{"stream":"ORDERS","seq":42,"duplicate":true}`,
		`{"stream":"duplicate","domain":"duplicate","seq":1,"duplicate":true}`,
		`{"seq":3,"duplicate":true,"stream":"ORDERS"}`,
		`{"stream":"A\u0042","seq":1}`,
		`{"error":{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}}`,
		`{"stream":"ORDERS","seq":`,
		"",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		a := &ackRouter{}
		got := a.pubAck(&nats.Msg{Data: data})
		if got.Err == nil && got.Stream == "" {
			t.Fatalf("%q: no error and no stream", data)
		}
		stream, dup, ok := a.quickAck(data)
		if !ok {
			return
		}
		var pa struct {
			Error     *jetstream.APIError `json:"error"`
			Stream    string              `json:"stream"`
			Duplicate bool                `json:"duplicate"`
		}
		if err := json.Unmarshal(data, &pa); err != nil {
			t.Fatalf("%q: quick path read stream %q, the decoder fails: %v", data, stream, err)
		}
		if pa.Error != nil || pa.Stream != stream || pa.Duplicate != dup {
			t.Fatalf("%q: quick path read (%q, %v), the decoder %+v", data, stream, dup, pa)
		}
	})
}
