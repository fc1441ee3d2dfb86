package dedupe

import (
	"bytes"
	"math"
	"strconv"
	"unicode/utf8"
)

// CanonicalMode chooses how a Fingerprinter puts a JSON payload into
// canonical form before hashing it.
type CanonicalMode uint8

const (
	// CanonicalExact, the zero value and the default, is Canonicalize:
	// numbers are kept as exact decimals (9007199254740993 and
	// 9007199254740992 differ, as do two amounts that a double cannot tell
	// apart) and member names sort by code point; the canonical form is
	// hashed inside idemq's own length-prefixed framing. It is the default
	// because it never confuses two different operations, and because every
	// fingerprint already stored was made with it: changing a Guard's mode
	// changes every fingerprint, so a redelivery of a message completed
	// before the change would be a Conflict.
	CanonicalExact CanonicalMode = iota
	// CanonicalJCS is RFC 8785, the JSON Canonicalization Scheme (see
	// CanonicalizeJCS), and the fingerprint is the plain SHA-256 (or
	// HMAC-SHA256) of the canonical bytes, with no framing, so that a
	// producer in any language with a JCS library computes the same
	// fingerprint (see Fingerprinter.Canonical for the exact bytes). Numbers
	// are IEEE 754 doubles, as in JavaScript: integers beyond 2^53 that
	// differ by less than a double's precision fingerprint alike.
	CanonicalJCS
)

// String returns "exact" or "jcs".
func (m CanonicalMode) String() string {
	switch m {
	case CanonicalExact:
		return "exact"
	case CanonicalJCS:
		return "jcs"
	}
	return "CanonicalMode(" + strconv.Itoa(int(m)) + ")"
}

// CanonicalizeJCS returns the RFC 8785 (JCS) canonical form of the JSON
// document data — what JavaScript's JSON.stringify writes for the parsed
// value with object members sorted:
//
//   - numbers are read as IEEE 754 doubles (rounding to nearest; a number
//     too small for a double reads as 0) and written as ECMAScript's
//     Number.prototype.toString writes them: the shortest digits that read
//     back as the same double, as an integer below 10^21 ("100",
//     "100000000000000000000"), as a plain decimal from 10^-6 on
//     ("0.000001", "4.5"), otherwise in exponent form ("1e+21", "1e-7",
//     "1.5e-300"); -0 is written 0;
//   - object members are sorted by the UTF-16 code units of their names
//     (so "\ud83d\ude00" sorts before "\ufb33", unlike in code point order);
//   - strings escape '"', '\\' and the control characters below U+0020
//     only (\b \t \n \f \r, the others as \u00xx in lower case); every
//     other character, escaped in the input or not, is written as UTF-8;
//   - no whitespace between tokens.
//
// CanonicalizeJCS rejects, with an error wrapping ErrNotJSON, what RFC 8785
// (through I-JSON, RFC 7493) excludes: malformed JSON, trailing data,
// invalid UTF-8, duplicate member names, lone UTF-16 surrogates, numbers
// beyond the range of a double (1e400), and nesting deeper than 1000.
// CanonicalizeJCS(CanonicalizeJCS(x)) equals CanonicalizeJCS(x). For
// documents whose numbers are integers of magnitude at most 2^53 (or have
// at most 15 significant digits) and whose member names hold no character
// from U+E000 up, it equals Canonicalize.
func CanonicalizeJCS(data []byte) ([]byte, error) {
	c := getCanon()
	defer putCanon(c)
	if !c.parse(data, true) {
		return nil, c.parseErr()
	}
	if c.identity {
		return bytes.Clone(data), nil
	}
	c.out = c.writeValue(c.out[:0], 0)
	return bytes.Clone(c.out), nil
}

// jcsNumber reads the JSON number literal lit (already validated) as a
// double and writes its ECMAScript serialisation into the arena.
func (c *canon) jcsNumber(lit []byte) (span, error) {
	f, err := strconv.ParseFloat(string(lit), 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return span{}, c.fail("number %s is beyond the range of an IEEE 754 double (RFC 8785)", lit)
	}
	off := len(c.arena)
	if f == 0 {
		c.arena = append(c.arena, '0')
		return span{off: off, n: 1, inArena: true}, nil
	}
	// The shortest round-trip digits, d.ddde±x; appendCanonicalNumber writes
	// them in ECMAScript's shape.
	e := strconv.AppendFloat(c.scratch[:0], math.Abs(f), 'e', -1, 64)
	c.scratch = e
	mant, exp, _ := bytes.Cut(e, []byte("e"))
	x, err := strconv.Atoi(string(exp))
	if err != nil {
		return span{}, c.fail("number %s: %v", lit, err)
	}
	digits := mant
	if len(mant) > 1 { // d.ddd: drop the point
		digits = append(mant[:1], mant[2:]...)
	}
	c.arena = appendCanonicalNumber(c.arena, f < 0, digits, int64(x-(len(digits)-1)))
	return span{off: off, n: len(c.arena) - off, inArena: true}, nil
}

// utf16Ordered reports whether name sorts alike in code point and in UTF-16
// order against any other name: the orders differ only for names holding a
// character from U+E000 up.
func utf16Ordered[S ~string | ~[]byte](name S) bool {
	for i := 0; i < len(name); i++ {
		if name[i] >= 0xEE { // lead byte of U+E000 and above
			return false
		}
	}
	return true
}

// compareUTF16 compares two valid UTF-8 strings by their UTF-16 code units.
func compareUTF16[S ~string | ~[]byte](a, b S) int {
	for len(a) > 0 && len(b) > 0 {
		ra, na := decodeRune(a)
		rb, nb := decodeRune(b)
		if ra != rb {
			return int(utf16Key(ra)) - int(utf16Key(rb))
		}
		a, b = a[na:], b[nb:]
	}
	// The shorter one is a prefix: it sorts first.
	return len(a) - len(b)
}

// decodeRune is utf8.DecodeRune for a string or a byte slice.
func decodeRune[S ~string | ~[]byte](s S) (rune, int) {
	if len(s) > 0 && s[0] < utf8.RuneSelf {
		return rune(s[0]), 1
	}
	var buf [utf8.UTFMax]byte
	return utf8.DecodeRune(buf[:copy(buf[:], s)])
}

// utf16Key maps a code point to a number ordered as its UTF-16 encoding:
// characters below U+E000 stay, supplementary characters (surrogate pairs,
// D800–DBFF first) come next, U+E000–U+FFFF last.
func utf16Key(r rune) rune {
	switch {
	case r < 0xE000:
		return r
	case r >= 0x10000:
		return r - 0x10000 + 0xD800
	default:
		return r - 0xE000 + 0xD800 + 0x100000
	}
}
