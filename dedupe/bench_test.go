package dedupe_test

import (
	"testing"

	"github.com/idemq/idemq/dedupe"
)

// benchPayload is a representative message: a 200-byte JSON object in a
// producer's struct order (members not sorted), with a nested object, a
// decimal amount and an escaped character.
const benchPayload = `{"payment_id":"p-7f3c2a9e41","from":"acc-000123","to":"acc-000456","amount":1250.50,` +
	`"currency":"GBP","reference":"Invoice 8841 \u2013 October","timestamp":1728468810,` +
	`"meta":{"source":"web","attempt":1}}`

func benchInput() dedupe.Input {
	return dedupe.Input{
		Header:    map[string][]string{"Nats-Msg-Id": {"msg-8841-1"}, "Content-Type": {"application/json"}},
		Data:      []byte(benchPayload),
		MessageID: "stream.42",
	}
}

func BenchmarkResolve(b *testing.B) {
	for _, bc := range []struct {
		name string
		g    *dedupe.Guard
	}{
		{"header-key", &dedupe.Guard{Key: dedupe.HeaderKey("Nats-Msg-Id"), Namespace: "payments"}},
		{"first-key", &dedupe.Guard{Key: dedupe.FirstKey(dedupe.HeaderKey("Idempotency-Key"), dedupe.MessageIDKey())}},
		{"json-field-key", &dedupe.Guard{Key: dedupe.JSONFieldKey("payment_id"), Namespace: "payments"}},
		{"fingerprint-key", &dedupe.Guard{Namespace: "payments"}},
		{"exclude", &dedupe.Guard{Key: dedupe.HeaderKey("Nats-Msg-Id"),
			Fingerprint: &dedupe.Fingerprinter{Exclude: []string{"timestamp"}}}},
		{"jcs", &dedupe.Guard{Key: dedupe.HeaderKey("Nats-Msg-Id"),
			Fingerprint: &dedupe.Fingerprinter{Canonical: dedupe.CanonicalJCS}}},
		{"hmac", &dedupe.Guard{Key: dedupe.HeaderKey("Nats-Msg-Id"),
			Fingerprint: &dedupe.Fingerprinter{HMACKey: []byte("0123456789abcdef0123456789abcdef")}}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			in := benchInput()
			b.SetBytes(int64(len(in.Data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := bc.g.Resolve(in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkFingerprint(b *testing.B) {
	for _, bc := range []struct {
		name string
		f    *dedupe.Fingerprinter
		data string
	}{
		{"exact", nil, benchPayload},
		{"jcs", &dedupe.Fingerprinter{Canonical: dedupe.CanonicalJCS}, benchPayload},
		{"raw", nil, "not json: " + benchPayload},
		{"headers", &dedupe.Fingerprinter{Headers: []string{"Content-Type"}}, benchPayload},
	} {
		b.Run(bc.name, func(b *testing.B) {
			in := benchInput()
			in.Data = []byte(bc.data)
			b.SetBytes(int64(len(in.Data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bc.f.Fingerprint(in); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkCanonicalize(b *testing.B) {
	data := []byte(benchPayload)
	b.Run("exact", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := dedupe.Canonicalize(data); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("jcs", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := dedupe.CanonicalizeJCS(data); err != nil {
				b.Fatal(err)
			}
		}
	})
}
