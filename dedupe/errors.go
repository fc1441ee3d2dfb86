package dedupe

import (
	"errors"
	"fmt"
)

// ErrMissingKey reports that the configured KeySource found no key in the
// input (no such header, an empty value, an absent or null JSON field, no
// broker message id). It reaches the caller inside a *KeyError. Redelivery
// cannot fix it: dead-letter the message as "invalid" (HTTP: 400), or set
// Guard.FallbackToFingerprint to dedupe such messages by their fingerprint.
var ErrMissingKey = errors.New("dedupe: missing idempotency key")

// ErrInvalidKey reports a key that cannot be stored safely: invalid UTF-8,
// a control character (C0, DEL or C1), or a JSON field of the wrong type
// (object, array, boolean). It reaches the caller inside a *KeyError.
var ErrInvalidKey = errors.New("dedupe: invalid idempotency key")

// ErrNotJSON reports a payload that is not a JSON document acceptable to
// Canonicalize (malformed, trailing data, invalid UTF-8, a duplicate object
// key, a lone UTF-16 surrogate, nesting deeper than 1000, an exponent beyond
// ±10^15) while a JSON field was asked for: JSONFieldKey, or a Fingerprinter
// with Include or Exclude. Without field selection a non-JSON payload is not
// an error: its raw bytes are hashed.
var ErrNotJSON = errors.New("dedupe: payload is not JSON")

// ErrRetentionTooShort is wrapped by ValidateRetention when a retention is
// shorter than the redelivery horizon: a redelivery arriving after the record
// expired would run the operation a second time.
var ErrRetentionTooShort = errors.New("dedupe: retention shorter than the redelivery horizon")

// ErrNoStore is returned by the Guard methods when Guard.Store is nil.
var ErrNoStore = errors.New("dedupe: Guard.Store is nil")

// KeyError is the error of a KeySource (and of Guard.Claim when the key is at
// fault). Err is ErrMissingKey, ErrInvalidKey or ErrNotJSON, possibly wrapped
// with detail; test it with errors.Is.
type KeyError struct {
	// Source describes where the key was looked for, e.g.
	// "header Idempotency-Key" or "json field order.id".
	Source string
	// Err is the cause.
	Err error
}

// Error returns "dedupe: key from <Source>: <Err>".
func (e *KeyError) Error() string {
	return fmt.Sprintf("dedupe: key from %s: %v", e.Source, e.Err)
}

// Unwrap returns Err.
func (e *KeyError) Unwrap() error { return e.Err }

// IsInvalidInput reports whether err is a key or fingerprint error that
// redelivery cannot fix: a missing or invalid key, or a payload that is not
// JSON where JSON fields were selected. Dead-letter such messages with reason
// "invalid" (HTTP: 400) instead of retrying them. Store errors are not
// invalid input: retry those.
func IsInvalidInput(err error) bool {
	var ke *KeyError
	return errors.As(err, &ke) ||
		errors.Is(err, ErrMissingKey) ||
		errors.Is(err, ErrInvalidKey) ||
		errors.Is(err, ErrNotJSON)
}
