package dedupe

import (
	"errors"
	"fmt"
	"strings"
	"testing"
)

// The fast canonicaliser must give, for every input, the bytes and the error
// the reference implementation (reference_test.go, the code before the
// rewrite) gives: fingerprints are persisted, and error texts are what
// operators see in dead letters.

// equivalenceDocs are JSON documents and near-documents that exercise every
// branch of the parser and writer.
var equivalenceDocs = []string{
	// Representative payloads: producer order, sorted (already canonical),
	// reformatted.
	`{"payment_id":"p-7f3c2a9e41","from":"acc-000123","to":"acc-000456","amount":1250.50,"currency":"GBP","reference":"Invoice 8841 \u2013 October","timestamp":1728468810,"meta":{"source":"web","attempt":1}}`,
	`{"amount":100,"currency":"GBP","meta":{"attempt":1,"source":"web"},"payment_id":"p-1","timestamp":1728468810}`,
	" {\n\t\"b\" : [ 1 , 2.50 , { \"c\" : null } ] ,\r\n \"a\" : \"\\u00e9\\ud83d\\ude00\" }\n",
	`{"order":{"id":"o-1","sent_at":"2024-10-09","lines":[{"sku":"a","qty":2},{"sku":"b","qty":1}]},"amount":100}`,
	`{"items":[{"sku":"x"},{"sku":"y"},{"sku":"z"}],"a":{"b":{"c":1}},"":{"":2}}`,
	// Scalars and literals.
	`null`, `true`, `false`, `[true,false,null]`, `[]`, `{}`, `[[]]`, `{"a":{}}`, ` [ ] `, `""`,
	// Numbers.
	`0`, `-0`, `-0.0e5`, `0e-10`, `100`, `100.0`, `1e2`, `1E+2`, `1.00E+2`, `10e1`, `0.1e3`, `100000e-3`,
	`1.5`, `-12.3400`, `123.456e-2`, `1e20`, `1e21`, `1.5e30`, `1e-6`, `0.0000012`, `1e-7`, `-2.5E-8`,
	`9007199254740993`, `9007199254740992`, `123456789012345678901234567890`, `-123456789012345678901`,
	`100000000000000000000`, `999999999999999999999`, `1000000000000000000000`, `123456789012345`,
	`1234567890123456`, `-123456789012345`, `-1234567890123456`, `0.1000000000000000055511151231257827`,
	`1e000000000000000000001`, `1e9999999999999999`, `1e999999999999999`, `1e400`, `-1e400`, `1E-700`,
	`5e-324`, `2e-324`, `1.7976931348623157e308`, `1.7976931348623159e308`, `333333333.33333329`,
	`4.50`, `2e-3`, `1e-27`, `0.000001`, `1e-0`, `1E+00`, `-1.0`, `12345678901234567890.123e-30`,
	"0e00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000001000000000000000",
	`[0,-0,1,-1,9007199254740992,-9007199254740992,1e2,1.5,0.1,4.50,1e-6,1e20,1e21,1e-7]`,
	// Strings and escapes.
	`"\u00e9"`, `"é"`, `"\/"`, `"\u002F\u0041"`, `"\ud83d\ude00"`, `"\u0001\u001F"`, `"\b\f\n\r\t"`,
	`"\u0008\u000c\u000A"`, `"\u007f\u2028<>&"`, `"\"\\"`, `"a\"b\\c\/d"`, `"\u0000"`, `"\u20ac\u000f"`,
	`"plain then \n escape then plain"`, `"\uD83D\uDE00"`, `"\uABCD\uabcd"`,
	// Names: order, escapes, duplicates, UTF-16 order (JCS).
	`{"\u0061":1}`, `{"é":1,"e":2,"f":3}`, `{"\ufb33":1,"\ud83d\ude00":2,"\u0080":3}`,
	`{"é":1,"e":{"z":[true,null]},"😀":"\u00e9"}`, `{"\ue000":1,"\uffff":2,"𐀀":3,"z":4}`,
	`{"a\nb":1,"a":2,"a\"":3,"a\\":4,"a\u0000":5}`, `{"b":1,"a":2,"c":{"y":1,"x":2}}`,
	`{"a":1,"a":2}`, `{"a":1,"\u0061":2}`, `{"b":1,"a":1,"b":2,"a":2}`, `{"x":{"a":1,"a":2},"y":{"b":1,"b":2}}`,
	`{"x":{"a":1,"a":2},"x":3}`, `{"c":1,"b":2,"a":3,"c":4}`, `{"😀":1,"😀":2}`, `{"\ufb33":1,"\ufb33":2}`,
	// Malformed.
	``, `   `, `[1,]`, `{"a":1,}`, `01`, `1.`, `.5`, `+1`, `-`, `1e`, `1e+`, `NaN`, `Infinity`, `tru`,
	`nul`, `fals`, `"\ud800"`, `"\udc00"`, `"\ud800\u0041"`, `"\ud800\"`, `"\ud800\u"`, `"\ud800\uzzzz"`,
	`"\x"`, `"\u12"`, `"\u12g4"`, "\"\xff\"", "\"a\xc3\"", "\"\xc3\\n\"", "\"\\n\xff\"", "\"tab\there\"",
	"\"ctl\\n\x01\"", `{"a":1} x`, `{"a":1}{}`, `{"a"}`, `{1:2}`, `[1 2]`, `"unterminated`,
	`"unterminated\n`, `"unterminated\`, "\"\xff", `{"a":1`, `{"a":1 `, `{"a" 1}`, `{"a":}`,
	`[1`, `[1,`, `{`, `[`, `{"a":[1,{"b":}]}`, `{"a":1,"a":2,"b":}`, `{"b":x,"b":1}`, `-01`, `1.5e`,
	`1.e5`, `--1`, `1e--1`, "{\"\xff\":1}", "{\"a\":\"\xed\xa0\x80\"}", "\"\xf4\x90\x80\x80\"",
	"\ufeff{}", "{}\x00", `nulls`, `truex`, `[true false]`, `{"a":1"b":2}`, "[\"\x7f\"]",
	// Nesting.
	strings.Repeat("[", 1000) + strings.Repeat("]", 1000),
	strings.Repeat("[", 1001) + strings.Repeat("]", 1001),
	strings.Repeat(`{"b":{"a":`, 500) + "1" + strings.Repeat("}}", 500),
	strings.Repeat(`{"b":{"a":`, 501) + "1" + strings.Repeat("}}", 501),
	strings.Repeat(`{"z":1,"a":[`, 300) + "null" + strings.Repeat("]}", 300),
	strings.Repeat("[", 999) + `{"a":1}` + strings.Repeat("]", 999),
	strings.Repeat("[", 1000) + `{"a":1}` + strings.Repeat("]", 1000),
}

// sameError reports whether two errors are both nil, or both non-nil with
// the same text and the same sentinels.
func sameError(a, b error) bool {
	if a == nil || b == nil {
		return a == nil && b == nil
	}
	for _, s := range []error{ErrNotJSON, ErrMissingKey, ErrInvalidKey} {
		if errors.Is(a, s) != errors.Is(b, s) {
			return false
		}
	}
	var ka, kb *KeyError
	return a.Error() == b.Error() && errors.As(a, &ka) == errors.As(b, &kb)
}

func checkCanonicalize(t *testing.T, data []byte) {
	t.Helper()
	for _, m := range []struct {
		name      string
		fast, ref func([]byte) ([]byte, error)
	}{
		{"Canonicalize", Canonicalize, refCanonicalize},
		{"CanonicalizeJCS", CanonicalizeJCS, refCanonicalizeJCS},
	} {
		got, err := m.fast(data)
		want, werr := m.ref(data)
		if string(got) != string(want) || (got == nil) != (want == nil) || !sameError(err, werr) {
			t.Errorf("%s(%q) = %q, %v; reference %q, %v", m.name, data, got, err, want, werr)
		}
	}
}

// equivalenceFingerprinters are configurations of every Fingerprinter path,
// in both canonical modes; path is a field path the caller chooses.
func equivalenceFingerprinters(path string) []*Fingerprinter {
	long := []byte(strings.Repeat("k", 100))
	var fs []*Fingerprinter
	for _, mode := range []CanonicalMode{CanonicalExact, CanonicalJCS} {
		fs = append(fs,
			&Fingerprinter{Canonical: mode},
			&Fingerprinter{Canonical: mode, Exclude: []string{"timestamp"}},
			&Fingerprinter{Canonical: mode, Exclude: []string{path}},
			&Fingerprinter{Canonical: mode, Exclude: []string{"items.0", "items.0", "meta.source", "a.b.c", "", ".", "order.lines.1"}},
			&Fingerprinter{Canonical: mode, Include: []string{path}},
			&Fingerprinter{Canonical: mode, Include: []string{"amount", "order", "order.id", "amount", "missing", "items.1.sku", "", "\ufb33", "😀", "\xff", "é"}},
			&Fingerprinter{Canonical: mode, Include: []string{"order", "items"}, Exclude: []string{"order.sent_at", "items.1", path}},
			&Fingerprinter{Canonical: mode, Headers: []string{"Content-Type", "X-Dup", "x-dup", "X-Ünï", "Absent", "X-\xff", "X-\xfe", "\uFB33"}},
			&Fingerprinter{Canonical: mode, Headers: []string{"content-type"}, Exclude: []string{path}, HMACKey: []byte("k")},
			&Fingerprinter{Canonical: mode, HMACKey: []byte("0123456789abcdef0123456789abcdef")},
			&Fingerprinter{Canonical: mode, HMACKey: long, Include: []string{path, "amount"}},
			&Fingerprinter{Canonical: mode, HMACKey: []byte(strings.Repeat("x", 64))},
		)
	}
	return append(fs, nil)
}

func equivalenceHeaders() map[string][]string {
	return map[string][]string{
		"Content-Type":    {"application/json"},
		"X-Dup":           {"b", "a"},
		"x-dup":           {"c"},
		"X-DUP":           {},
		"x-ünï":           {"v\xffw", "ü"},
		"Idempotency-Key": {" key-1\t"},
		"Nats-Msg-Id":     {"msg-1"},
		"X-\xff":          {"1"},
		"x-\xfe":          {"2"},
		"\ufb33":          {"3"},
	}
}

func checkFingerprints(t *testing.T, in Input, path string) {
	t.Helper()
	for _, f := range equivalenceFingerprinters(path) {
		got, err := f.Fingerprint(in)
		want, werr := refFingerprint(f, in)
		if got != want || !sameError(err, werr) {
			t.Errorf("Fingerprint(%+v, %q) = %s, %v; reference %s, %v", f, in.Data, got, err, want, werr)
		}
	}
}

func equivalenceGuards(path string) []*Guard {
	ex := &Fingerprinter{Exclude: []string{path}}
	return []*Guard{
		{Key: HeaderKey("Nats-Msg-Id"), Namespace: "payments"},
		{Key: HeaderKey("Idempotency-Key")},
		{Key: HeaderKey("Absent")},
		{Key: HeaderKey("Absent"), FallbackToFingerprint: true, Namespace: "n"},
		{Key: FirstKey(HeaderKey("Absent"), JSONFieldKey(path), MessageIDKey())},
		{Key: JSONFieldKey(path), Namespace: "payments"},
		{Key: JSONFieldKey(path), Fingerprint: ex},
		{Key: JSONFieldKey(path), Fingerprint: &Fingerprinter{Include: []string{path}}},
		{Key: JSONFieldKey(path), FallbackToFingerprint: true},
		{Key: JSONFieldKey(path), Fingerprint: &Fingerprinter{Canonical: CanonicalJCS}},
		{Key: JSONFieldKey(path), NoFingerprint: true, FallbackToFingerprint: true},
		{Key: JSONFieldKey(path), Fingerprint: ex, MaxKeyLen: 8, Namespace: "ns"},
		{Namespace: "payments"},
		{NoFingerprint: true},
		{Namespace: strings.Repeat("n", 190)},
		{Key: MessageIDKey(), MaxKeyLen: 5},
		{Key: MessageIDKey(), NoFingerprint: true, Namespace: "x"},
		{Key: KeyFunc(func(Input) (string, error) { return "sha256:abc", nil })},
		{Key: KeyFunc(func(Input) (string, error) { return "bad\x01key", nil })},
		{Key: KeyFunc(func(Input) (string, error) { return strings.Repeat("é", 150), nil }), Namespace: "long"},
	}
}

func checkResolve(t *testing.T, in Input, path string) {
	t.Helper()
	for _, g := range equivalenceGuards(path) {
		key, fp, err := g.Resolve(in)
		wkey, wfp, werr := refResolve(g, in)
		if key != wkey || fp != wfp || !sameError(err, werr) {
			t.Errorf("Resolve(%+v, %q) = %q, %q, %v; reference %q, %q, %v", g, in.Data, key, fp, err, wkey, wfp, werr)
		}
	}
	got, err := JSONFieldKey(path).Key(in)
	want, werr := refJSONFieldKey(path, in)
	if got != want || !sameError(err, werr) {
		t.Errorf("JSONFieldKey(%q).Key(%q) = %q, %v; reference %q, %v", path, in.Data, got, err, want, werr)
	}
}

var equivalencePaths = []string{"payment_id", "amount", "meta", "meta.attempt", "a.b.c", "items.1.sku", "items.01",
	"items.+1", "items.3", "", ".", "a..b", "b.0.c", "timestamp", "order.lines.0", "😀", "\u0061"}

func TestCanonicalizeMatchesReference(t *testing.T) {
	for _, d := range equivalenceDocs {
		checkCanonicalize(t, []byte(d))
	}
	gen := generatedDocs()
	for _, d := range gen {
		checkCanonicalize(t, []byte(d))
	}
	for _, d := range gen[:3] {
		checkFingerprints(t, Input{Data: []byte(d)}, "member_name_07")
	}
	big := Input{Data: []byte(gen[3])}
	for _, f := range []*Fingerprinter{nil, {Exclude: []string{"7.a"}, HMACKey: []byte("k")}, {Canonical: CanonicalJCS, Headers: []string{"x"}}} {
		got, err := f.Fingerprint(big)
		if want := mustRef(t, f, big); got != want || err != nil {
			t.Errorf("Fingerprint(%+v) of a %d-byte document = %s, %v; reference %s", f, len(big.Data), got, err, want)
		}
	}
}

func mustRef(t *testing.T, f *Fingerprinter, in Input) string {
	t.Helper()
	fp, err := refFingerprint(f, in)
	if err != nil {
		t.Fatal(err)
	}
	return fp
}

// generatedDocs are documents too long to list: objects of more than a
// dozen members (sorted by the general sort), names sharing long prefixes,
// names from U+E000 up, a duplicate among many members, and a document
// larger than what a pooled canon keeps.
func generatedDocs() []string {
	var many, dup, wide, big strings.Builder
	many.WriteString("{")
	wide.WriteString("{")
	for i := 40; i > 0; i-- {
		fmt.Fprintf(&many, `"member_name_%02d":[%d,"v\u00e9%d",{"y":%d.50,"x":null}],`, i, i, i, i)
		fmt.Fprintf(&wide, `"%c%c":%d,"\u%04x":"%d",`, rune(0xE000+i*1000), rune(0x10000+i), i, 0xD7D0+i, i)
	}
	many.WriteString(`"member_name":true}`)
	wide.WriteString(`"z":0}`)
	dup.WriteString(strings.TrimSuffix(many.String(), "}") + `,"member_name_17":1}`)
	big.WriteString("[")
	for i := range 2000 {
		if i > 0 {
			big.WriteString(",")
		}
		fmt.Fprintf(&big, `{"z":"\n%d","b":[1e%d,-0.%d],"a":{"d":%d,"c":"\ud83d\ude00"}}`, i, i%30, i, i)
	}
	big.WriteString("]")
	return []string{many.String(), dup.String(), wide.String(), big.String()}
}

// The structured documents (the first five) are checked with every path;
// FuzzFastMatchesReference's seeds check every document with one path each.

func TestFingerprintMatchesReference(t *testing.T) {
	for _, d := range equivalenceDocs[:5] {
		for _, p := range equivalencePaths {
			checkFingerprints(t, Input{Data: []byte(d), Header: equivalenceHeaders()}, p)
		}
	}
	checkFingerprints(t, Input{}, "a")
}

func TestResolveMatchesReference(t *testing.T) {
	for _, d := range equivalenceDocs[:5] {
		for _, p := range equivalencePaths {
			checkResolve(t, Input{Data: []byte(d), Header: equivalenceHeaders(), MessageID: "m-1"}, p)
		}
	}
	checkResolve(t, Input{}, "a")
}

// TestFingerprintGolden pins fingerprints computed by the implementation
// before the single-pass rewrite (main at b5f934a), independently of the
// reference copy.
func TestFingerprintGolden(t *testing.T) {
	in := Input{Data: []byte(equivalenceDocs[0]), Header: map[string][]string{"Content-Type": {"application/json"}}}
	for _, tt := range []struct {
		f    *Fingerprinter
		want string
	}{
		{nil, "fc3e0d4ea2c4ccff6f79f2d6ae47e3351a48594ff4cfedd43e3589f89aad5cad"},
		{&Fingerprinter{Exclude: []string{"timestamp"}}, "849a23d5f51acc0a62a84fc9cf1a2622dc7ad84ed02ea937ff83472e1cee5805"},
		{&Fingerprinter{Include: []string{"amount", "meta.source"}}, "8b9fb9f173e7dd7fa010bc245f534e58bd4cb0766b3a38da8a2985de7e388b9f"},
		{&Fingerprinter{Headers: []string{"Content-Type"}, HMACKey: []byte("secret")}, "725189e0dee14889c906fba609d4cfcfde50e92393670d9aea5563fc392755df"},
		{&Fingerprinter{Canonical: CanonicalJCS}, "8ba52a4013f6e77a93c81fb879788391f9334b5a1f5fa27872f9f1e903f90a10"},
		{&Fingerprinter{Canonical: CanonicalJCS, Headers: []string{"Content-Type"}, HMACKey: []byte("secret")}, "458c40bcc471960aada28c8d3b75d2f828b128b7001a93f148d7abc5ba310bf2"},
	} {
		got, err := tt.f.Fingerprint(in)
		if err != nil || got != tt.want {
			t.Errorf("Fingerprint(%+v) = %s, %v; want %s", tt.f, got, err, tt.want)
		}
	}
	raw, _ := (&Fingerprinter{}).Fingerprint(Input{Data: []byte("not json")})
	if raw != "9f3f2e7fc910fa1e3fbbd7b786d540c03421c5ca8857c1dbe173eee80faba40a" {
		t.Errorf("raw fingerprint = %s", raw)
	}
}

// FuzzFastMatchesReference checks that Canonicalize, CanonicalizeJCS,
// Fingerprint (every configuration, both modes), JSONFieldKey and
// Guard.Resolve agree with the reference implementation on arbitrary
// input: same bytes, same fingerprints, same errors.
func FuzzFastMatchesReference(f *testing.F) {
	for i, d := range equivalenceDocs {
		f.Add([]byte(d), equivalencePaths[i%len(equivalencePaths)])
	}
	f.Fuzz(func(t *testing.T, data []byte, path string) {
		checkCanonicalize(t, data)
		in := Input{Data: data, Header: equivalenceHeaders(), MessageID: "m-1"}
		checkFingerprints(t, in, path)
		checkResolve(t, in, path)
	})
}

// TestFastPathAllocations pins the allocations of the claim path on the
// representative payload: the returned strings only.
func TestFastPathAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items at random under the race detector")
	}
	in := Input{
		Header:    map[string][]string{"Nats-Msg-Id": {"msg-8841-1"}, "Content-Type": {"application/json"}},
		Data:      []byte(ratioPayload),
		MessageID: "stream.42",
	}
	raw := Input{Data: []byte("not json")}
	exHMAC := &Fingerprinter{Exclude: []string{"timestamp"}, HMACKey: []byte("k")}
	jcs := &Fingerprinter{Canonical: CanonicalJCS}
	header := &Guard{Key: HeaderKey("Nats-Msg-Id")}
	headerNS := &Guard{Key: HeaderKey("Nats-Msg-Id"), Namespace: "p"}
	first := &Guard{Key: FirstKey(HeaderKey("Idempotency-Key"), MessageIDKey())}
	fpKey := &Guard{Namespace: "p"}
	field := &Guard{Key: JSONFieldKey("payment_id")}
	for _, tt := range []struct {
		name string
		f    func()
		max  float64
	}{
		{"Fingerprint", func() { _, _ = (*Fingerprinter)(nil).Fingerprint(in) }, 1},
		{"Fingerprint/jcs", func() { _, _ = jcs.Fingerprint(in) }, 1},
		{"Fingerprint/exclude+hmac", func() { _, _ = exHMAC.Fingerprint(in) }, 1},
		{"Fingerprint/raw", func() { _, _ = (*Fingerprinter)(nil).Fingerprint(raw) }, 1},
		{"Canonicalize", func() { _, _ = Canonicalize(in.Data) }, 1},
		{"Resolve/header-key", func() { _, _, _ = header.Resolve(in) }, 1},
		{"Resolve/header-key+namespace", func() { _, _, _ = headerNS.Resolve(in) }, 2},
		{"Resolve/first-key", func() { _, _, _ = first.Resolve(in) }, 2},
		{"Resolve/fingerprint-key", func() { _, _, _ = fpKey.Resolve(in) }, 2},
		{"Resolve/json-field-key", func() { _, _, _ = field.Resolve(in) }, 2},
	} {
		tt.f() // warm the pool
		if got := testing.AllocsPerRun(100, tt.f); got > tt.max {
			t.Errorf("%s: %v allocations, want at most %v", tt.name, got, tt.max)
		}
	}
}

// TestFastPathConcurrent checks that pooled state does not leak between
// concurrent calls.
func TestFastPathConcurrent(t *testing.T) {
	docs := equivalenceDocs[:40]
	want := make([]string, len(docs))
	f := &Fingerprinter{Exclude: []string{"timestamp"}}
	for i, d := range docs {
		want[i], _ = refFingerprint(f, Input{Data: []byte(d)})
	}
	errs := make(chan string, 4)
	var done = make(chan struct{})
	for w := range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for n := range 200 {
				i := (n*7 + w) % len(docs)
				if got, _ := f.Fingerprint(Input{Data: []byte(docs[i])}); got != want[i] {
					errs <- docs[i]
					return
				}
			}
		}()
	}
	for range 4 {
		<-done
	}
	close(errs)
	for d := range errs {
		t.Errorf("concurrent Fingerprint(%q) differs from the reference", d)
	}
}

// TestHMACMatchesModule checks the HMAC computed over the pooled buffer
// against crypto/hmac, for keys around the block size.
func TestHMACMatchesModule(t *testing.T) {
	c := getCanon()
	defer putCanon(c)
	for _, kl := range []int{1, 14, 32, 63, 64, 65, 100, 128, 200} {
		key := []byte(strings.Repeat("k", kl-1) + "!")
		for _, ml := range []int{0, 1, 55, 56, 64, 119, 120, 1000} {
			msg := strings.Repeat("m", ml)
			c.out = append(append(c.out[:0], make([]byte, 64)...), msg...)
			if got, want := c.hash(key, 64), moduleHMAC(key, []byte(msg)); got != want {
				t.Errorf("HMAC with a %d-byte key of %d bytes = %x, crypto/hmac %x", kl, ml, got, want)
			}
		}
	}
}
