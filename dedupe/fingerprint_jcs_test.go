package dedupe_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/idemq/idemq/dedupe"
)

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// jcsOf is what a producer hashes: the RFC 8785 form of the JSON encoding
// of v.
func jcsOf(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	c, err := dedupe.CanonicalizeJCS(b)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestFingerprintJCSIsPlainSHA256 checks the documented bytes of the JCS
// mode against a producer's own computation: SHA-256 (or HMAC-SHA256) of
// the JCS bytes, with no framing.
func TestFingerprintJCSIsPlainSHA256(t *testing.T) {
	body := `{"timestamp": 1728468870, "currency": "GBP", "amount": 1.50, "payment_id": "p-1", "meta": {"z": 1, "a": [1e2]}}`
	doc := map[string]any{"payment_id": "p-1", "amount": 1.5, "currency": "GBP", "meta": map[string]any{"a": []any{100}, "z": 1}}
	whole := map[string]any{"timestamp": 1728468870, "payment_id": "p-1", "amount": 1.5, "currency": "GBP", "meta": map[string]any{"a": []any{100}, "z": 1}}
	in := dedupe.Input{
		Header: map[string][]string{"Tenant": {"t-1", "t-2"}, "Idempotency-Key": {"k"}},
		Data:   []byte(body),
	}
	key := []byte("secret")
	mac := func(b []byte) string {
		m := hmac.New(sha256.New, key)
		m.Write(b)
		return hex.EncodeToString(m.Sum(nil))
	}
	tests := []struct {
		name string
		f    dedupe.Fingerprinter
		want string
	}{
		{"whole payload", dedupe.Fingerprinter{Canonical: dedupe.CanonicalJCS}, sha256Hex(jcsOf(t, whole))},
		{"exclude", dedupe.Fingerprinter{Canonical: dedupe.CanonicalJCS, Exclude: []string{"timestamp"}}, sha256Hex(jcsOf(t, doc))},
		{"include", dedupe.Fingerprinter{Canonical: dedupe.CanonicalJCS, Include: []string{"amount", "meta.a", "absent"}},
			sha256Hex(jcsOf(t, map[string]any{"amount": 1.5, "meta.a": []any{100}}))},
		{"hmac", dedupe.Fingerprinter{Canonical: dedupe.CanonicalJCS, Exclude: []string{"timestamp"}, HMACKey: key}, mac(jcsOf(t, doc))},
		{"headers", dedupe.Fingerprinter{Canonical: dedupe.CanonicalJCS, Exclude: []string{"timestamp"}, Headers: []string{"tenant", "X-Absent", "TENANT"}},
			sha256Hex(jcsOf(t, map[string]any{
				"headers": map[string]any{"tenant": []string{"t-1", "t-2"}, "x-absent": []string{}},
				"payload": doc,
			}))},
	}
	for _, tt := range tests {
		got, err := tt.f.Fingerprint(in)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if got != tt.want {
			t.Errorf("%s: fingerprint %s, want the plain hash %s", tt.name, got, tt.want)
		}
		exact := tt.f
		exact.Canonical = dedupe.CanonicalExact
		if e, _ := exact.Fingerprint(in); e == got {
			t.Errorf("%s: exact and JCS modes give the same fingerprint %s; their framings differ", tt.name, e)
		}
	}
}

func TestFingerprintJCSNotJSON(t *testing.T) {
	raw := []byte("\x00not json \xff")
	f := &dedupe.Fingerprinter{Canonical: dedupe.CanonicalJCS}
	if got, err := f.Fingerprint(dedupe.Input{Data: raw}); err != nil || got != sha256Hex(raw) {
		t.Errorf("raw payload: %s, %v; want the SHA-256 of its bytes %s", got, err, sha256Hex(raw))
	}
	f.Headers = []string{"H"}
	want := sha256Hex(jcsOf(t, map[string]any{"headers": map[string]any{"h": []string{"v"}}, "raw": base64.StdEncoding.EncodeToString(raw)}))
	if got, err := f.Fingerprint(dedupe.Input{Data: raw, Header: map[string][]string{"h": {"v"}}}); err != nil || got != want {
		t.Errorf("raw payload with a header: %s, %v; want %s", got, err, want)
	}
	// Beyond I-JSON counts as not JSON, as for a producer's JCS library.
	dup := []byte(`{"a":1,"a":2}`)
	if got, err := (&dedupe.Fingerprinter{Canonical: dedupe.CanonicalJCS}).Fingerprint(dedupe.Input{Data: dup}); err != nil || got != sha256Hex(dup) {
		t.Errorf("duplicate names: %s, %v; want the raw hash", got, err)
	}
	sel := &dedupe.Fingerprinter{Canonical: dedupe.CanonicalJCS, Exclude: []string{"a"}}
	if _, err := sel.Fingerprint(dedupe.Input{Data: raw}); !errors.Is(err, dedupe.ErrNotJSON) {
		t.Errorf("selection on a non-JSON payload: %v, want ErrNotJSON", err)
	}
}

// A producer in another language computes the fingerprint a Guard with
// Canonical: CanonicalJCS stores: the SHA-256 of the RFC 8785 form of what
// it fingerprints. Here the payment without its timestamp. In Python
// (pip install rfc8785):
//
//	doc = {k: v for k, v in payment.items() if k != "timestamp"}
//	fp = hashlib.sha256(rfc8785.dumps(doc)).hexdigest()
//
// In JavaScript (npm install canonicalize):
//
//	const { timestamp, ...doc } = payment;
//	const fp = crypto.createHash("sha256").update(canonicalize(doc)).digest("hex");
//
// With HMACKey it is HMAC-SHA256 of the same bytes (hmac.new(key, …,
// hashlib.sha256), crypto.createHmac("sha256", key)).
func ExampleFingerprinter_jcs() {
	f := &dedupe.Fingerprinter{Canonical: dedupe.CanonicalJCS, Exclude: []string{"timestamp"}}
	body := []byte(`{"timestamp": 1728468870, "payment_id": "p-1", "amount": 1.50, "currency": "GBP"}`)
	fp, _ := f.Fingerprint(dedupe.Input{Data: body})

	// What the producer hashes, computed here with this package.
	jcs, _ := dedupe.CanonicalizeJCS([]byte(`{"payment_id":"p-1","amount":1.5,"currency":"GBP"}`))
	sum := sha256.Sum256(jcs)
	fmt.Println(string(jcs))
	fmt.Println(fp == hex.EncodeToString(sum[:]))
	fmt.Println(fp)
	// Output:
	// {"amount":1.5,"currency":"GBP","payment_id":"p-1"}
	// true
	// a16caafeb90e9e2574cf5125e86d04363994a764d95c890cbde7d2b6fa645bd0
}
