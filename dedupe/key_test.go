package dedupe_test

import (
	"errors"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/idemq/idemq/dedupe"
)

func TestKeySources(t *testing.T) {
	payment := []byte(`{"payment_id":"p-42","n":1.0e2,"order":{"id":"o-7","ok":true,"none":null,"empty":""},"items":[{"sku":"a"},{"sku":"b"}]}`)
	tests := []struct {
		name    string
		src     dedupe.KeySource
		in      dedupe.Input
		want    string
		wantErr error
	}{
		{"header", dedupe.HeaderKey("Idempotency-Key"),
			dedupe.Input{Header: map[string][]string{"Idempotency-Key": {"k1"}}}, "k1", nil},
		{"header case-insensitive", dedupe.HeaderKey("Idempotency-Key"),
			dedupe.Input{Header: map[string][]string{"idempotency-key": {"k1"}}}, "k1", nil},
		{"header trimmed", dedupe.HeaderKey("Idempotency-Key"),
			dedupe.Input{Header: map[string][]string{"Idempotency-Key": {" \tk1 "}}}, "k1", nil},
		{"first non-empty header", dedupe.HeaderKey("Idempotency-Key", "Nats-Msg-Id"),
			dedupe.Input{Header: map[string][]string{"Idempotency-Key": {""}, "Nats-Msg-Id": {"m-1"}}}, "m-1", nil},
		{"first header wins", dedupe.HeaderKey("Idempotency-Key", "Nats-Msg-Id"),
			dedupe.Input{Header: map[string][]string{"Idempotency-Key": {"k"}, "Nats-Msg-Id": {"m-1"}}}, "k", nil},
		{"second value when first empty", dedupe.HeaderKey("X-Key"),
			dedupe.Input{Header: map[string][]string{"X-Key": {"  ", "v2"}}}, "v2", nil},
		{"header missing", dedupe.HeaderKey("Idempotency-Key"),
			dedupe.Input{Header: map[string][]string{"Other": {"x"}}}, "", dedupe.ErrMissingKey},
		{"header nil map", dedupe.HeaderKey("Idempotency-Key"), dedupe.Input{}, "", dedupe.ErrMissingKey},
		{"header invalid UTF-8", dedupe.HeaderKey("Idempotency-Key"),
			dedupe.Input{Header: map[string][]string{"Idempotency-Key": {"k\xff"}}}, "", dedupe.ErrInvalidKey},
		{"header control char", dedupe.HeaderKey("Idempotency-Key"),
			dedupe.Input{Header: map[string][]string{"Idempotency-Key": {"a\nb"}}}, "", dedupe.ErrInvalidKey},
		{"header C1 control", dedupe.HeaderKey("Idempotency-Key"),
			dedupe.Input{Header: map[string][]string{"Idempotency-Key": {"a\u0085b"}}}, "", dedupe.ErrInvalidKey},
		{"header unicode ok", dedupe.HeaderKey("Idempotency-Key"),
			dedupe.Input{Header: map[string][]string{"Idempotency-Key": {"clé-😀"}}}, "clé-😀", nil},
		{"json field", dedupe.JSONFieldKey("payment_id"), dedupe.Input{Data: payment}, "p-42", nil},
		{"json nested", dedupe.JSONFieldKey("order.id"), dedupe.Input{Data: payment}, "o-7", nil},
		{"json array index", dedupe.JSONFieldKey("items.1.sku"), dedupe.Input{Data: payment}, "b", nil},
		{"json number canonical", dedupe.JSONFieldKey("n"), dedupe.Input{Data: payment}, "100", nil},
		{"json absent", dedupe.JSONFieldKey("order.missing"), dedupe.Input{Data: payment}, "", dedupe.ErrMissingKey},
		{"json index out of range", dedupe.JSONFieldKey("items.2.sku"), dedupe.Input{Data: payment}, "", dedupe.ErrMissingKey},
		{"json null", dedupe.JSONFieldKey("order.none"), dedupe.Input{Data: payment}, "", dedupe.ErrMissingKey},
		{"json empty string", dedupe.JSONFieldKey("order.empty"), dedupe.Input{Data: payment}, "", dedupe.ErrMissingKey},
		{"json bool", dedupe.JSONFieldKey("order.ok"), dedupe.Input{Data: payment}, "", dedupe.ErrInvalidKey},
		{"json object", dedupe.JSONFieldKey("order"), dedupe.Input{Data: payment}, "", dedupe.ErrInvalidKey},
		{"json control char", dedupe.JSONFieldKey("id"), dedupe.Input{Data: []byte(`{"id":"a\u0000"}`)}, "", dedupe.ErrInvalidKey},
		{"not json", dedupe.JSONFieldKey("payment_id"), dedupe.Input{Data: []byte("payment_id=p-42")}, "", dedupe.ErrNotJSON},
		{"malformed json", dedupe.JSONFieldKey("payment_id"), dedupe.Input{Data: []byte(`{"payment_id":"p-42"`)}, "", dedupe.ErrNotJSON},
		{"message id", dedupe.MessageIDKey(), dedupe.Input{MessageID: "PAYMENTS:17"}, "PAYMENTS:17", nil},
		{"message id missing", dedupe.MessageIDKey(), dedupe.Input{}, "", dedupe.ErrMissingKey},
		{"key func", dedupe.KeyFunc(func(in dedupe.Input) (string, error) { return "custom", nil }), dedupe.Input{}, "custom", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.src.Key(tt.in)
			if tt.wantErr == nil {
				if err != nil || got != tt.want {
					t.Fatalf("Key = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Key = %q, %v; want %v", got, err, tt.wantErr)
			}
			var ke *dedupe.KeyError
			if !errors.As(err, &ke) || ke.Source == "" {
				t.Fatalf("error %v is not a *KeyError with a Source", err)
			}
			if !dedupe.IsInvalidInput(err) {
				t.Fatalf("IsInvalidInput(%v) = false", err)
			}
		})
	}
}

func TestKeyErrorMessage(t *testing.T) {
	_, err := dedupe.HeaderKey("Idempotency-Key", "Nats-Msg-Id").Key(dedupe.Input{})
	want := "dedupe: key from header Idempotency-Key, Nats-Msg-Id: dedupe: missing idempotency key"
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v, want %q", err, want)
	}
}

func TestStoreKey(t *testing.T) {
	long := strings.Repeat("k", 300)
	tests := []struct {
		name   string
		g      dedupe.Guard
		raw    string
		want   string
		hashed bool
	}{
		{"plain", dedupe.Guard{}, "k1", "k1", false},
		{"namespaced", dedupe.Guard{Namespace: "payments"}, "k1", "payments:k1", false},
		{"at limit", dedupe.Guard{MaxKeyLen: 10}, "0123456789", "0123456789", false},
		{"namespace counts", dedupe.Guard{Namespace: "ns", MaxKeyLen: 10}, "0123456789", "", true},
		{"long hashed", dedupe.Guard{Namespace: "payments"}, long, "", true},
		{"hash-looking key hashed", dedupe.Guard{}, "sha256:abc", "", true},
		{"huge namespace", dedupe.Guard{Namespace: strings.Repeat("n", 250)}, "k1", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.g.StoreKey(tt.raw)
			if err != nil {
				t.Fatal(err)
			}
			if !tt.hashed {
				if got != tt.want {
					t.Fatalf("StoreKey = %q, want %q", got, tt.want)
				}
				return
			}
			limit := tt.g.MaxKeyLen
			if limit == 0 {
				limit = dedupe.DefaultMaxKeyLen
			}
			if !strings.Contains(got, "sha256:") || strings.Contains(got, tt.raw) {
				t.Fatalf("StoreKey = %q: want a hashed key", got)
			}
			if len(got) > max(limit, len("sha256:")+64) {
				t.Fatalf("StoreKey = %q: %d bytes, limit %d", got, len(got), limit)
			}
			if tt.g.Namespace != "" && len(tt.g.Namespace)+1+len("sha256:")+64 <= limit && !strings.HasPrefix(got, tt.g.Namespace+":sha256:") {
				t.Fatalf("StoreKey = %q: namespace prefix lost", got)
			}
			again, _ := tt.g.StoreKey(tt.raw)
			other, _ := tt.g.StoreKey(tt.raw + "x")
			if again != got || other == got {
				t.Fatalf("hash not deterministic or not distinct: %q %q %q", got, again, other)
			}
		})
	}
	g := dedupe.Guard{}
	for _, bad := range []string{"", "a\x00", "\xff"} {
		if _, err := g.StoreKey(bad); !dedupe.IsInvalidInput(err) {
			t.Errorf("StoreKey(%q) error = %v, want invalid input", bad, err)
		}
	}
}

func FuzzKey(f *testing.F) {
	f.Add("k1", "payments", `{"id":"p-1"}`, "id")
	f.Add("sha256:00", "", `{"id":12.50}`, "id")
	f.Add(strings.Repeat("x", 250), "ns", `[{"a":"b"}]`, "0.a")
	f.Add("a\x00b", "t", `{"id":"\u0001"}`, "id")
	f.Fuzz(func(t *testing.T, header, namespace, payload, path string) {
		in := dedupe.Input{
			Header:    map[string][]string{"idempotency-KEY": {header}},
			Data:      []byte(payload),
			MessageID: header,
		}
		g := &dedupe.Guard{Namespace: namespace}
		for _, src := range []dedupe.KeySource{dedupe.HeaderKey("Idempotency-Key"), dedupe.JSONFieldKey(path), dedupe.MessageIDKey()} {
			k, err := src.Key(in)
			if err != nil {
				var ke *dedupe.KeyError
				if !errors.As(err, &ke) || !dedupe.IsInvalidInput(err) {
					t.Fatalf("error %v is not an invalid-input *KeyError", err)
				}
				continue
			}
			if k == "" || !utf8.ValidString(k) || dedupe.CheckKey(k) != nil {
				t.Fatalf("accepted bad key %q", k)
			}
			sk, err := g.StoreKey(k)
			if err != nil {
				t.Fatalf("StoreKey(%q): %v", k, err)
			}
			if len(sk) > max(dedupe.DefaultMaxKeyLen, len("sha256:")+64) {
				t.Fatalf("stored key %q longer than the limit", sk)
			}
			if sk2, _ := g.StoreKey(k); sk2 != sk {
				t.Fatalf("StoreKey not deterministic: %q %q", sk, sk2)
			}
			plain := namespace + ":" + k
			if namespace == "" {
				plain = k
			}
			if sk != plain && !strings.Contains(sk, "sha256:") {
				t.Fatalf("stored key %q is neither %q nor hashed", sk, plain)
			}
		}
	})
}

func TestFirstKey(t *testing.T) {
	src := dedupe.FirstKey(dedupe.HeaderKey("Idempotency-Key"), dedupe.MessageIDKey())
	in := dedupe.Input{Header: map[string][]string{"Idempotency-Key": {"k1"}}, MessageID: "S:1"}
	if k, err := src.Key(in); err != nil || k != "k1" {
		t.Fatalf("with the header: %q, %v", k, err)
	}
	in.Header = nil
	if k, err := src.Key(in); err != nil || k != "S:1" {
		t.Fatalf("without the header: %q, %v, want the message id", k, err)
	}
	in.MessageID = ""
	if _, err := src.Key(in); !errors.Is(err, dedupe.ErrMissingKey) {
		t.Fatalf("with neither: %v, want ErrMissingKey", err)
	}
	// An invalid key is not skipped over.
	in = dedupe.Input{Header: map[string][]string{"Idempotency-Key": {"bad\x00"}}, MessageID: "S:1"}
	if _, err := src.Key(in); !errors.Is(err, dedupe.ErrInvalidKey) {
		t.Fatalf("invalid header key: %v, want ErrInvalidKey", err)
	}
}
