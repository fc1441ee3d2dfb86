package dedupe_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/idemq/idemq/dedupe"
)

func TestCanonicalize(t *testing.T) {
	tests := []struct {
		in, want string
	}{
		// Numbers: exact decimal normalisation.
		{`100`, `100`},
		{`100.0`, `100`},
		{`1e2`, `100`},
		{`1E+2`, `100`},
		{`1.00E+2`, `100`},
		{`10e1`, `100`},
		{`0.1e3`, `100`},
		{`100000e-3`, `100`},
		{`-0`, `0`},
		{`-0.0e5`, `0`},
		{`0e-10`, `0`},
		{`1.5`, `1.5`},
		{`-12.3400`, `-12.34`},
		{`123.456e-2`, `1.23456`},
		{`1e20`, `100000000000000000000`},
		{`1e21`, `1e+21`},
		{`1.5e30`, `1.5e+30`},
		{`1e-6`, `0.000001`},
		{`0.0000012`, `0.0000012`},
		{`1e-7`, `1e-7`},
		{`-2.5E-8`, `-2.5e-8`},
		{`9007199254740993`, `9007199254740993`},
		{`123456789012345678901234567890`, `1.2345678901234567890123456789e+29`},
		{`0.1000000000000000055511151231257827`, `0.1000000000000000055511151231257827`},
		{`1e000000000000000000001`, `10`},
		// Objects and arrays: sorted members, no whitespace.
		{` { "b" : 1 ,	"a" : [ 1 , 2 ] }
`, `{"a":[1,2],"b":1}`},
		{`{"z":{"y":1,"x":2},"a":{}}`, `{"a":{},"z":{"x":2,"y":1}}`},
		{`[]`, `[]`},
		{`[ true , false , null ]`, `[true,false,null]`},
		{`{"é":1,"e":2,"f":3}`, `{"e":2,"f":3,"é":1}`},
		// Strings: one escaping.
		{`"\u00e9"`, `"é"`},
		{`"é"`, `"é"`},
		{`"\/"`, `"/"`},
		{`"\u002F\u0041"`, `"/A"`},
		{`"\ud83d\ude00"`, `"😀"`},
		{`"\u0001\u001F"`, `"\u0001\u001f"`},
		{`"\b\f\n\r\t"`, `"\b\f\n\r\t"`},
		{`"\u0008\u000c\u000A"`, `"\b\f\n"`},
		{`"\u007f\u2028<>&"`, "\"\u007f\u2028<>&\""},
		{`"\"\\"`, `"\"\\"`},
		{`{"\u0061":1}`, `{"a":1}`},
	}
	for _, tt := range tests {
		got, err := dedupe.Canonicalize([]byte(tt.in))
		if err != nil {
			t.Errorf("Canonicalize(%q): %v", tt.in, err)
			continue
		}
		if string(got) != tt.want {
			t.Errorf("Canonicalize(%q) = %s, want %s", tt.in, got, tt.want)
		}
		again, err := dedupe.Canonicalize(got)
		if err != nil || !bytes.Equal(again, got) {
			t.Errorf("Canonicalize(%s) = %s, %v: not idempotent", got, again, err)
		}
	}
}

func TestCanonicalizeRejects(t *testing.T) {
	tests := []string{
		``,
		`   `,
		`{"a":1,"a":2}`,
		`{"a":1,"\u0061":2}`,
		`[1,]`,
		`{"a":1,}`,
		`01`,
		`1.`,
		`.5`,
		`+1`,
		`-`,
		`1e`,
		`1e+`,
		`NaN`,
		`Infinity`,
		`tru`,
		`nul`,
		`"\ud800"`,
		`"\udc00"`,
		`"\ud800\u0041"`,
		`"\x"`,
		`"\u12"`,
		"\"\xff\"",
		"\"a\xc3\"",
		"\"tab\there\"",
		`{"a":1} x`,
		`{"a":1}{}`,
		`1e9999999999999999`,
		`{"a"}`,
		`{1:2}`,
		`[1 2]`,
		`"unterminated`,
		strings.Repeat("[", 1001) + strings.Repeat("]", 1001),
	}
	for _, in := range tests {
		got, err := dedupe.Canonicalize([]byte(in))
		if !errors.Is(err, dedupe.ErrNotJSON) {
			t.Errorf("Canonicalize(%q) = %s, %v; want ErrNotJSON", in, got, err)
		}
	}
	deep := strings.Repeat("[", 1000) + strings.Repeat("]", 1000)
	if _, err := dedupe.Canonicalize([]byte(deep)); err != nil {
		t.Errorf("nesting 1000 deep: %v", err)
	}
}

func TestCanonicalNumbersAreExact(t *testing.T) {
	// Pairs equal as float64 but different as decimals must stay different.
	pairs := [][2]string{
		{`9007199254740993`, `9007199254740992`},
		{`0.1`, `0.10000000000000001`},
		{`1e400`, `1e401`},
		{`123456789012345678901234567890`, `123456789012345678901234567891`},
		{`{"amount":100000000000000000001}`, `{"amount":100000000000000000000}`},
	}
	for _, p := range pairs {
		a, errA := dedupe.Canonicalize([]byte(p[0]))
		b, errB := dedupe.Canonicalize([]byte(p[1]))
		if errA != nil || errB != nil {
			t.Fatalf("%v %v", errA, errB)
		}
		if bytes.Equal(a, b) {
			t.Errorf("%s and %s canonicalise alike: %s", p[0], p[1], a)
		}
	}
}

func FuzzCanonicalize(f *testing.F) {
	for _, s := range []string{
		`{"payment_id":"p-1","from":"acc-1","to":"acc-2","amount":100,"currency":"GBP","timestamp":1728468810}`,
		`{"b":[1,2.50,{"c":null}],"a":"\u00e9\ud83d\ude00"}`,
		`1e2`, `-0.0`, `"\u0000"`, `[true,false]`, `12345678901234567890.123e-30`, `not json`,
	} {
		f.Add([]byte(s))
	}
	fp := &dedupe.Fingerprinter{}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := dedupe.Canonicalize(data)
		if !json.Valid(data) {
			if err == nil {
				t.Fatalf("accepted invalid JSON %q as %q", data, c)
			}
			return
		}
		if err != nil {
			if !errors.Is(err, dedupe.ErrNotJSON) {
				t.Fatalf("error does not wrap ErrNotJSON: %v", err)
			}
			return
		}
		if !json.Valid(c) {
			t.Fatalf("canonical form %q of %q is not valid JSON", c, data)
		}
		c2, err := dedupe.Canonicalize(c)
		if err != nil || !bytes.Equal(c, c2) {
			t.Fatalf("not idempotent: %q -> %q -> %q (%v)", data, c, c2, err)
		}
		// Re-marshal through encoding/json (different escaping, indentation,
		// member order from its map): same canonical form, same fingerprint.
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.UseNumber()
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("encoding/json cannot decode %q: %v", data, err)
		}
		re, err := json.MarshalIndent(v, " ", "\t")
		if err != nil {
			t.Fatalf("re-marshal: %v", err)
		}
		c3, err := dedupe.Canonicalize(re)
		if err != nil || !bytes.Equal(c, c3) {
			t.Fatalf("re-marshalled %q canonicalises to %q, original to %q (%v)", re, c3, c, err)
		}
		f1, err1 := fp.Fingerprint(dedupe.Input{Data: data})
		f2, err2 := fp.Fingerprint(dedupe.Input{Data: re})
		if err1 != nil || err2 != nil || f1 != f2 {
			t.Fatalf("fingerprints differ: %s %s (%v %v)", f1, f2, err1, err2)
		}
	})
}
