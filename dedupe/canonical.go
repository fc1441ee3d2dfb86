package dedupe

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Canonicalize returns the canonical form of the JSON document data, so that
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
// sort by code point. Canonicalize rejects, with an error wrapping
// ErrNotJSON, what would make two different documents look equal or one
// document ambiguous: malformed JSON, trailing data, invalid UTF-8, duplicate
// member names, lone UTF-16 surrogates (\ud800), nesting deeper than 1000,
// and exponents beyond ±10^15. Canonicalize(Canonicalize(x)) equals
// Canonicalize(x).
func Canonicalize(data []byte) ([]byte, error) {
	root, err := parseJSON(data)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	buf.Grow(len(data))
	root.write(&buf)
	return buf.Bytes(), nil
}

type kind uint8

const (
	kindNull kind = iota
	kindBool
	kindNumber
	kindString
	kindArray
	kindObject
)

func (k kind) String() string {
	return [...]string{"null", "boolean", "number", "string", "array", "object"}[k]
}

// node is a parsed JSON value. Numbers keep their canonical text in str;
// object members are sorted by name.
type node struct {
	kind kind
	b    bool
	str  string
	arr  []*node
	obj  []member
}

type member struct {
	name string
	val  *node
}

const maxDepth = 1000

// maxExpDigits bounds the exponent literal (after leading zeros): 10^15 is
// far beyond any real number and keeps exponent arithmetic in int64.
const maxExpDigits = 15

type parser struct {
	data  []byte
	pos   int
	depth int
	// jcs parses numbers as IEEE 754 doubles and writes them as ECMAScript
	// does (RFC 8785) instead of as exact decimals.
	jcs bool
}

func parseJSON(data []byte) (*node, error) { return parseJSONMode(data, false) }

// parseJSONMode parses data; with jcs, numbers are read as RFC 8785 reads
// them (see CanonicalizeJCS).
func parseJSONMode(data []byte, jcs bool) (*node, error) {
	p := parser{data: data, jcs: jcs}
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

func (p *parser) fail(format string, args ...any) error {
	return fmt.Errorf("%w: offset %d: %s", ErrNotJSON, p.pos, fmt.Sprintf(format, args...))
}

func (p *parser) skipSpace() {
	for p.pos < len(p.data) {
		switch p.data[p.pos] {
		case ' ', '\t', '\n', '\r':
			p.pos++
		default:
			return
		}
	}
}

func (p *parser) value() (*node, error) {
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
		return &node{kind: kindString, str: s}, nil
	case c == '-' || (c >= '0' && c <= '9'):
		s, err := p.number()
		if err != nil {
			return nil, err
		}
		return &node{kind: kindNumber, str: s}, nil
	case c == 't':
		return p.literal("true", &node{kind: kindBool, b: true})
	case c == 'f':
		return p.literal("false", &node{kind: kindBool})
	case c == 'n':
		return p.literal("null", &node{kind: kindNull})
	default:
		return nil, p.fail("unexpected character %q", c)
	}
}

func (p *parser) literal(lit string, n *node) (*node, error) {
	if !bytes.HasPrefix(p.data[p.pos:], []byte(lit)) {
		return nil, p.fail("invalid literal")
	}
	p.pos += len(lit)
	return n, nil
}

func (p *parser) enter() error {
	p.depth++
	if p.depth > maxDepth {
		return p.fail("nesting deeper than %d", maxDepth)
	}
	return nil
}

func (p *parser) object() (*node, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	p.pos++ // {
	n := &node{kind: kindObject}
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
		n.obj = append(n.obj, member{name: name, val: v})
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
	sortMembers(n.obj)
	for i := 1; i < len(n.obj); i++ {
		if n.obj[i].name == n.obj[i-1].name {
			return nil, p.fail("duplicate member name %q", n.obj[i].name)
		}
	}
	p.depth--
	return n, nil
}

func (p *parser) array() (*node, error) {
	if err := p.enter(); err != nil {
		return nil, err
	}
	p.pos++ // [
	n := &node{kind: kindArray}
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
func (p *parser) string() (string, error) {
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

func (p *parser) hex4() (rune, error) {
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

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// number parses a JSON number at p.pos and returns its canonical text.
func (p *parser) number() (string, error) {
	begin := p.pos
	neg := false
	if p.data[p.pos] == '-' {
		neg = true
		p.pos++
	}
	start := p.pos
	if p.pos >= len(p.data) || !isDigit(p.data[p.pos]) {
		return "", p.fail("invalid number")
	}
	if p.data[p.pos] == '0' {
		p.pos++
	} else {
		for p.pos < len(p.data) && isDigit(p.data[p.pos]) {
			p.pos++
		}
	}
	intPart := p.data[start:p.pos]
	var frac []byte
	if p.pos < len(p.data) && p.data[p.pos] == '.' {
		p.pos++
		fs := p.pos
		for p.pos < len(p.data) && isDigit(p.data[p.pos]) {
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
		for p.pos < len(p.data) && isDigit(p.data[p.pos]) {
			p.pos++
		}
		if p.pos == es {
			return "", p.fail("invalid number: no digits in exponent")
		}
		ed := bytes.TrimLeft(p.data[es:p.pos], "0")
		if p.jcs {
			return p.jcsNumber(p.data[begin:p.pos])
		}
		if len(ed) > maxExpDigits {
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
	return canonicalNumber(neg, intPart, frac, exp), nil
}

// canonicalNumber formats the exact decimal (-1)^neg × intPart.frac × 10^exp.
func canonicalNumber(neg bool, intPart, frac []byte, exp int64) string {
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

func (n *node) write(b *bytes.Buffer) {
	switch n.kind {
	case kindNull:
		b.WriteString("null")
	case kindBool:
		if n.b {
			b.WriteString("true")
		} else {
			b.WriteString("false")
		}
	case kindNumber:
		b.WriteString(n.str)
	case kindString:
		writeString(b, n.str)
	case kindArray:
		b.WriteByte('[')
		for i, v := range n.arr {
			if i > 0 {
				b.WriteByte(',')
			}
			v.write(b)
		}
		b.WriteByte(']')
	case kindObject:
		b.WriteByte('{')
		for i, m := range n.obj {
			if i > 0 {
				b.WriteByte(',')
			}
			writeString(b, m.name)
			b.WriteByte(':')
			m.val.write(b)
		}
		b.WriteByte('}')
	}
}

func writeString(b *bytes.Buffer, s string) {
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

// child returns the member named seg of an object, or the element at index
// seg of an array, or nil.
func (n *node) child(seg string) *node {
	switch n.kind {
	case kindObject:
		if i, ok := n.memberIndex(seg); ok {
			return n.obj[i].val
		}
	case kindArray:
		if i, ok := arrayIndex(seg, len(n.arr)); ok {
			return n.arr[i]
		}
	}
	return nil
}

func (n *node) memberIndex(name string) (int, bool) {
	return slices.BinarySearchFunc(n.obj, name, func(m member, name string) int { return strings.Compare(m.name, name) })
}

// arrayIndex parses seg as a decimal index (no sign, no leading zeros)
// below length.
func arrayIndex(seg string, length int) (int, bool) {
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
func (n *node) lookup(segs []string) *node {
	for _, s := range segs {
		if n == nil {
			return nil
		}
		n = n.child(s)
	}
	return n
}

// remove deletes the value at the path, if present.
func (n *node) remove(segs []string) {
	if len(segs) == 0 {
		return
	}
	parent := n.lookup(segs[:len(segs)-1])
	if parent == nil {
		return
	}
	last := segs[len(segs)-1]
	switch parent.kind {
	case kindObject:
		if i, ok := parent.memberIndex(last); ok {
			parent.obj = slices.Delete(parent.obj, i, i+1)
		}
	case kindArray:
		if i, ok := arrayIndex(last, len(parent.arr)); ok {
			parent.arr = slices.Delete(parent.arr, i, i+1)
		}
	}
}

func sortMembers(m []member) {
	slices.SortFunc(m, func(a, b member) int { return strings.Compare(a.name, b.name) })
}
