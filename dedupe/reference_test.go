package dedupe

// The implementation of Canonicalize, CanonicalizeJCS, Fingerprint,
// JSONFieldKey and Guard.Resolve before the single-pass rewrite, kept
// verbatim (names prefixed with ref) as the oracle the fast path must agree
// with byte for byte: fingerprints are persisted in stores.

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"math"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// refCanonicalize returns the canonical form of the JSON document data, so that
// documents that differ only in formatting have byte-identical canonical
// forms:
//
//   - object members sorted by name (byte order of the UTF-8 names, which is
//     Unicode code point order), no whitespace between tokens;
//   - strings re-escaped one way: only '"', '\\' and control characters are
//     escaped (\b \f \n \r \t, otherwise \u00xx in lower case); every other
//     character, escaped in the input or not, is written as UTF-8;
//   - numbers normalised as exact decimals, never through float64, so 100,
//     100.0, 1e2 and 1.00E+2 agree while 9007199254740993 and
//     9007199254740992 stay different. A number is written as an integer
//     when it is one below 10^21, as a plain decimal when its leading digit
//     is at most 6 places after the point, else in scientific notation
//     ("1.5e+21", "1e-7"); -0 is written 0.
//
// The shape follows RFC 8785 (JCS) except that numbers are exact and names
// sort by code point. refCanonicalize rejects, with an error wrapping
// ErrNotJSON, what would make two different documents look equal or one
// document ambiguous: malformed JSON, trailing data, invalid UTF-8, duplicate
// refMember names, lone UTF-16 surrogates (\ud800), nesting deeper than 1000,
// and exponents beyond ±10^15. refCanonicalize(refCanonicalize(x)) equals
// refCanonicalize(x).
func refCanonicalize(data []byte) ([]byte, error) {
	root, err := refParseJSON(data)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.Grow(len(data))
	root.write(&buf)
	return buf.Bytes(), nil
}

type refKind uint8

const (
	refKindNull refKind = iota
	refKindBool
	refKindNumber
	refKindString
	refKindArray
	refKindObject
)

func (k refKind) String() string {
	return [...]string{"null", "boolean", "number", "string", "array", "object"}[k]
}

// refNode is a parsed JSON value. Numbers keep their canonical text in str;
// object members are sorted by name.
type refNode struct {
	kind refKind
	b    bool
	str  string
	arr  []*refNode
	obj  []refMember
}

type refMember struct {
	name string
	val  *refNode
}

const refMaxDepth = 1000

// refMaxExpDigits bounds the exponent literal (after leading zeros): 10^15 is
// far beyond any real number and keeps exponent arithmetic in int64.
const refMaxExpDigits = 15

type refParser struct {
	data  []byte
	pos   int
	depth int
	// jcs parses numbers as IEEE 754 doubles and writes them as ECMAScript
	// does (RFC 8785) instead of as exact decimals.
	jcs bool
}

func refParseJSON(data []byte) (*refNode, error) { return refParseJSONMode(data, false) }

// refParseJSONMode parses data; with jcs, numbers are read as RFC 8785 reads
// them (see refCanonicalizeJCS).
func refParseJSONMode(data []byte, jcs bool) (*refNode, error) {
	p := refParser{data: data, jcs: jcs}
	p.skipSpace()
	n, err := p.value()
	if err != nil {
		return nil, err
	}
	p.skipSpace()
	if p.pos != len(p.data) {
		return nil, p.fail("data after the JSON value")
	}
	return n, nil
}

func (p *refParser) fail(format string, args ...any) error {
	return fmt.Errorf("%w: offset %d: %s", ErrNotJSON, p.pos, fmt.Sprintf(format, args...))
}

func (p *refParser) skipSpace() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *refParser) value() (*refNode, error) {
	if p.pos >= len(p.data) {
		return nil, p.fail("unexpected end of input")
	}
	switch c := p.data[p.pos]; {
	case c == '{':
		return p.object()
	case c == '[':
		return p.array()
	case c == '"':
		s, err := p.string()
		if err != nil {
			return nil, err
		}
		return &refNode{kind: refKindString, str: s}, nil
	case c == '-' || (c >= '0' && c <= '9'):
		s, err := p.number()
		if err != nil {
			return nil, err
		}
		return &refNode{kind: refKindNumber, str: s}, nil
	case c == 't':
		return p.literal("true", &refNode{kind: refKindBool, b: true})
	case c == 'f':
		return p.literal("false", &refNode{kind: refKindBool})
	case c == 'n':
		return p.literal("null", &refNode{kind: refKindNull})
	default:
		return nil, p.fail("unexpected character %q", c)
	}
}

func (p *refParser) literal(lit string, n *refNode) (*refNode, error) {
	if !bytes.HasPrefix(p.data[p.pos:], []byte(lit)) {
		return nil, p.fail("invalid literal")
	}
	p.pos += len(lit)
	return n, nil
}

func (p *refParser) enter() error {
	p.depth++
	if p.depth > refMaxDepth {
		return p.fail("nesting deeper than %d", refMaxDepth)
	}
	return nil
}

func (p *refParser) object() (*refNode, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	p.pos++ // {
	n := &refNode{kind: refKindObject}
	p.skipSpace()
	if p.pos < len(p.data) && p.data[p.pos] == '}' {
		p.pos++
		p.depth--
		return n, nil
	}
	for {
		p.skipSpace()
		if p.pos >= len(p.data) || p.data[p.pos] != '"' {
			return nil, p.fail("expected a member name")
		}
		name, err := p.string()
		if err != nil {
			return nil, err
		}
		p.skipSpace()
		if p.pos >= len(p.data) || p.data[p.pos] != ':' {
			return nil, p.fail("expected ':'")
		}
		p.pos++
		p.skipSpace()
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		n.obj = append(n.obj, refMember{name: name, val: v})
		p.skipSpace()
		if p.pos >= len(p.data) {
			return nil, p.fail("unterminated object")
		}
		if p.data[p.pos] == ',' {
			p.pos++
			continue
		}
		if p.data[p.pos] != '}' {
			return nil, p.fail("expected ',' or '}'")
		}
		p.pos++
		break
	}
	refSortMembers(n.obj)
	for i := 1; i < len(n.obj); i++ {
		if n.obj[i].name == n.obj[i-1].name {
			return nil, p.fail("duplicate member name %q", n.obj[i].name)
		}
	}
	p.depth--
	return n, nil
}

func (p *refParser) array() (*refNode, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	p.pos++ // [
	n := &refNode{kind: refKindArray}
	p.skipSpace()
	if p.pos < len(p.data) && p.data[p.pos] == ']' {
		p.pos++
		p.depth--
		return n, nil
	}
	for {
		p.skipSpace()
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		n.arr = append(n.arr, v)
		p.skipSpace()
		if p.pos >= len(p.data) {
			return nil, p.fail("unterminated array")
		}
		if p.data[p.pos] == ',' {
			p.pos++
			continue
		}
		if p.data[p.pos] != ']' {
			return nil, p.fail("expected ',' or ']'")
		}
		p.pos++
		break
	}
	p.depth--
	return n, nil
}

// string parses a JSON string at p.pos (the opening quote) and returns its
// value, which is always valid UTF-8.
func (p *refParser) string() (string, error) {
	p.pos++ // "
	start := p.pos
	// Fast path: no escapes.
	for p.pos < len(p.data) {
		c := p.data[p.pos]
		if c == '"' {
			s := p.data[start:p.pos]
			if !utf8.Valid(s) {
				return "", p.fail("invalid UTF-8 in string")
			}
			p.pos++
			return string(s), nil
		}
		if c == '\\' || c < 0x20 {
			break
		}
		p.pos++
	}
	var b strings.Builder
	b.Write(p.data[start:p.pos])
	for {
		if p.pos >= len(p.data) {
			return "", p.fail("unterminated string")
		}
		c := p.data[p.pos]
		switch {
		case c == '"':
			p.pos++
			s := b.String()
			if !utf8.ValidString(s) {
				return "", p.fail("invalid UTF-8 in string")
			}
			return s, nil
		case c < 0x20:
			return "", p.fail("control character in string")
		case c != '\\':
			b.WriteByte(c)
			p.pos++
			continue
		}
		p.pos++ // backslash
		if p.pos >= len(p.data) {
			return "", p.fail("unterminated escape")
		}
		e := p.data[p.pos]
		p.pos++
		switch e {
		case '"', '\\', '/':
			b.WriteByte(e)
		case 'b':
			b.WriteByte('\b')
		case 'f':
			b.WriteByte('\f')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'u':
			r, err := p.hex4()
			if err != nil {
				return "", err
			}
			switch {
			case utf16.IsSurrogate(r) && r < 0xDC00:
				if p.pos+1 >= len(p.data) || p.data[p.pos] != '\\' || p.data[p.pos+1] != 'u' {
					return "", p.fail("lone surrogate \\u%04x", r)
				}
				p.pos += 2
				lo, err := p.hex4()
				if err != nil {
					return "", err
				}
				if lo < 0xDC00 || lo > 0xDFFF {
					return "", p.fail("lone surrogate \\u%04x", r)
				}
				r = utf16.DecodeRune(r, lo)
			case utf16.IsSurrogate(r):
				return "", p.fail("lone surrogate \\u%04x", r)
			}
			b.WriteRune(r)
		default:
			return "", p.fail("invalid escape \\%c", e)
		}
	}
}

func (p *refParser) hex4() (rune, error) {
	if p.pos+4 > len(p.data) {
		return 0, p.fail("short \\u escape")
	}
	var r rune
	for _, c := range p.data[p.pos : p.pos+4] {
		r <<= 4
		switch {
		case c >= '0' && c <= '9':
			r |= rune(c - '0')
		case c >= 'a' && c <= 'f':
			r |= rune(c - 'a' + 10)
		case c >= 'A' && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, p.fail("invalid \\u escape")
		}
	}
	p.pos += 4
	return r, nil
}

func refIsDigit(c byte) bool { return c >= '0' && c <= '9' }

// number parses a JSON number at p.pos and returns its canonical text.
func (p *refParser) number() (string, error) {
	begin := p.pos
	neg := false
	if p.data[p.pos] == '-' {
		neg = true
		p.pos++
	}
	start := p.pos
	if p.pos >= len(p.data) || !refIsDigit(p.data[p.pos]) {
		return "", p.fail("invalid number")
	}
	if p.data[p.pos] == '0' {
		p.pos++
	} else {
		for p.pos < len(p.data) && refIsDigit(p.data[p.pos]) {
			p.pos++
		}
	}
	intPart := p.data[start:p.pos]
	var frac []byte
	if p.pos < len(p.data) && p.data[p.pos] == '.' {
		p.pos++
		fs := p.pos
		for p.pos < len(p.data) && refIsDigit(p.data[p.pos]) {
			p.pos++
		}
		if p.pos == fs {
			return "", p.fail("invalid number: no digits after '.'")
		}
		frac = p.data[fs:p.pos]
	}
	var exp int64
	if p.pos < len(p.data) && (p.data[p.pos] == 'e' || p.data[p.pos] == 'E') {
		p.pos++
		expNeg := false
		if p.pos < len(p.data) && (p.data[p.pos] == '+' || p.data[p.pos] == '-') {
			expNeg = p.data[p.pos] == '-'
			p.pos++
		}
		es := p.pos
		for p.pos < len(p.data) && refIsDigit(p.data[p.pos]) {
			p.pos++
		}
		if p.pos == es {
			return "", p.fail("invalid number: no digits in exponent")
		}
		ed := bytes.TrimLeft(p.data[es:p.pos], "0")
		if p.jcs {
			return p.jcsNumber(p.data[begin:p.pos])
		}
		if len(ed) > refMaxExpDigits {
			return "", p.fail("exponent out of range")
		}
		for _, c := range ed {
			exp = exp*10 + int64(c-'0')
		}
		if expNeg {
			exp = -exp
		}
	}
	if p.jcs {
		return p.jcsNumber(p.data[begin:p.pos])
	}
	return refCanonicalNumber(neg, intPart, frac, exp), nil
}

// refCanonicalNumber formats the exact decimal (-1)^neg × intPart.frac × 10^exp.
func refCanonicalNumber(neg bool, intPart, frac []byte, exp int64) string {
	digits := make([]byte, 0, len(intPart)+len(frac))
	digits = append(digits, intPart...)
	digits = append(digits, frac...)
	exp -= int64(len(frac))
	digits = bytes.TrimLeft(digits, "0")
	if len(digits) == 0 {
		return "0"
	}
	for digits[len(digits)-1] == '0' {
		digits = digits[:len(digits)-1]
		exp++
	}
	// value = digits × 10^exp; adj is the power of ten of the leading digit.
	n := int64(len(digits))
	adj := exp + n - 1
	var b strings.Builder
	if neg {
		b.WriteByte('-')
	}
	switch {
	case exp >= 0 && adj < 21:
		b.Write(digits)
		for range exp {
			b.WriteByte('0')
		}
	case exp < 0 && adj >= 0:
		b.Write(digits[:n+exp])
		b.WriteByte('.')
		b.Write(digits[n+exp:])
	case exp < 0 && adj >= -6:
		b.WriteString("0.")
		for range -adj - 1 {
			b.WriteByte('0')
		}
		b.Write(digits)
	default:
		b.WriteByte(digits[0])
		if n > 1 {
			b.WriteByte('.')
			b.Write(digits[1:])
		}
		b.WriteByte('e')
		if adj >= 0 {
			b.WriteByte('+')
		}
		b.WriteString(strconv.FormatInt(adj, 10))
	}
	return b.String()
}

func (n *refNode) write(b *bytes.Buffer) {
	switch n.kind {
	case refKindNull:
		b.WriteString("null")
	case refKindBool:
		if n.b {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case refKindNumber:
		b.WriteString(n.str)
	case refKindString:
		refWriteString(b, n.str)
	case refKindArray:
		b.WriteByte('[')
		for i, v := range n.arr {
			if i > 0 {
				b.WriteByte(',')
			}
			v.write(b)
		}
		b.WriteByte(']')
	case refKindObject:
		b.WriteByte('{')
		for i, m := range n.obj {
			if i > 0 {
				b.WriteByte(',')
			}
			refWriteString(b, m.name)
			b.WriteByte(':')
			m.val.write(b)
		}
		b.WriteByte('}')
	}
}

func refWriteString(b *bytes.Buffer, s string) {
	const hexDigits = "0123456789abcdef"
	b.WriteByte('"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '"':
			b.WriteString(`\"`)
		case c == '\\':
			b.WriteString(`\\`)
		case c == '\b':
			b.WriteString(`\b`)
		case c == '\f':
			b.WriteString(`\f`)
		case c == '\n':
			b.WriteString(`\n`)
		case c == '\r':
			b.WriteString(`\r`)
		case c == '\t':
			b.WriteString(`\t`)
		case c < 0x20:
			b.WriteString(`\u00`)
			b.WriteByte(hexDigits[c>>4])
			b.WriteByte(hexDigits[c&0xF])
		default:
			b.WriteByte(c)
		}
	}
	b.WriteByte('"')
}

// child returns the refMember named seg of an object, or the element at index
// seg of an array, or nil.
func (n *refNode) child(seg string) *refNode {
	switch n.kind {
	case refKindObject:
		if i, ok := n.memberIndex(seg); ok {
			return n.obj[i].val
		}
	case refKindArray:
		if i, ok := refArrayIndex(seg, len(n.arr)); ok {
			return n.arr[i]
		}
	}
	return nil
}

func (n *refNode) memberIndex(name string) (int, bool) {
	return slices.BinarySearchFunc(n.obj, name, func(m refMember, name string) int { return strings.Compare(m.name, name) })
}

// refArrayIndex parses seg as a decimal index (no sign, no leading zeros)
// below length.
func refArrayIndex(seg string, length int) (int, bool) {
	if seg == "" || (len(seg) > 1 && seg[0] == '0') {
		return 0, false
	}
	i, err := strconv.Atoi(seg)
	if err != nil || i < 0 || i >= length || seg[0] == '+' {
		return 0, false
	}
	return i, true
}

// lookup follows a dotted path split into segments; nil when absent.
func (n *refNode) lookup(segs []string) *refNode {
	for _, s := range segs {
		if n == nil {
			return nil
		}
		n = n.child(s)
	}
	return n
}

// remove deletes the value at the path, if present.
func (n *refNode) remove(segs []string) {
	if len(segs) == 0 {
		return
	}
	parent := n.lookup(segs[:len(segs)-1])
	if parent == nil {
		return
	}
	last := segs[len(segs)-1]
	switch parent.kind {
	case refKindObject:
		if i, ok := parent.memberIndex(last); ok {
			parent.obj = slices.Delete(parent.obj, i, i+1)
		}
	case refKindArray:
		if i, ok := refArrayIndex(last, len(parent.arr)); ok {
			parent.arr = slices.Delete(parent.arr, i, i+1)
		}
	}
}

func refSortMembers(m []refMember) {
	slices.SortFunc(m, func(a, b refMember) int { return strings.Compare(a.name, b.name) })
}

// refCanonicalizeJCS returns the RFC 8785 (JCS) canonical form of the JSON
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
// refCanonicalizeJCS rejects, with an error wrapping ErrNotJSON, what RFC 8785
// (through I-JSON, RFC 7493) excludes: malformed JSON, trailing data,
// invalid UTF-8, duplicate refMember names, lone UTF-16 surrogates, numbers
// beyond the range of a double (1e400), and nesting deeper than 1000.
// refCanonicalizeJCS(refCanonicalizeJCS(x)) equals refCanonicalizeJCS(x). For
// documents whose numbers are integers of magnitude at most 2^53 (or have
// at most 15 significant digits) and whose refMember names hold no character
// from U+E000 up, it equals refCanonicalize.
func refCanonicalizeJCS(data []byte) ([]byte, error) {
	root, err := refParseJSONMode(data, true)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.Grow(len(data))
	root.writeJCS(&buf)
	return buf.Bytes(), nil
}

// jcsNumber reads the JSON number literal lit (already validated) as a
// double and returns its ECMAScript serialisation.
func (p *refParser) jcsNumber(lit []byte) (string, error) {
	f, err := strconv.ParseFloat(string(lit), 64)
	if err != nil || math.IsInf(f, 0) || math.IsNaN(f) {
		return "", p.fail("number %s is beyond the range of an IEEE 754 double (RFC 8785)", lit)
	}
	if f == 0 {
		return "0", nil
	}
	// The shortest round-trip digits, d.ddde±x; refCanonicalNumber writes them
	// in ECMAScript's shape.
	e := strconv.AppendFloat(nil, math.Abs(f), 'e', -1, 64)
	mant, exp, _ := bytes.Cut(e, []byte("e"))
	x, err := strconv.Atoi(string(exp))
	if err != nil {
		return "", p.fail("number %s: %v", lit, err)
	}
	digits := bytes.Replace(mant, []byte("."), nil, 1)
	return refCanonicalNumber(f < 0, digits, nil, int64(x-(len(digits)-1))), nil
}

// writeJCS writes n as RFC 8785 does: as write, with object members in
// UTF-16 order.
func (n *refNode) writeJCS(b *bytes.Buffer) {
	switch n.kind {
	case refKindArray:
		b.WriteByte('[')
		for i, v := range n.arr {
			if i > 0 {
				b.WriteByte(',')
			}
			v.writeJCS(b)
		}
		b.WriteByte(']')
	case refKindObject:
		members := n.obj
		if !refUTF16Sorted(members) {
			members = slices.Clone(members)
			slices.SortFunc(members, func(a, b refMember) int { return refCompareUTF16(a.name, b.name) })
		}
		b.WriteByte('{')
		for i, m := range members {
			if i > 0 {
				b.WriteByte(',')
			}
			refWriteString(b, m.name)
			b.WriteByte(':')
			m.val.writeJCS(b)
		}
		b.WriteByte('}')
	default:
		n.write(b)
	}
}

// refUTF16Sorted reports whether members, sorted by code point, are in UTF-16
// order too: the orders differ only for names holding a character from
// U+E000 up.
func refUTF16Sorted(members []refMember) bool {
	for _, m := range members {
		for i := 0; i < len(m.name); i++ {
			if m.name[i] >= 0xEE { // lead byte of U+E000 and above
				return false
			}
		}
	}
	return true
}

// refCompareUTF16 compares two valid UTF-8 strings by their UTF-16 code units.
func refCompareUTF16(a, b string) int {
	for a != "" && b != "" {
		ra, na := utf8.DecodeRuneInString(a)
		rb, nb := utf8.DecodeRuneInString(b)
		if ra != rb {
			return int(refUTF16Key(ra)) - int(refUTF16Key(rb))
		}
		a, b = a[na:], b[nb:]
	}
	return strings.Compare(a, b) // the shorter one is a prefix: it sorts first
}

// refUTF16Key maps a code point to a number ordered as its UTF-16 encoding:
// characters below U+E000 stay, supplementary characters (surrogate pairs,
// D800–DBFF first) come next, U+E000–U+FFFF last.
func refUTF16Key(r rune) rune {
	switch {
	case r < 0xE000:
		return r
	case r >= 0x10000:
		return r - 0x10000 + 0xD800
	default:
		return r - 0xE000 + 0xD800 + 0x100000
	}
}

// Fingerprint returns the fingerprint of in as 64 lower-case hex digits.
// Its only error is a payload that is not JSON while Include or Exclude is
// set (wrapping ErrNotJSON; IsInvalidInput reports true).
func refFingerprint(f *Fingerprinter, in Input) (string, error) {
	var cfg Fingerprinter
	if f != nil {
		cfg = *f
	}
	selects := len(cfg.Include) > 0 || len(cfg.Exclude) > 0
	if cfg.Canonical == CanonicalJCS {
		return refFingerprintJCS(&cfg, in, selects)
	}
	var h hash.Hash
	if len(cfg.HMACKey) > 0 {
		h = hmac.New(sha256.New, cfg.HMACKey)
	} else {
		h = sha256.New()
	}
	refWriteField(h, []byte(fingerprintVersion))
	root, err := refParseJSON(in.Data)
	switch {
	case err == nil:
		root = refSelectFields(&cfg, root)
		var buf bytes.Buffer
		root.write(&buf)
		refWriteField(h, []byte("json"))
		refWriteField(h, buf.Bytes())
	case selects:
		return "", fmt.Errorf("%w (Include and Exclude need a JSON payload)", err)
	default:
		refWriteField(h, []byte("raw"))
		refWriteField(h, in.Data)
	}
	refWriteCount(h, len(cfg.Headers))
	for _, name := range cfg.Headers {
		refWriteField(h, []byte(strings.ToLower(name)))
		vals := in.Values(name)
		refWriteCount(h, len(vals))
		for _, v := range vals {
			refWriteField(h, []byte(v))
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// fingerprintJCS is Fingerprint with Canonical CanonicalJCS.
func refFingerprintJCS(f *Fingerprinter, in Input, selects bool) (string, error) {
	var h hash.Hash
	if len(f.HMACKey) > 0 {
		h = hmac.New(sha256.New, f.HMACKey)
	} else {
		h = sha256.New()
	}
	root, err := refParseJSONMode(in.Data, true)
	if err != nil && selects {
		return "", fmt.Errorf("%w (Include and Exclude need a JSON payload)", err)
	}
	if err == nil {
		root = refSelectFields(f, root)
	}
	if len(f.Headers) == 0 {
		if err != nil {
			h.Write(in.Data)
		} else {
			var buf bytes.Buffer
			root.writeJCS(&buf)
			h.Write(buf.Bytes())
		}
		return hex.EncodeToString(h.Sum(nil)), nil
	}
	headers := &refNode{kind: refKindObject}
	seen := make(map[string]bool, len(f.Headers))
	for _, name := range f.Headers {
		lower := strings.ToLower(name)
		if seen[lower] {
			continue
		}
		seen[lower] = true
		vals := &refNode{kind: refKindArray, arr: []*refNode{}}
		for _, v := range in.Values(name) {
			vals.arr = append(vals.arr, &refNode{kind: refKindString, str: strings.ToValidUTF8(v, "\uFFFD")})
		}
		headers.obj = append(headers.obj, refMember{name: strings.ToValidUTF8(lower, "\uFFFD"), val: vals})
	}
	refSortMembers(headers.obj)
	doc := &refNode{kind: refKindObject, obj: []refMember{{name: "headers", val: headers}}}
	if err != nil {
		doc.obj = append(doc.obj, refMember{name: "raw", val: &refNode{kind: refKindString, str: base64.StdEncoding.EncodeToString(in.Data)}})
	} else {
		doc.obj = append(doc.obj, refMember{name: "payload", val: root})
	}
	var buf bytes.Buffer
	doc.writeJCS(&buf)
	h.Write(buf.Bytes())
	return hex.EncodeToString(h.Sum(nil)), nil
}

// selectFields applies Exclude, then Include. With Include the result is an
// object mapping each present included path to its value.
func refSelectFields(f *Fingerprinter, root *refNode) *refNode {
	for _, p := range f.Exclude {
		root.remove(refSplitPath(p))
	}
	if len(f.Include) == 0 {
		return root
	}
	sel := &refNode{kind: refKindObject}
	seen := make(map[string]bool, len(f.Include))
	for _, p := range f.Include {
		if seen[p] {
			continue
		}
		seen[p] = true
		if v := root.lookup(refSplitPath(p)); v != nil {
			sel.obj = append(sel.obj, refMember{name: p, val: v})
		}
	}
	refSortMembers(sel.obj)
	return sel
}

// refWriteField writes a length-prefixed field, so that field boundaries are
// unambiguous.
func refWriteField(h hash.Hash, b []byte) {
	refWriteCount(h, len(b))
	h.Write(b)
}

func refWriteCount(h hash.Hash, n int) {
	var buf [binary.MaxVarintLen64]byte
	h.Write(buf[:binary.PutUvarint(buf[:], uint64(n))])
}

// refJSONFieldKey is JSONFieldKey(path).Key(in) as it was.
func refJSONFieldKey(path string, in Input) (string, error) {
	src := "json field " + path
	root, err := refParseJSON(in.Data)
	if err != nil {
		return "", &KeyError{Source: src, Err: err}
	}
	n := root.lookup(refSplitPath(path))
	if n == nil || n.kind == refKindNull {
		return "", &KeyError{Source: src, Err: ErrMissingKey}
	}
	var v string
	switch n.kind {
	case refKindString, refKindNumber:
		v = n.str
	default:
		return "", &KeyError{Source: src, Err: fmt.Errorf("%w: the field is a JSON %s, not a string or number", ErrInvalidKey, n.kind)}
	}
	if v == "" {
		return "", &KeyError{Source: src, Err: ErrMissingKey}
	}
	if err := CheckKey(v); err != nil {
		return "", &KeyError{Source: src, Err: err}
	}
	return v, nil
}

// refKey is g.Key.Key(in) with the reference JSONFieldKey.
func refKey(ks KeySource, in Input) (string, error) {
	switch k := ks.(type) {
	case jsonFieldKey:
		return refJSONFieldKey(k.path, in)
	case firstKey:
		var missing []string
		for _, src := range k {
			key, err := refKey(src, in)
			if err == nil {
				return key, nil
			}
			if !errors.Is(err, ErrMissingKey) {
				return "", err
			}
			missing = append(missing, err.Error())
		}
		return "", &KeyError{Source: "any of: " + strings.Join(missing, "; "), Err: ErrMissingKey}
	}
	return ks.Key(in)
}

// refResolve is Guard.Resolve as it was.
func refResolve(g *Guard, in Input) (key, fingerprint string, err error) {
	if !g.NoFingerprint {
		if fingerprint, err = refFingerprint(g.Fingerprint, in); err != nil {
			return "", "", err
		}
	}
	var raw string
	if g.Key != nil {
		raw, err = refKey(g.Key, in)
		if err == nil {
			if cerr := CheckKey(raw); cerr != nil {
				err = &KeyError{Source: "Guard.Key", Err: cerr}
			}
		}
		if err != nil && !(g.FallbackToFingerprint && isMissing(err)) {
			return "", "", err
		}
	}
	if g.Key == nil || err != nil {
		fp := fingerprint
		if g.NoFingerprint {
			if fp, err = refFingerprint(g.Fingerprint, in); err != nil {
				return "", "", err
			}
		}
		raw = "fp:" + fp
	}
	key, err = refStoreKey(g, raw)
	return key, fingerprint, err
}

// refStoreKey is Guard.StoreKey as it was.
func refStoreKey(g *Guard, raw string) (string, error) {
	if err := CheckKey(raw); err != nil {
		return "", &KeyError{Source: "key", Err: err}
	}
	prefix := ""
	if g.Namespace != "" {
		prefix = g.Namespace + ":"
	}
	limit := g.maxKeyLen()
	if len(prefix)+len(raw) <= limit && !strings.HasPrefix(raw, "sha256:") {
		return prefix + raw, nil
	}
	key := prefix + refHashKey(raw)
	if len(key) > limit {
		key = refHashKey(prefix + raw)
	}
	return key, nil
}

func refHashKey(s string) string {
	sum := sha256.Sum256([]byte(s))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func refSplitPath(path string) []string {
	if path == "" {
		return nil
	}
	return strings.Split(path, ".")
}
