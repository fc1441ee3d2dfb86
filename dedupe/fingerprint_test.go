package dedupe_test

import (
	"errors"
	"regexp"
	"testing"

	"github.com/idemq/idemq/dedupe"
)

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

func fingerprint(t *testing.T, f *dedupe.Fingerprinter, in dedupe.Input) string {
	t.Helper()
	fp, err := f.Fingerprint(in)
	if err != nil {
		t.Fatalf("Fingerprint(%q): %v", in.Data, err)
	}
	if !hex64.MatchString(fp) {
		t.Fatalf("Fingerprint = %q, want 64 hex digits", fp)
	}
	return fp
}

func data(s string) dedupe.Input { return dedupe.Input{Data: []byte(s)} }

func TestFingerprintEqualAndDifferent(t *testing.T) {
	exTS := &dedupe.Fingerprinter{Exclude: []string{"timestamp"}}
	nested := &dedupe.Fingerprinter{Include: []string{"order", "amount"}, Exclude: []string{"order.sent_at"}}
	tests := []struct {
		name  string
		f     *dedupe.Fingerprinter
		a, b  dedupe.Input
		equal bool
	}{
		{"reformatted", nil,
			data(`{"amount":100,"currency":"GBP"}`), data("{ \"currency\" : \"GBP\",\n \"amount\" : 1e2 }"), true},
		{"number forms", &dedupe.Fingerprinter{},
			data(`{"amount":100}`), data(`{"amount":100.0}`), true},
		{"unicode escapes", nil, data(`{"name":"Zoë"}`), data(`{"name":"Zo\u00eb"}`), true},
		{"different amount", nil, data(`{"amount":100}`), data(`{"amount":101}`), false},
		{"big numbers", nil, data(`{"amount":9007199254740993}`), data(`{"amount":9007199254740992}`), false},
		{"timestamp excluded", exTS,
			data(`{"payment_id":"p-1","amount":100,"timestamp":1728468810}`),
			data(`{"timestamp":1728468999,"amount":100,"payment_id":"p-1"}`), true},
		{"timestamp excluded, amount differs", exTS,
			data(`{"payment_id":"p-1","amount":100,"timestamp":1}`),
			data(`{"payment_id":"p-1","amount":200,"timestamp":1}`), false},
		{"timestamp excluded vs absent", exTS,
			data(`{"amount":100,"timestamp":1}`), data(`{"amount":100}`), true},
		{"nested exclude", nested,
			data(`{"order":{"id":"o-1","sent_at":"t1"},"amount":5,"note":"a"}`),
			data(`{"order":{"sent_at":"t2","id":"o-1"},"amount":5.0,"note":"b"}`), true},
		{"nested include sees change", nested,
			data(`{"order":{"id":"o-1"},"amount":5}`),
			data(`{"order":{"id":"o-2"},"amount":5}`), false},
		{"include absent vs null", &dedupe.Fingerprinter{Include: []string{"a"}},
			data(`{"b":1}`), data(`{"a":null,"b":1}`), false},
		{"include ignores others", &dedupe.Fingerprinter{Include: []string{"a.b"}},
			data(`{"a":{"b":1,"c":2},"d":3}`), data(`{"a":{"b":1,"c":9}}`), true},
		{"array element excluded", &dedupe.Fingerprinter{Exclude: []string{"items.0"}},
			data(`{"items":["x","y"]}`), data(`{"items":["z","y"]}`), true},
		{"raw bytes", nil, data("amount=100"), data("amount=100"), true},
		{"raw bytes differ", nil, data("amount=100"), data("amount=100 "), false},
		{"raw vs json whitespace", nil, data("not json"), data("not  json"), false},
		{"header included", &dedupe.Fingerprinter{Headers: []string{"X-Tenant"}},
			dedupe.Input{Header: map[string][]string{"X-Tenant": {"t1"}}, Data: []byte(`{}`)},
			dedupe.Input{Header: map[string][]string{"x-tenant": {"t1"}}, Data: []byte(` { } `)}, true},
		{"header differs", &dedupe.Fingerprinter{Headers: []string{"X-Tenant"}},
			dedupe.Input{Header: map[string][]string{"X-Tenant": {"t1"}}, Data: []byte(`{}`)},
			dedupe.Input{Header: map[string][]string{"X-Tenant": {"t2"}}, Data: []byte(`{}`)}, false},
		{"header empty vs absent", &dedupe.Fingerprinter{Headers: []string{"X-Tenant"}},
			dedupe.Input{Header: map[string][]string{"X-Tenant": {""}}, Data: []byte(`{}`)},
			dedupe.Input{Data: []byte(`{}`)}, false},
		{"headers ignored unless chosen", nil,
			dedupe.Input{Header: map[string][]string{"X-Tenant": {"t1"}}, Data: []byte(`{}`)},
			dedupe.Input{Data: []byte(`{}`)}, true},
		{"header value boundaries", &dedupe.Fingerprinter{Headers: []string{"A", "B"}},
			dedupe.Input{Header: map[string][]string{"A": {"xy"}, "B": {""}}},
			dedupe.Input{Header: map[string][]string{"A": {"x"}, "B": {"y"}}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, b := fingerprint(t, tt.f, tt.a), fingerprint(t, tt.f, tt.b)
			if (a == b) != tt.equal {
				t.Fatalf("fingerprints %s and %s: equal = %v, want %v", a, b, a == b, tt.equal)
			}
		})
	}
}

func TestFingerprintNilIsZeroValue(t *testing.T) {
	for _, in := range []dedupe.Input{data(`{"a":1}`), data("raw"), {}} {
		if a, b := fingerprint(t, nil, in), fingerprint(t, &dedupe.Fingerprinter{}, in); a != b {
			t.Fatalf("nil and zero Fingerprinter differ on %q: %s %s", in.Data, a, b)
		}
	}
}

func TestFingerprintHMAC(t *testing.T) {
	in := data(`{"amount":100}`)
	plain := fingerprint(t, nil, in)
	k1 := fingerprint(t, &dedupe.Fingerprinter{HMACKey: []byte("key-1")}, in)
	k1again := fingerprint(t, &dedupe.Fingerprinter{HMACKey: []byte("key-1")}, data(`{ "amount" : 1e2 }`))
	k2 := fingerprint(t, &dedupe.Fingerprinter{HMACKey: []byte("key-2")}, in)
	empty := fingerprint(t, &dedupe.Fingerprinter{HMACKey: []byte{}}, in)
	if k1 == plain || k1 == k2 {
		t.Fatalf("HMAC fingerprints not distinct: plain %s, key-1 %s, key-2 %s", plain, k1, k2)
	}
	if k1 != k1again {
		t.Fatalf("HMAC fingerprint of an equal document differs: %s %s", k1, k1again)
	}
	if empty != plain {
		t.Fatalf("empty HMACKey should mean SHA-256: %s %s", empty, plain)
	}
}

func TestFingerprintSelectionOnNonJSON(t *testing.T) {
	for _, f := range []*dedupe.Fingerprinter{
		{Exclude: []string{"timestamp"}},
		{Include: []string{"amount"}},
	} {
		for _, in := range []string{"amount=100", "", `{"amount":1`, `{"a":1,"a":2}`} {
			_, err := f.Fingerprint(data(in))
			if !errors.Is(err, dedupe.ErrNotJSON) || !dedupe.IsInvalidInput(err) {
				t.Errorf("Fingerprint(%q) with selection: err = %v, want ErrNotJSON", in, err)
			}
		}
	}
}
