package dedupe

import (
	"crypto/fips140"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// Fingerprinter computes a fingerprint of the parts of a message that define
// the operation, so that a retry (same operation) has the same fingerprint
// and a reuse of its key for another operation does not.
//
// A JSON payload is fingerprinted in canonical form (see Canonicalize), so
// re-encoding, reordering members or writing 100 as 1e2 does not change it;
// Exclude drops volatile fields such as a timestamp, Include keeps only the
// fields that define the operation. A payload that is not JSON has its raw
// bytes hashed, unless Include or Exclude is set: then it is an error
// wrapping ErrNotJSON. The chosen headers are hashed with the payload (the
// "move volatile fields out of the body, or significant ones into headers"
// option).
//
// The zero value, and a nil *Fingerprinter, hash the whole canonical JSON
// document, or the raw bytes of a non-JSON payload, with SHA-256 and no
// headers. A Fingerprinter is safe for concurrent use once configured.
type Fingerprinter struct {
	// Include, when not empty, restricts the fingerprint to these fields,
	// given as dotted paths ("amount", "order.id", "items.0.sku"). A field
	// that is absent is left out; absent and null differ.
	Include []string
	// Exclude removes these fields (dotted paths) before hashing, e.g.
	// "timestamp". It applies before Include, so Include "order" with Exclude
	// "order.sent_at" keeps order without its sent_at.
	Exclude []string
	// Headers names headers whose values are part of the fingerprint,
	// matched case-insensitively. A header that is absent and one that is
	// present with no values hash alike; "" and absent differ.
	Headers []string
	// HMACKey, when not empty, makes the fingerprint HMAC-SHA256 under this
	// key instead of SHA-256, so that stored fingerprints do not reveal the
	// payload to whoever can read the store (a guessable payload such as an
	// amount could otherwise be confirmed by hashing candidates).
	HMACKey []byte
	// Canonical chooses the canonical form of a JSON payload and the bytes
	// hashed. Default CanonicalExact: Canonicalize, inside idemq's own
	// framing (a version string and length-prefixed fields; stable, but
	// only practical to reproduce with this package).
	//
	// CanonicalJCS is for fingerprints a producer in another language
	// computes too. The fingerprint is the lower-case hex SHA-256 (or
	// HMAC-SHA256 under HMACKey) of exactly these bytes, with no prefix and
	// no length:
	//
	//   - JSON payload, no Headers: CanonicalizeJCS of the payload after
	//     Exclude, or of the object {path: value} of the Include paths
	//     present;
	//   - JSON payload with Headers: CanonicalizeJCS of the object
	//     {"headers": {name: [values…]}, "payload": document}, names in
	//     lower case, each listed name present ([] when absent), invalid
	//     UTF-8 in a value replaced by U+FFFD;
	//   - a payload that is not JSON (not I-JSON: also duplicate names,
	//     lone surrogates, numbers beyond a double): its raw bytes, or with
	//     Headers the JCS of {"headers": {…}, "raw": base64 (standard, with
	//     padding) of the bytes}. Include or Exclude on it is ErrNotJSON.
	//
	// A producer hashes the JCS bytes with its language's RFC 8785 library
	// (Python: rfc8785.dumps; JavaScript: the canonicalize package; Go:
	// CanonicalizeJCS) and SHA-256; see ExampleFingerprinter_jcs. Changing
	// Canonical changes every fingerprint: a redelivery of a key completed
	// under the other mode is a Conflict, so switch with a new
	// Guard.Namespace or once Guard.Retention has passed.
	Canonical CanonicalMode
}

// fingerprintVersion separates this encoding from any future one.
const fingerprintVersion = "idemq-fingerprint-v1"

// Fingerprint returns the fingerprint of in as 64 lower-case hex digits.
// Its only error is a payload that is not JSON while Include or Exclude is
// set (wrapping ErrNotJSON; IsInvalidInput reports true).
func (f *Fingerprinter) Fingerprint(in Input) (string, error) {
	c := getCanon()
	defer putCanon(c)
	sum, err := f.digest(c, in, c.parse(in.Data, f.jcs()))
	if err != nil {
		return "", err
	}
	return hexString(&sum), nil
}

// jcs reports whether f (nil is the zero Fingerprinter) parses payloads as
// RFC 8785 does.
func (f *Fingerprinter) jcs() bool { return f != nil && f.Canonical == CanonicalJCS }

var zeroFingerprinter Fingerprinter

// framingRoom is what digest reserves in front of the canonical payload: the
// HMAC inner pad, then the version, tag and length fields that precede the
// payload in the exact mode's framing, written once the length is known.
const framingRoom = sha256.BlockSize + 1 + len(fingerprintVersion) + 1 + len("json") + binary.MaxVarintLen64

// digest computes the fingerprint of in, whose payload c holds as parsed in
// f's mode (ok: c.parse succeeded). It writes the hashed bytes into c.out
// and may remove Exclude paths from c's document.
func (f *Fingerprinter) digest(c *canon, in Input, ok bool) ([sha256.Size]byte, error) {
	if f == nil {
		f = &zeroFingerprinter
	}
	if !ok && (len(f.Include) > 0 || len(f.Exclude) > 0) {
		return [sha256.Size]byte{}, fmt.Errorf("%w (Include and Exclude need a JSON payload)", c.parseErr())
	}
	if f.Canonical == CanonicalJCS {
		return f.digestJCS(c, in, ok), nil
	}
	b := slices.Grow(c.out[:0], framingRoom+len(in.Data)+64)[:framingRoom]
	tag := "raw"
	if ok {
		tag = "json"
		b = f.appendSelected(c, b)
	} else {
		b = append(b, in.Data...)
	}
	// The framing: length-prefixed version, tag and payload, so that field
	// boundaries are unambiguous; right-aligned against the payload.
	var frame [framingRoom - sha256.BlockSize]byte
	p := appendField(frame[:0], fingerprintVersion)
	p = appendField(p, tag)
	p = binary.AppendUvarint(p, uint64(len(b)-framingRoom))
	start := framingRoom - len(p)
	copy(b[start:], p)
	b = binary.AppendUvarint(b, uint64(len(f.Headers)))
	for _, name := range f.Headers {
		b = appendLowerField(b, name)
		vals := in.Values(name)
		b = binary.AppendUvarint(b, uint64(len(vals)))
		for _, v := range vals {
			b = appendField(b, v)
		}
	}
	c.out = b
	return c.hash(f.HMACKey, start), nil
}

// digestJCS is digest with Canonical CanonicalJCS: the hash of the JCS
// bytes, with no framing.
func (f *Fingerprinter) digestJCS(c *canon, in Input, ok bool) [sha256.Size]byte {
	if len(f.Headers) == 0 && len(f.HMACKey) == 0 && (!ok || c.identity && len(f.Exclude) == 0 && len(f.Include) == 0) {
		// The payload is hashed as it is: raw, or already canonical.
		return sha256.Sum256(in.Data)
	}
	const start = sha256.BlockSize
	b := slices.Grow(c.out[:0], start+len(in.Data)+64)[:start]
	if len(f.Headers) > 0 {
		b = f.appendHeadersJCS(b, in)
		if ok {
			b = append(b, `,"payload":`...)
		} else {
			b = append(b, `,"raw":"`...)
			b = base64.StdEncoding.AppendEncode(b, in.Data)
			b = append(b, '"')
		}
	}
	if ok {
		b = f.appendSelected(c, b)
	} else if len(f.Headers) == 0 {
		b = append(b, in.Data...)
	}
	if len(f.Headers) > 0 {
		b = append(b, '}')
	}
	c.out = b
	return c.hash(f.HMACKey, start)
}

// appendHeadersJCS appends the start of the JCS document of Headers mode,
// {"headers":{name:[values…]…}, up to the member that follows headers.
func (f *Fingerprinter) appendHeadersJCS(b []byte, in Input) []byte {
	type header struct{ lower, name, orig string }
	hs := make([]header, 0, len(f.Headers))
	for _, name := range f.Headers {
		lower := strings.ToLower(name)
		if slices.ContainsFunc(hs, func(h header) bool { return h.lower == lower }) {
			continue
		}
		hs = append(hs, header{lower: lower, name: strings.ToValidUTF8(lower, "\uFFFD"), orig: name})
	}
	slices.SortFunc(hs, func(a, b header) int { return strings.Compare(a.name, b.name) })
	if slices.ContainsFunc(hs, func(h header) bool { return !utf16Ordered(h.name) }) {
		slices.SortFunc(hs, func(a, b header) int { return compareUTF16(a.name, b.name) })
	}
	b = append(b, `{"headers":{`...)
	for i, h := range hs {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, h.name)
		b = append(b, ":["...)
		for j, v := range in.Values(h.orig) {
			if j > 0 {
				b = append(b, ',')
			}
			b = appendString(b, strings.ToValidUTF8(v, "\uFFFD"))
		}
		b = append(b, ']')
	}
	return append(b, '}')
}

// appendSelected applies Exclude, then Include, and appends the canonical
// form of what remains. With Include it is an object mapping each present
// included path to its value.
func (f *Fingerprinter) appendSelected(c *canon, b []byte) []byte {
	for _, p := range f.Exclude {
		c.remove(p)
	}
	if len(f.Include) == 0 {
		if c.identity {
			return append(b, c.data...)
		}
		return c.writeValue(b, 0)
	}
	type selected struct {
		path string
		val  int
	}
	var sel []selected
	for i, p := range f.Include {
		if slices.Contains(f.Include[:i], p) {
			continue
		}
		if v := c.lookup(p); v >= 0 {
			sel = append(sel, selected{p, v})
		}
	}
	slices.SortFunc(sel, func(a, b selected) int { return strings.Compare(a.path, b.path) })
	if c.jcs && slices.ContainsFunc(sel, func(s selected) bool { return !utf16Ordered(s.path) }) {
		slices.SortFunc(sel, func(a, b selected) int { return compareUTF16(a.path, b.path) })
	}
	b = append(b, '{')
	for i, s := range sel {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendString(b, s.path)
		b = append(b, ':')
		b = c.writeValue(b, s.val)
	}
	return append(b, '}')
}

// hash returns the SHA-256, or with key the HMAC-SHA256, of c.out[start:];
// the sha256.BlockSize bytes before start are free for the HMAC inner pad.
func (c *canon) hash(key []byte, start int) [sha256.Size]byte {
	msg := c.out[start:]
	if len(key) == 0 {
		return sha256.Sum256(msg)
	}
	if fips140.Enabled() {
		return moduleHMAC(key, msg)
	}
	var sum [sha256.Size]byte
	// HMAC (RFC 2104): H((K ^ opad) || H((K ^ ipad) || msg)), K the key
	// padded with zeros to the block size, or its hash when longer.
	var k [sha256.BlockSize]byte
	if len(key) > sha256.BlockSize {
		sum = sha256.Sum256(key)
		copy(k[:], sum[:])
	} else {
		copy(k[:], key)
	}
	inner := c.out[start-sha256.BlockSize:]
	for i, kb := range k {
		inner[i] = kb ^ 0x36
	}
	sum = sha256.Sum256(inner)
	var outer [sha256.BlockSize + sha256.Size]byte
	for i, kb := range k {
		outer[i] = kb ^ 0x5c
	}
	copy(outer[sha256.BlockSize:], sum[:])
	return sha256.Sum256(outer[:])
}

// moduleHMAC is HMAC-SHA256 by crypto/hmac, which in FIPS 140-3 mode is the
// validated module's.
func moduleHMAC(key, msg []byte) [sha256.Size]byte {
	h := hmac.New(sha256.New, key)
	h.Write(msg)
	return [sha256.Size]byte(h.Sum(nil))
}

// hexString returns sum as lower-case hex digits.
func hexString(sum *[sha256.Size]byte) string {
	var h [2 * sha256.Size]byte
	hex.Encode(h[:], sum[:])
	return string(h[:])
}

// appendField appends a length-prefixed field, so that field boundaries are
// unambiguous.
func appendField(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// appendLowerField appends strings.ToLower(s) as a field.
func appendLowerField(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return appendField(b, strings.ToLower(s))
		}
	}
	b = binary.AppendUvarint(b, uint64(len(s)))
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if 'A' <= ch && ch <= 'Z' {
			ch += 'a' - 'A'
		}
		b = append(b, ch)
	}
	return b
}
