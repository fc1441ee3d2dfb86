package main

import (
	"encoding/json"
	"errors"
	"testing"
)

// FuzzDecodePayment checks that decodePayment never panics, that every error
// wraps ErrInvalidPayment, and that an accepted payment re-encodes to a body
// that is accepted with the same fields.
func FuzzDecodePayment(f *testing.F) {
	f.Add([]byte(`{"payment_id":"p1","from":"acc-1","to":"acc-2","amount":100,"currency":"GBP","timestamp":1728468810}`))
	f.Add([]byte(`{"timestamp":0,"currency":"EUR","amount":9223372036854775807,"to":"b","from":"a","payment_id":"\u00e9\ud83d\ude00"}`))
	f.Add([]byte(`{"payment_id":"p","from":"a","to":"a","amount":1,"currency":"GBP","timestamp":1}`))
	f.Add([]byte(`{"payment_id":"p","from":"a","to":"b","amount":1.5,"currency":"GBP","timestamp":1}`))
	f.Add([]byte(`{"payment_id":"p","from":"a","to":"b","amount":1,"currency":"gbp","timestamp":1}`))
	f.Add([]byte(`{"payment_id":"p","from":"a","to":"b","amount":1,"currency":"GBP","timestamp":1,"extra":1}`))
	f.Add([]byte(`{"payment_id":"p","from":"a","to":"b","amount":1,"currency":"GBP","timestamp":1,"FROM":"c"}`))
	f.Add([]byte(`{"payment_id":"p","from":"a","to":"b","amount":1,"currency":"GBP","timestamp":1,"from":"c"}`))
	f.Add([]byte(`{"payment_id":"p","from":"a\xff","to":"b","amount":1,"currency":"GBP","timestamp":1}`))
	f.Add([]byte(`{"payment_id":"p","from":"a","to":"b","amount":1,"currency":"GBP","timestamp":1} {}`))
	f.Add([]byte(`[]`))
	f.Add([]byte(`null`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, body []byte) {
		p, err := decodePayment(body)
		if err != nil {
			if !errors.Is(err, ErrInvalidPayment) {
				t.Fatalf("decodePayment(%q) = %v, not wrapping ErrInvalidPayment", body, err)
			}
			if p != (payment{}) {
				t.Fatalf("decodePayment(%q) returned %+v with %v", body, p, err)
			}
			return
		}
		if err := p.validate(true); err != nil {
			t.Fatalf("decodePayment(%q) accepted %+v: %v", body, p, err)
		}
		again, err := json.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		q, err := decodePayment(again)
		if err != nil {
			t.Fatalf("decodePayment(%q) accepted %+v, but its encoding %s is refused: %v", body, p, again, err)
		}
		if q != p {
			t.Fatalf("decodePayment(%q) = %+v; re-encoded as %s it decodes to %+v", body, p, again, q)
		}
	})
}
