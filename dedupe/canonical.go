package dedupe

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
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
	c := getCanon()
	defer putCanon(c)
	if !c.parse(data, false) {
		return nil, c.parseErr()
	}
	if c.identity {
		return bytes.Clone(data), nil
	}
	c.out = c.writeValue(c.out[:0], 0)
	return bytes.Clone(c.out), nil
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

// span locates the text of a string or number: in the input, or in the
// canon's arena when it differs from the input (a string with escapes, in
// decoded form; a number whose canonical text is not its literal).
type span struct {
	off, n  int
	inArena bool
	// ascii reports that the text is all ASCII.
	ascii bool
}

// val is one value of the parsed document, in document order (a value's
// children follow it).
type val struct {
	kind kind
	// truth is a boolean's value.
	truth bool
	// deleted marks a value removed by Fingerprinter.Exclude.
	deleted bool
	// text is a string's decoded value or a number's canonical text.
	text span
	// first and count are an object's members: members[first:first+count],
	// sorted by name (in UTF-16 order in JCS mode); count is also an
	// array's number of elements.
	first, count int
	// end is the index in vals after this value and its children.
	end int
}

// member is an object member: its decoded name and the index of its value.
type member struct {
	name span
	// prefix is the first 8 bytes of the name, big-endian, zero-padded: it
	// orders most names without comparing them.
	prefix uint64
	val    int
}

const maxDepth = 1000

// maxExpDigits bounds the exponent literal (after leading zeros): 10^15 is
// far beyond any real number and keeps exponent arithmetic in int64.
const maxExpDigits = 15

// canon parses a JSON document in one pass into a flat list of values
// (no tree of allocated nodes), sorting each object's members as it closes,
// and writes the canonical form from that list. Canons are pooled: its
// slices are reused from one document to the next.
type canon struct {
	data  []byte
	pos   int
	depth int
	// jcs parses numbers as IEEE 754 doubles and writes them as ECMAScript
	// does (RFC 8785) instead of as exact decimals, and sorts members in
	// UTF-16 order.
	jcs bool
	// identity reports that the document is its own canonical form: no
	// whitespace, members in order, no escapes, numbers in canonical form.
	identity bool

	vals    []val
	members []member // each object's members, contiguous and sorted
	stack   []member // the members of the objects being parsed
	arena   []byte
	scratch []byte
	out     []byte

	// The first syntax error, formatted only when asked for (parseErr), so
	// that a payload that is not JSON costs no formatting when it is
	// hashed raw.
	errPos    int
	errFormat string
	errArgs   []any
}

var canonPool = sync.Pool{New: func() any { return new(canon) }}

// maxPooledBytes and maxPooledVals bound what a pooled canon keeps, so that
// one huge document does not pin its buffers.
const (
	maxPooledBytes = 64 << 10
	maxPooledVals  = 4 << 10
)

func getCanon() *canon { return canonPool.Get().(*canon) }

func putCanon(c *canon) {
	if cap(c.out) > maxPooledBytes || cap(c.arena) > maxPooledBytes || cap(c.scratch) > maxPooledBytes ||
		cap(c.vals) > maxPooledVals || cap(c.members) > maxPooledVals || cap(c.stack) > maxPooledVals {
		return
	}
	c.data, c.errArgs = nil, nil
	canonPool.Put(c)
}

// errSyntax is what the parsing methods return; parseErr formats the real
// error.
var errSyntax = errors.New("syntax error")

// parse parses data (jcs: as RFC 8785 reads it) into c.vals, the root at
// index 0. It reports false on a syntax error, which parseErr describes.
func (c *canon) parse(data []byte, jcs bool) bool {
	c.data, c.pos, c.depth, c.jcs, c.identity = data, 0, 0, jcs, true
	c.vals, c.members, c.stack, c.arena = c.vals[:0], c.members[:0], c.stack[:0], c.arena[:0]
	c.errFormat, c.errArgs = "", nil
	c.skipSpace()
	if c.value() != nil {
		return false
	}
	c.skipSpace()
	if c.pos != len(c.data) {
		c.fail("data after the JSON value")
		return false
	}
	return true
}

// parseErr returns the error of the failed parse, wrapping ErrNotJSON.
func (c *canon) parseErr() error {
	return fmt.Errorf("%w: offset %d: %s", ErrNotJSON, c.errPos, fmt.Sprintf(c.errFormat, c.errArgs...))
}

func (c *canon) fail(format string, args ...any) error {
	c.errPos, c.errFormat, c.errArgs = c.pos, format, args
	return errSyntax
}

func (c *canon) skipSpace() {
	start := c.pos
	for c.pos < len(c.data) {
		switch c.data[c.pos] {
		case ' ', '\t', '\n', '\r':
			c.pos++
		default:
			if c.pos != start {
				c.identity = false
			}
			return
		}
	}
	if c.pos != start {
		c.identity = false
	}
}

func (c *canon) value() error {
	if c.pos >= len(c.data) {
		return c.fail("unexpected end of input")
	}
	switch ch := c.data[c.pos]; {
	case ch == '{':
		return c.object()
	case ch == '[':
		return c.array()
	case ch == '"':
		t, err := c.string()
		if err != nil {
			return err
		}
		c.vals = append(c.vals, val{kind: kindString, text: t, end: len(c.vals) + 1})
	case ch == '-' || (ch >= '0' && ch <= '9'):
		t, err := c.number()
		if err != nil {
			return err
		}
		c.vals = append(c.vals, val{kind: kindNumber, text: t, end: len(c.vals) + 1})
	case ch == 't':
		return c.literal("true", val{kind: kindBool, truth: true})
	case ch == 'f':
		return c.literal("false", val{kind: kindBool})
	case ch == 'n':
		return c.literal("null", val{kind: kindNull})
	default:
		return c.fail("unexpected character %q", ch)
	}
	return nil
}

func (c *canon) literal(lit string, v val) error {
	if !bytes.HasPrefix(c.data[c.pos:], []byte(lit)) {
		return c.fail("invalid literal")
	}
	c.pos += len(lit)
	v.end = len(c.vals) + 1
	c.vals = append(c.vals, v)
	return nil
}

func (c *canon) enter() error {
	c.depth++
	if c.depth > maxDepth {
		return c.fail("nesting deeper than %d", maxDepth)
	}
	return nil
}

// text returns the bytes s locates.
func (c *canon) text(s span) []byte {
	if s.inArena {
		return c.arena[s.off : s.off+s.n]
	}
	return c.data[s.off : s.off+s.n]
}

func (c *canon) object() error {
	if err := c.enter(); err != nil {
		return err
	}
	c.pos++ // {
	obj := len(c.vals)
	c.vals = append(c.vals, val{kind: kindObject})
	base := len(c.stack)
	c.skipSpace()
	if c.pos < len(c.data) && c.data[c.pos] == '}' {
		c.pos++
		c.depth--
		c.vals[obj].first, c.vals[obj].end = len(c.members), len(c.vals)
		return nil
	}
	for {
		c.skipSpace()
		if c.pos >= len(c.data) || c.data[c.pos] != '"' {
			return c.fail("expected a member name")
		}
		name, err := c.string()
		if err != nil {
			return err
		}
		c.skipSpace()
		if c.pos >= len(c.data) || c.data[c.pos] != ':' {
			return c.fail("expected ':'")
		}
		c.pos++
		c.skipSpace()
		v := len(c.vals)
		if err := c.value(); err != nil {
			return err
		}
		c.stack = append(c.stack, member{name: name, prefix: c.namePrefix(name), val: v})
		c.skipSpace()
		if c.pos >= len(c.data) {
			return c.fail("unterminated object")
		}
		if c.data[c.pos] == ',' {
			c.pos++
			continue
		}
		if c.data[c.pos] != '}' {
			return c.fail("expected ',' or '}'")
		}
		c.pos++
		break
	}
	ms := c.stack[base:]
	if err := c.sortMembers(ms); err != nil {
		return err
	}
	c.depth--
	c.vals[obj].first, c.vals[obj].count, c.vals[obj].end = len(c.members), len(ms), len(c.vals)
	c.members = append(c.members, ms...)
	c.stack = c.stack[:base]
	return nil
}

// sortMembers sorts an object's members by name (code point order), fails
// on a duplicate name, and in JCS mode puts them in UTF-16 order.
func (c *canon) sortMembers(ms []member) error {
	sorted := true
	for i := 1; i < len(ms); i++ {
		if c.compareNames(&ms[i-1], &ms[i]) >= 0 {
			sorted = false
			break
		}
	}
	if !sorted {
		c.identity = false
		if len(ms) <= 12 {
			for i := 1; i < len(ms); i++ {
				for j := i; j > 0 && c.compareNames(&ms[j-1], &ms[j]) > 0; j-- {
					ms[j-1], ms[j] = ms[j], ms[j-1]
				}
			}
		} else {
			slices.SortFunc(ms, func(a, b member) int { return c.compareNames(&a, &b) })
		}
		for i := 1; i < len(ms); i++ {
			if c.compareNames(&ms[i-1], &ms[i]) == 0 {
				return c.fail("duplicate member name %q", string(c.text(ms[i].name)))
			}
		}
	}
	if c.jcs {
		for _, m := range ms {
			if !m.name.ascii && !utf16Ordered(c.text(m.name)) {
				c.identity = false
				slices.SortFunc(ms, func(a, b member) int { return compareUTF16(c.text(a.name), c.text(b.name)) })
				break
			}
		}
	}
	return nil
}

// namePrefix returns the first 8 bytes of the name s locates, big-endian,
// zero-padded.
func (c *canon) namePrefix(s span) uint64 {
	t := c.text(s)
	if len(t) >= 8 {
		return binary.BigEndian.Uint64(t)
	}
	var p uint64
	for i, b := range t {
		p |= uint64(b) << (56 - 8*i)
	}
	return p
}

// compareNames compares two members' names in byte order.
func (c *canon) compareNames(a, b *member) int {
	switch {
	case a.prefix < b.prefix:
		return -1
	case a.prefix > b.prefix:
		return 1
	}
	return bytes.Compare(c.text(a.name), c.text(b.name))
}

func (c *canon) array() error {
	if err := c.enter(); err != nil {
		return err
	}
	c.pos++ // [
	arr := len(c.vals)
	c.vals = append(c.vals, val{kind: kindArray})
	c.skipSpace()
	if c.pos < len(c.data) && c.data[c.pos] == ']' {
		c.pos++
		c.depth--
		c.vals[arr].end = len(c.vals)
		return nil
	}
	n := 0
	for {
		c.skipSpace()
		if err := c.value(); err != nil {
			return err
		}
		n++
		c.skipSpace()
		if c.pos >= len(c.data) {
			return c.fail("unterminated array")
		}
		if c.data[c.pos] == ',' {
			c.pos++
			continue
		}
		if c.data[c.pos] != ']' {
			return c.fail("expected ',' or ']'")
		}
		c.pos++
		break
	}
	c.depth--
	c.vals[arr].count, c.vals[arr].end = n, len(c.vals)
	return nil
}

// string parses a JSON string at c.pos (the opening quote). Its value, always
// valid UTF-8, is the input itself when it has no escapes, else decoded into
// the arena.
func (c *canon) string() (span, error) {
	c.pos++ // "
	start := c.pos
	data := c.data
	// Fast path: no escapes.
	var high byte // the OR of the bytes: bit 7 set for non-ASCII text
	i := c.pos
	for i < len(data) && !stringStop[data[i]] {
		high |= data[i]
		i++
	}
	c.pos = i
	if i < len(data) && data[i] == '"' {
		s := data[start:i]
		ascii := high < utf8.RuneSelf
		if !ascii && !utf8.Valid(s) {
			return span{}, c.fail("invalid UTF-8 in string")
		}
		c.pos++
		return span{off: start, n: len(s), ascii: ascii}, nil
	}
	c.identity = false
	off := len(c.arena)
	c.arena = append(c.arena, data[start:c.pos]...)
	for {
		if c.pos >= len(data) {
			return span{}, c.fail("unterminated string")
		}
		ch := data[c.pos]
		switch {
		case ch == '"':
			c.pos++
			if !utf8.Valid(c.arena[off:]) {
				return span{}, c.fail("invalid UTF-8 in string")
			}
			return span{off: off, n: len(c.arena) - off, inArena: true, ascii: isASCII(c.arena[off:])}, nil
		case ch < 0x20:
			return span{}, c.fail("control character in string")
		case ch != '\\':
			// Copy the run up to the next quote, escape or control
			// character.
			run := c.pos + 1
			for run < len(data) && !stringStop[data[run]] {
				run++
			}
			c.arena = append(c.arena, data[c.pos:run]...)
			c.pos = run
			continue
		}
		c.pos++ // backslash
		if c.pos >= len(data) {
			return span{}, c.fail("unterminated escape")
		}
		e := data[c.pos]
		c.pos++
		switch e {
		case '"', '\\', '/':
			c.arena = append(c.arena, e)
		case 'b':
			c.arena = append(c.arena, '\b')
		case 'f':
			c.arena = append(c.arena, '\f')
		case 'n':
			c.arena = append(c.arena, '\n')
		case 'r':
			c.arena = append(c.arena, '\r')
		case 't':
			c.arena = append(c.arena, '\t')
		case 'u':
			r, err := c.hex4()
			if err != nil {
				return span{}, err
			}
			switch {
			case utf16.IsSurrogate(r) && r < 0xDC00:
				if c.pos+1 >= len(data) || data[c.pos] != '\\' || data[c.pos+1] != 'u' {
					return span{}, c.fail("lone surrogate \\u%04x", r)
				}
				c.pos += 2
				lo, err := c.hex4()
				if err != nil {
					return span{}, err
				}
				if lo < 0xDC00 || lo > 0xDFFF {
					return span{}, c.fail("lone surrogate \\u%04x", r)
				}
				r = utf16.DecodeRune(r, lo)
			case utf16.IsSurrogate(r):
				return span{}, c.fail("lone surrogate \\u%04x", r)
			}
			c.arena = utf8.AppendRune(c.arena, r)
		default:
			return span{}, c.fail("invalid escape \\%c", e)
		}
	}
}

// stringStop marks the bytes that end the plain run of a string: the quote,
// the backslash and the control characters.
var stringStop = [256]bool{'"': true, '\\': true,
	0x00: true, 0x01: true, 0x02: true, 0x03: true, 0x04: true, 0x05: true, 0x06: true, 0x07: true,
	0x08: true, 0x09: true, 0x0a: true, 0x0b: true, 0x0c: true, 0x0d: true, 0x0e: true, 0x0f: true,
	0x10: true, 0x11: true, 0x12: true, 0x13: true, 0x14: true, 0x15: true, 0x16: true, 0x17: true,
	0x18: true, 0x19: true, 0x1a: true, 0x1b: true, 0x1c: true, 0x1d: true, 0x1e: true, 0x1f: true,
}

func isASCII(b []byte) bool {
	for _, ch := range b {
		if ch >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

func (c *canon) hex4() (rune, error) {
	if c.pos+4 > len(c.data) {
		return 0, c.fail("short \\u escape")
	}
	var r rune
	for _, ch := range c.data[c.pos : c.pos+4] {
		r <<= 4
		switch {
		case ch >= '0' && ch <= '9':
			r |= rune(ch - '0')
		case ch >= 'a' && ch <= 'f':
			r |= rune(ch - 'a' + 10)
		case ch >= 'A' && ch <= 'F':
			r |= rune(ch - 'A' + 10)
		default:
			return 0, c.fail("invalid \\u escape")
		}
	}
	c.pos += 4
	return r, nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// number parses a JSON number at c.pos and locates its canonical text: the
// literal itself for an integer that is already canonical, else text
// written into the arena.
func (c *canon) number() (span, error) {
	data := c.data
	begin := c.pos
	neg := false
	if data[c.pos] == '-' {
		neg = true
		c.pos++
	}
	start := c.pos
	if c.pos >= len(data) || !isDigit(data[c.pos]) {
		return span{}, c.fail("invalid number")
	}
	if data[c.pos] == '0' {
		c.pos++
	} else {
		for c.pos < len(data) && isDigit(data[c.pos]) {
			c.pos++
		}
	}
	intPart := data[start:c.pos]
	var frac []byte
	if c.pos < len(data) && data[c.pos] == '.' {
		c.pos++
		fs := c.pos
		for c.pos < len(data) && isDigit(data[c.pos]) {
			c.pos++
		}
		if c.pos == fs {
			return span{}, c.fail("invalid number: no digits after '.'")
		}
		frac = data[fs:c.pos]
	}
	var exp int64
	hasExp := false
	if c.pos < len(data) && (data[c.pos] == 'e' || data[c.pos] == 'E') {
		hasExp = true
		c.pos++
		expNeg := false
		if c.pos < len(data) && (data[c.pos] == '+' || data[c.pos] == '-') {
			expNeg = data[c.pos] == '-'
			c.pos++
		}
		es := c.pos
		for c.pos < len(data) && isDigit(data[c.pos]) {
			c.pos++
		}
		if c.pos == es {
			return span{}, c.fail("invalid number: no digits in exponent")
		}
		if !c.jcs {
			ed := bytes.TrimLeft(data[es:c.pos], "0")
			if len(ed) > maxExpDigits {
				return span{}, c.fail("exponent out of range")
			}
			for _, d := range ed {
				exp = exp*10 + int64(d-'0')
			}
			if expNeg {
				exp = -exp
			}
		}
	}
	// An integer literal other than -0 is its own canonical form when short
	// enough: below 10^21 (exact), or of at most 15 digits and so exact as a
	// double (JCS).
	if frac == nil && !hasExp && !(neg && intPart[0] == '0') && (len(intPart) <= 15 || !c.jcs && len(intPart) <= 21) {
		return span{off: begin, n: c.pos - begin, ascii: true}, nil
	}
	c.identity = false
	if c.jcs {
		return c.jcsNumber(data[begin:c.pos])
	}
	c.scratch = append(append(c.scratch[:0], intPart...), frac...)
	off := len(c.arena)
	c.arena = appendCanonicalNumber(c.arena, neg, c.scratch, exp-int64(len(frac)))
	return span{off: off, n: len(c.arena) - off, inArena: true}, nil
}

// appendCanonicalNumber appends the exact decimal (-1)^neg × digits ×
// 10^exp in canonical form.
func appendCanonicalNumber(b []byte, neg bool, digits []byte, exp int64) []byte {
	digits = bytes.TrimLeft(digits, "0")
	if len(digits) == 0 {
		return append(b, '0')
	}
	for digits[len(digits)-1] == '0' {
		digits = digits[:len(digits)-1]
		exp++
	}
	// value = digits × 10^exp; adj is the power of ten of the leading digit.
	n := int64(len(digits))
	adj := exp + n - 1
	if neg {
		b = append(b, '-')
	}
	switch {
	case exp >= 0 && adj < 21:
		b = append(b, digits...)
		for range exp {
			b = append(b, '0')
		}
	case exp < 0 && adj >= 0:
		b = append(b, digits[:n+exp]...)
		b = append(b, '.')
		b = append(b, digits[n+exp:]...)
	case exp < 0 && adj >= -6:
		b = append(b, "0."...)
		for range -adj - 1 {
			b = append(b, '0')
		}
		b = append(b, digits...)
	default:
		b = append(b, digits[0])
		if n > 1 {
			b = append(b, '.')
			b = append(b, digits[1:]...)
		}
		b = append(b, 'e')
		if adj >= 0 {
			b = append(b, '+')
		}
		b = strconv.AppendInt(b, adj, 10)
	}
	return b
}

// writeValue appends the canonical form of vals[i] to b.
func (c *canon) writeValue(b []byte, i int) []byte {
	v := &c.vals[i]
	switch v.kind {
	case kindNull:
		b = append(b, "null"...)
	case kindBool:
		if v.truth {
			b = append(b, "true"...)
		} else {
			b = append(b, "false"...)
		}
	case kindNumber:
		b = append(b, c.text(v.text)...)
	case kindString:
		b = c.writeText(b, v.text)
	case kindArray:
		b = append(b, '[')
		first := true
		for j := i + 1; j < v.end; j = c.vals[j].end {
			if c.vals[j].deleted {
				continue
			}
			if !first {
				b = append(b, ',')
			}
			first = false
			b = c.writeValue(b, j)
		}
		b = append(b, ']')
	case kindObject:
		b = append(b, '{')
		first := true
		for _, m := range c.members[v.first : v.first+v.count] {
			if c.vals[m.val].deleted {
				continue
			}
			if !first {
				b = append(b, ',')
			}
			first = false
			b = c.writeText(b, m.name)
			b = append(b, ':')
			b = c.writeValue(b, m.val)
		}
		b = append(b, '}')
	}
	return b
}

// writeText appends the string s locates as a JSON string. Text in the
// input has no escapes and so no character to escape: it is copied.
func (c *canon) writeText(b []byte, s span) []byte {
	if !s.inArena {
		b = append(b, '"')
		b = append(b, c.data[s.off:s.off+s.n]...)
		return append(b, '"')
	}
	return appendString(b, c.arena[s.off:s.off+s.n])
}

// appendString appends s as a JSON string, escaping only '"', '\\' and
// control characters.
func appendString[S ~string | ~[]byte](b []byte, s S) []byte {
	const hexDigits = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch >= 0x20 && ch != '"' && ch != '\\' {
			continue
		}
		b = append(b, s[start:i]...)
		start = i + 1
		switch ch {
		case '"':
			b = append(b, `\"`...)
		case '\\':
			b = append(b, `\\`...)
		case '\b':
			b = append(b, `\b`...)
		case '\f':
			b = append(b, `\f`...)
		case '\n':
			b = append(b, `\n`...)
		case '\r':
			b = append(b, `\r`...)
		case '\t':
			b = append(b, `\t`...)
		default:
			b = append(b, `\u00`...)
			b = append(b, hexDigits[ch>>4], hexDigits[ch&0xF])
		}
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// child returns the index of the member named seg of the object vals[i], or
// of the element at index seg of the array vals[i], or -1. Removed values
// are absent.
func (c *canon) child(i int, seg string) int {
	v := &c.vals[i]
	switch v.kind {
	case kindObject:
		for _, m := range c.members[v.first : v.first+v.count] {
			if !c.vals[m.val].deleted && string(c.text(m.name)) == seg {
				return m.val
			}
		}
	case kindArray:
		live := 0
		for j := i + 1; j < v.end; j = c.vals[j].end {
			if !c.vals[j].deleted {
				live++
			}
		}
		k, ok := arrayIndex(seg, live)
		if !ok {
			return -1
		}
		for j := i + 1; j < v.end; j = c.vals[j].end {
			if c.vals[j].deleted {
				continue
			}
			if k == 0 {
				return j
			}
			k--
		}
	}
	return -1
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

// lookup follows the dotted path from the root; -1 when absent. The empty
// path is the root itself.
func (c *canon) lookup(path string) int {
	if path == "" {
		return 0
	}
	return c.follow(0, path)
}

// follow follows the segments of path (at least one: "" is one empty
// segment) from vals[i].
func (c *canon) follow(i int, path string) int {
	for {
		seg, rest, more := strings.Cut(path, ".")
		if i = c.child(i, seg); i < 0 || !more {
			return i
		}
		path = rest
	}
}

// remove deletes the value at the dotted path, if present.
func (c *canon) remove(path string) {
	if path == "" {
		return
	}
	parent, last := 0, path
	if dot := strings.LastIndexByte(path, '.'); dot >= 0 {
		if parent = c.follow(0, path[:dot]); parent < 0 {
			return
		}
		last = path[dot+1:]
	}
	if i := c.child(parent, last); i >= 0 {
		c.vals[i].deleted = true
		c.identity = false
	}
}
