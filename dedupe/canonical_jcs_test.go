package dedupe_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strconv"
	"strings"
	"testing"

	"github.com/idemq/idemq/dedupe"
)

// TestCanonicalizeJCS checks vectors derived from the examples of RFC 8785:
// its numbers (section 3.2.2.3 and appendix B), its property-sorting
// example (3.2.3), its string escapes (3.2.2.2) and the complete example of
// 3.2.4, whose expected bytes JavaScript's JSON.stringify with sorted keys
// also gives.
func TestCanonicalizeJCS(t *testing.T) {
	tests := []struct{ name, in, want string }{
		// Numbers: IEEE 754 doubles written as ECMAScript does.
		{"zero", `0`, `0`},
		{"minus zero", `-0`, `0`},
		{"minus zero as decimal", `-0.0e-5`, `0`},
		{"1e21 switches to exponent form", `1e21`, `1e+21`},
		{"below 1e21 stays an integer", `1e20`, `100000000000000000000`},
		{"rounds to 1e21", `999999999999999999999`, `1e+21`},
		{"1E-7 switches to exponent form", `1E-7`, `1e-7`},
		{"1e-6 stays a decimal", `1e-6`, `0.000001`},
		{"shortest round trip", `333333333.33333329`, `333333333.3333333`},
		{"trailing zero", `4.50`, `4.5`},
		{"small decimal", `2e-3`, `0.002`},
		{"1e-27", `0.000000000000000000000000001`, `1e-27`},
		{"1E30", `1E30`, `1e+30`},
		{"exponent with a fraction", `123e-20`, `1.23e-18`},
		{"2^53+1 is a double's 2^53", `9007199254740993`, `9007199254740992`},
		{"many digits round", `123456789012345678901234567890`, `1.2345678901234568e+29`},
		{"largest double", `1.7976931348623157e308`, `1.7976931348623157e+308`},
		{"smallest subnormal", `5e-324`, `5e-324`},
		{"underflow reads as 0", `1e-400`, `0`},
		{"huge negative exponent reads as 0", `1e-99999999999999999999999`, `0`},
		{"negative", `-1.5e-300`, `-1.5e-300`},
		{"integer as 1e2", `1e+2`, `100`},
		{"integer with fraction zeros", `100.000`, `100`},
		// Strings: only '"', '\\' and C0 controls are escaped.
		{"escapes", `"\u0000\u0008\u0009\u000a\u000b\u000c\u000d\u001f\u007f\u2028\u2029"`,
			`"\u0000\b\t\n\u000b\f\r\u001f` + "\u007f\u2028\u2029" + `"`},
		{"string example", `"\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/"`, `"€$\u000f\nA'B\"\\\\\"/"`},
		{"surrogate pair", `"\ud83d\ude00"`, `"😀"`},
		// Property sorting by UTF-16 code units.
		{"RFC sorting example",
			`{"\u20ac": "Euro Sign", "\r": "Carriage Return", "\ufb33": "Hebrew Letter Dalet With Dagesh", "1": "One", "\ud83d\ude00": "Emoji: Grinning Face", "\u0080": "Control", "\u00f6": "Latin Small Letter O With Diaeresis"}`,
			"{\"\\r\":\"Carriage Return\",\"1\":\"One\",\"\u0080\":\"Control\",\"ö\":\"Latin Small Letter O With Diaeresis\",\"€\":\"Euro Sign\",\"😀\":\"Emoji: Grinning Face\",\"\ufb33\":\"Hebrew Letter Dalet With Dagesh\"}"},
		{"supplementary before U+E000", `{"\ue000":1,"\ud800\udc00":2,"\uffff":3,"\ud7ff":4}`,
			"{\"\ud7ff\":4,\"\U00010000\":2,\"\ue000\":1,\"\uffff\":3}"},
		{"nested", ` { "b" : 1 , "a" : { "d" : [ ] , "c" : { } } } `, `{"a":{"c":{},"d":[]},"b":1}`},
		{"RFC complete example",
			`{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001], "string": "\u20ac$\u000F\u000aA'\u0042\u0022\u005c\\\"\/", "literals": [null, true, false]}`,
			`{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],"string":"€$\u000f\nA'B\"\\\\\"/"}`},
	}
	for _, tt := range tests {
		got, err := dedupe.CanonicalizeJCS([]byte(tt.in))
		if err != nil {
			t.Errorf("%s: CanonicalizeJCS(%s): %v", tt.name, tt.in, err)
			continue
		}
		if string(got) != tt.want {
			t.Errorf("%s: CanonicalizeJCS(%s)\n got %s\nwant %s", tt.name, tt.in, got, tt.want)
		}
		if again, err := dedupe.CanonicalizeJCS(got); err != nil || !bytes.Equal(again, got) {
			t.Errorf("%s: not idempotent: %s -> %s (%v)", tt.name, got, again, err)
		}
	}
}

func TestCanonicalizeJCSRejects(t *testing.T) {
	for _, in := range []string{
		`1e400`, `-1e309`, `[1.8e308]`, // beyond a double
		`{"a":1,"a":2}`, `{"\u0061":1,"a":2}`, // duplicate names
		`"\ud800"`, `"\udc00x"`, // lone surrogates
		`{"a":1} x`, `[1,]`, `01`, `"\x"`, "\"\xff\"", ``,
		strings.Repeat("[", 1001) + strings.Repeat("]", 1001),
	} {
		if c, err := dedupe.CanonicalizeJCS([]byte(in)); !errors.Is(err, dedupe.ErrNotJSON) {
			t.Errorf("CanonicalizeJCS(%.40q) = %s, %v; want an error wrapping ErrNotJSON", in, c, err)
		}
	}
}

// TestCanonicalModesAgreeAndDiffer checks where the two modes must agree
// (integers, short decimals, names below U+E000) and the two places they
// must not.
func TestCanonicalModesAgreeAndDiffer(t *testing.T) {
	for _, in := range []string{
		`{"payment_id":"p-1","amount":100,"currency":"GBP","timestamp":1728468810}`,
		`[0,-0,1,-1,9007199254740992,-9007199254740992,1e2,1.5,0.1,4.50,1e-6,1e20,1e21,1e-7]`,
		`{"é":1,"e":{"z":[true,null]},"😀":"\u00e9"}`,
	} {
		a, err1 := dedupe.Canonicalize([]byte(in))
		b, err2 := dedupe.CanonicalizeJCS([]byte(in))
		if err1 != nil || err2 != nil || !bytes.Equal(a, b) {
			t.Errorf("modes differ on %s: exact %s (%v), JCS %s (%v)", in, a, err1, b, err2)
		}
	}
	for _, in := range []string{`9007199254740993`, `{"\ufb33":1,"\ud83d\ude00":2}`} {
		a, _ := dedupe.Canonicalize([]byte(in))
		b, _ := dedupe.CanonicalizeJCS([]byte(in))
		if bytes.Equal(a, b) {
			t.Errorf("modes agree on %s (%s); want exact numbers and code point order to differ from JCS", in, a)
		}
	}
}

// jcsAgrees reports whether the exact mode must give the JCS bytes for v (a
// document decoded with UseNumber): every number has at most 15
// significant digits, a magnitude well inside a double's normal range and
// an exponent literal Canonicalize accepts, and no member name holds a character from U+E000 up.
func jcsAgrees(v any) bool {
	switch v := v.(type) {
	case json.Number:
		s := string(v)
		mant, exp, _ := strings.Cut(strings.ToLower(strings.TrimPrefix(s, "-")), "e")
		d := strings.Trim(strings.Replace(mant, ".", "", 1), "0")
		f, err := strconv.ParseFloat(s, 64)
		if err != nil || d != "" && (math.Abs(f) < 1e-300 || math.Abs(f) > 1e300) {
			return false
		}
		// Canonicalize refuses exponent literals beyond 10^15.
		return len(d) <= 15 && len(strings.TrimLeft(strings.TrimLeft(exp, "+-"), "0")) <= 15
	case []any:
		for _, e := range v {
			if !jcsAgrees(e) {
				return false
			}
		}
	case map[string]any:
		for k, e := range v {
			for _, r := range k {
				if r >= 0xE000 {
					return false
				}
			}
			if !jcsAgrees(e) {
				return false
			}
		}
	}
	return true
}

// FuzzCanonicalizeJCS checks that CanonicalizeJCS never panics, fails only
// with ErrNotJSON, is idempotent, keeps the value (as encoding/json reads
// it), does not depend on how the document was encoded, and agrees with
// Canonicalize where the two must agree.
func FuzzCanonicalizeJCS(f *testing.F) {
	for _, s := range []string{
		`{"payment_id":"p-1","from":"acc-1","to":"acc-2","amount":100,"currency":"GBP","timestamp":1728468810}`,
		`{"numbers":[333333333.33333329,1E30,4.50,2e-3,1e-27],"s":"\u20ac\u000f"}`,
		`{"\ufb33":1,"\ud83d\ude00":2,"\u0080":3}`,
		`1e21`, `1E-7`, `-0`, `9007199254740993`, `1e400`, `"\ud800"`, `{"a":1,"a":2}`, `not json`,
	} {
		f.Add([]byte(s))
	}
	fp := &dedupe.Fingerprinter{Canonical: dedupe.CanonicalJCS}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := dedupe.CanonicalizeJCS(data)
		// The JCS fingerprint is the plain SHA-256 of the JCS bytes, or of
		// the raw bytes of what is not (I-)JSON.
		hashed := c
		if err != nil {
			hashed = data
		}
		if got, ferr := fp.Fingerprint(dedupe.Input{Data: data}); ferr != nil || got != sha256Hex(hashed) {
			t.Fatalf("JCS fingerprint of %q: %s, %v; want SHA-256 of %q", data, got, ferr, hashed)
		}
		if err != nil {
			if !errors.Is(err, dedupe.ErrNotJSON) {
				t.Fatalf("error does not wrap ErrNotJSON: %v", err)
			}
			if c != nil {
				t.Fatalf("returned %q with %v", c, err)
			}
			return
		}
		if !json.Valid(data) || !json.Valid(c) {
			t.Fatalf("accepted %q (valid %v) as %q (valid %v)", data, json.Valid(data), c, json.Valid(c))
		}
		c2, err := dedupe.CanonicalizeJCS(c)
		if err != nil || !bytes.Equal(c, c2) {
			t.Fatalf("not idempotent: %q -> %q -> %q (%v)", data, c, c2, err)
		}
		var v, w any
		if err := json.Unmarshal(data, &v); err != nil {
			t.Fatalf("encoding/json cannot read %q: %v", data, err)
		}
		if err := json.Unmarshal(c, &w); err != nil || !reflect.DeepEqual(v, w) {
			t.Fatalf("value changed: %q reads as %#v, its JCS form %q as %#v (%v)", data, v, c, w, err)
		}
		re, err := json.MarshalIndent(v, " ", "\t")
		if err != nil {
			t.Fatalf("re-marshal: %v", err)
		}
		if c3, err := dedupe.CanonicalizeJCS(re); err != nil || !bytes.Equal(c, c3) {
			t.Fatalf("re-marshalled %q gives %q, original %q (%v)", re, c3, c, err)
		}
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		var n any
		if err := dec.Decode(&n); err != nil {
			t.Fatal(err)
		}
		if jcsAgrees(n) {
			if e, err := dedupe.Canonicalize(data); err != nil || !bytes.Equal(e, c) {
				t.Fatalf("modes must agree on %q: exact %q (%v), JCS %q", data, e, err, c)
			}
		}
	})
}
