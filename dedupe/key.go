package dedupe

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Input is what keys and fingerprints are computed from. It is
// transport-neutral: adapters fill it from a JetStream message, a Watermill
// message or an HTTP request.
type Input struct {
	// Header holds the message or request headers. Names are matched
	// case-insensitively; canonical MIME form is not assumed.
	Header map[string][]string
	// Data is the payload.
	Data []byte
	// MessageID is the broker's id for the message (may be empty).
	MessageID string
}

// Values returns the values of the header name, matched case-insensitively.
// When the map holds the name under several spellings, their values are
// concatenated in the byte order of the spellings, so the result does not
// depend on map iteration order.
func (in Input) Values(name string) []string {
	var first string
	n := 0
	for k := range in.Header {
		if strings.EqualFold(k, name) {
			if n == 0 {
				first = k
			}
			n++
		}
	}
	switch n {
	case 0:
		return nil
	case 1:
		return in.Header[first]
	}
	keys := make([]string, 0, n)
	for k := range in.Header {
		if strings.EqualFold(k, name) {
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	var out []string
	for _, k := range keys {
		out = append(out, in.Header[k]...)
	}
	return out
}

// KeySource extracts the idempotency key from an Input. Errors are
// *KeyError values wrapping ErrMissingKey, ErrInvalidKey or ErrNotJSON.
type KeySource interface {
	Key(in Input) (string, error)
}

// KeyFunc adapts a function to KeySource. Guard validates what it returns as
// it validates every key (non-empty, valid UTF-8, no control characters).
type KeyFunc func(in Input) (string, error)

// Key calls f(in).
func (f KeyFunc) Key(in Input) (string, error) { return f(in) }

// HeaderKey returns a KeySource that takes the key from the first of the
// named headers that has a non-empty value, e.g.
// HeaderKey("Idempotency-Key", "Nats-Msg-Id"). Header names match
// case-insensitively; surrounding spaces and tabs are trimmed from the value
// (they are never part of an HTTP field value).
func HeaderKey(names ...string) KeySource {
	return headerKey{names: slices.Clone(names), src: "header " + strings.Join(names, ", ")}
}

type headerKey struct {
	names []string
	src   string // the KeyError source of a missing key
}

func (h headerKey) Key(in Input) (string, error) {
	for _, n := range h.names {
		for _, v := range in.Values(n) {
			if v = strings.Trim(v, " \t"); v != "" {
				if err := CheckKey(v); err != nil {
					return "", &KeyError{Source: "header " + n, Err: err}
				}
				return v, nil
			}
		}
	}
	return "", &KeyError{Source: h.src, Err: ErrMissingKey}
}

// JSONFieldKey returns a KeySource that takes the key from a field of the
// JSON payload, named by a dotted path: "payment_id", "order.id"; a numeric
// segment also indexes an array ("items.0.sku"). A field name containing a
// dot cannot be addressed. String values are used as they are; numbers in
// their canonical form (so 100, 100.0 and 1e2 give the key "100"). An absent
// field, null or "" is ErrMissingKey; an object, array or boolean is
// ErrInvalidKey; a payload that is not JSON is ErrNotJSON.
func JSONFieldKey(path string) KeySource {
	return jsonFieldKey{path: path}
}

type jsonFieldKey struct{ path string }

func (j jsonFieldKey) Key(in Input) (string, error) {
	c := getCanon()
	defer putCanon(c)
	return j.keyFrom(c, c.parse(in.Data, false))
}

// keyFrom is Key with the payload parsed into c (exact mode); ok reports
// that c.parse succeeded.
func (j jsonFieldKey) keyFrom(c *canon, ok bool) (string, error) {
	if !ok {
		return "", j.fail(c.parseErr())
	}
	i := c.lookup(j.path)
	if i < 0 || c.vals[i].kind == kindNull {
		return "", j.fail(ErrMissingKey)
	}
	var v string
	switch n := c.vals[i]; n.kind {
	case kindString, kindNumber:
		v = string(c.text(n.text))
	default:
		return "", j.fail(fmt.Errorf("%w: the field is a JSON %s, not a string or number", ErrInvalidKey, n.kind))
	}
	if v == "" {
		return "", j.fail(ErrMissingKey)
	}
	if err := CheckKey(v); err != nil {
		return "", j.fail(err)
	}
	return v, nil
}

func (j jsonFieldKey) fail(err error) error {
	return &KeyError{Source: "json field " + j.path, Err: err}
}

// MessageIDKey returns a KeySource that uses Input.MessageID, the broker's
// id for the message (for JetStream, the publisher-set Nats-Msg-Id is usually
// the better choice: HeaderKey("Nats-Msg-Id")).
func MessageIDKey() KeySource { return messageIDKey{} }

type messageIDKey struct{}

func (messageIDKey) Key(in Input) (string, error) {
	if in.MessageID == "" {
		return "", &KeyError{Source: "message id", Err: ErrMissingKey}
	}
	if err := CheckKey(in.MessageID); err != nil {
		return "", &KeyError{Source: "message id", Err: err}
	}
	return in.MessageID, nil
}

// FirstKey returns a KeySource that asks each source in turn and takes the
// first key found: a source answering ErrMissingKey passes to the next; any
// other error (an invalid key) stops there. With no key anywhere it fails
// with ErrMissingKey. FirstKey(HeaderKey("Idempotency-Key"), MessageIDKey())
// is natsjs's default.
func FirstKey(sources ...KeySource) KeySource { return firstKey(slices.Clone(sources)) }

type firstKey []KeySource

func (f firstKey) Key(in Input) (string, error) {
	var buf [4]error
	missing := buf[:0]
	for _, src := range f {
		k, err := src.Key(in)
		if err == nil {
			return k, nil
		}
		if !errors.Is(err, ErrMissingKey) {
			return "", err
		}
		missing = append(missing, err)
	}
	msgs := make([]string, len(missing))
	for i, err := range missing {
		msgs[i] = err.Error()
	}
	return "", &KeyError{Source: "any of: " + strings.Join(msgs, "; "), Err: ErrMissingKey}
}

// CheckKey reports whether key may be used as an idempotency key: it must be
// non-empty (else ErrMissingKey), valid UTF-8 and free of control characters
// (else an error wrapping ErrInvalidKey that gives the byte offset). Length
// is not limited here: Guard hashes long keys.
func CheckKey(key string) error {
	if key == "" {
		return ErrMissingKey
	}
	// Fast path: printable ASCII.
	i := 0
	for i < len(key) && key[i] >= 0x20 && key[i] < 0x7F {
		i++
	}
	if i == len(key) {
		return nil
	}
	for i, r := range key {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(key[i:]); size == 1 {
				return fmt.Errorf("%w: invalid UTF-8 at byte %d", ErrInvalidKey, i)
			}
		}
		if unicode.IsControl(r) {
			return fmt.Errorf("%w: control character %U at byte %d", ErrInvalidKey, r, i)
		}
	}
	return nil
}
