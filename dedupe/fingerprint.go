package dedupe

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"strings"
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
	var cfg Fingerprinter
	if f != nil {
		cfg = *f
	}
	selects := len(cfg.Include) > 0 || len(cfg.Exclude) > 0
	if cfg.Canonical == CanonicalJCS {
		return cfg.fingerprintJCS(in, selects)
	}
	var h hash.Hash
	if len(cfg.HMACKey) > 0 {
		h = hmac.New(sha256.New, cfg.HMACKey)
	} else {
		h = sha256.New()
	}
	writeField(h, []byte(fingerprintVersion))
	root, err := parseJSON(in.Data)
	switch {
	case err == nil:
		root = cfg.selectFields(root)
		var buf bytes.Buffer
		root.write(&buf)
		writeField(h, []byte("json"))
		writeField(h, buf.Bytes())
	case selects:
		return "", fmt.Errorf("%w (Include and Exclude need a JSON payload)", err)
	default:
		writeField(h, []byte("raw"))
		writeField(h, in.Data)
	}
	writeCount(h, len(cfg.Headers))
	for _, name := range cfg.Headers {
		writeField(h, []byte(strings.ToLower(name)))
		vals := in.Values(name)
		writeCount(h, len(vals))
		for _, v := range vals {
			writeField(h, []byte(v))
		}
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// fingerprintJCS is Fingerprint with Canonical CanonicalJCS.
func (f *Fingerprinter) fingerprintJCS(in Input, selects bool) (string, error) {
	var h hash.Hash
	if len(f.HMACKey) > 0 {
		h = hmac.New(sha256.New, f.HMACKey)
	} else {
		h = sha256.New()
	}
	root, err := parseJSONMode(in.Data, true)
	if err != nil && selects {
		return "", fmt.Errorf("%w (Include and Exclude need a JSON payload)", err)
	}
	if err == nil {
		root = f.selectFields(root)
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
	headers := &node{kind: kindObject}
	seen := make(map[string]bool, len(f.Headers))
	for _, name := range f.Headers {
		lower := strings.ToLower(name)
		if seen[lower] {
			continue
		}
		seen[lower] = true
		vals := &node{kind: kindArray, arr: []*node{}}
		for _, v := range in.Values(name) {
			vals.arr = append(vals.arr, &node{kind: kindString, str: strings.ToValidUTF8(v, "\uFFFD")})
		}
		headers.obj = append(headers.obj, member{name: strings.ToValidUTF8(lower, "\uFFFD"), val: vals})
	}
	sortMembers(headers.obj)
	doc := &node{kind: kindObject, obj: []member{{name: "headers", val: headers}}}
	if err != nil {
		doc.obj = append(doc.obj, member{name: "raw", val: &node{kind: kindString, str: base64.StdEncoding.EncodeToString(in.Data)}})
	} else {
		doc.obj = append(doc.obj, member{name: "payload", val: root})
	}
	var buf bytes.Buffer
	doc.writeJCS(&buf)
	h.Write(buf.Bytes())
	return hex.EncodeToString(h.Sum(nil)), nil
}

// selectFields applies Exclude, then Include. With Include the result is an
// object mapping each present included path to its value.
func (f *Fingerprinter) selectFields(root *node) *node {
	for _, p := range f.Exclude {
		root.remove(splitPath(p))
	}
	if len(f.Include) == 0 {
		return root
	}
	sel := &node{kind: kindObject}
	seen := make(map[string]bool, len(f.Include))
	for _, p := range f.Include {
		if seen[p] {
			continue
		}
		seen[p] = true
		if v := root.lookup(splitPath(p)); v != nil {
			sel.obj = append(sel.obj, member{name: p, val: v})
		}
	}
	sortMembers(sel.obj)
	return sel
}

// writeField writes a length-prefixed field, so that field boundaries are
// unambiguous.
func writeField(h hash.Hash, b []byte) {
	writeCount(h, len(b))
	h.Write(b)
}

func writeCount(h hash.Hash, n int) {
	var buf [binary.MaxVarintLen64]byte
	h.Write(buf[:binary.PutUvarint(buf[:], uint64(n))])
}
