package dedupe

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"time"
)

// Defaults applied by Guard to its zero-valued fields.
const (
	// DefaultLease is Guard.Lease when zero: 30 seconds.
	DefaultLease = 30 * time.Second
	// DefaultRetention is Guard.Retention when zero: 24 hours.
	DefaultRetention = 24 * time.Hour
	// DefaultMaxKeyLen is Guard.MaxKeyLen when zero: 200 bytes.
	DefaultMaxKeyLen = 200
)

// hashedKeyPrefix marks a stored key that is the SHA-256 of a longer key.
const hashedKeyPrefix = "sha256:"

// fingerprintKeyPrefix marks a key that is a fingerprint (Guard.Key nil, or
// the fallback).
const fingerprintKeyPrefix = "fp:"

// Guard turns an Input into a claim on a Store: it extracts the key,
// computes the fingerprint, namespaces and bounds the key, and applies the
// configured lease and retention. A typical handler:
//
//	t, err := g.Claim(ctx, in)
//	switch {
//	case dedupe.IsInvalidInput(err): // dead-letter as "invalid" (HTTP 400)
//	case err != nil: // store trouble: retry later
//	case t.Status == dedupe.Acquired:
//		res, err := run(ctx)
//		if err != nil { g.Release(ctx, t); /* retry later, as t.Attempt+1 */ }
//		g.Complete(ctx, t, res)
//	case t.Status == dedupe.Busy: // retry after t.RetryAfter
//	case t.Status == dedupe.Duplicate: // ack; replay t.Result
//	case t.Status == dedupe.Conflict: // dead-letter as "conflict" (HTTP 409)
//	}
//
// Configure a Guard before first use and do not change it afterwards; it is
// then safe for concurrent use. The zero value of every field but Store is a
// usable default.
type Guard struct {
	// Store keeps the records. Required.
	Store Store
	// Key extracts the idempotency key. Nil means the fingerprint is the
	// key (server-side fingerprinting, for senders that send no key).
	Key KeySource
	// FallbackToFingerprint makes a missing key (ErrMissingKey) fall back to
	// the fingerprint as the key instead of failing. Invalid keys still fail.
	FallbackToFingerprint bool
	// Fingerprint computes the fingerprint stored with the key and compared
	// on a repeat: same key, different fingerprint is a Conflict. Nil means
	// the zero Fingerprinter: the whole payload, in canonical form when it is
	// JSON and as raw bytes otherwise, with no headers. Leave volatile
	// fields out with Exclude (a timestamp set on every retry would make
	// every retry a Conflict).
	Fingerprint *Fingerprinter
	// NoFingerprint stores no fingerprint, which turns conflict detection
	// off: a key reused for another payload is answered as a Duplicate of
	// the first. It is for keys that identify the operation by construction
	// (a broker's message id) and payloads too large to hash. Default false.
	NoFingerprint bool
	// Namespace prefixes every key, e.g. the consumer name or tenant: stored
	// keys are Namespace + ":" + key. Empty means no prefix.
	Namespace string
	// Lease is how long a claim is exclusive before another attempt may take
	// over (extend it with Extend for long handlers). Default 30s.
	Lease time.Duration
	// Retention is how long a completed record is kept, measured from
	// completion. Check it against the redelivery horizon with
	// ValidateRetention. Default 24h; must be at least Lease.
	Retention time.Duration
	// MaxKeyLen bounds stored keys in bytes. A longer namespaced key, and any
	// key that itself starts with "sha256:", is replaced by the namespace
	// prefix plus "sha256:" + hex(sha256(key)), never truncated (if that is
	// still too long, the whole namespaced key is hashed; a hashed key is 71
	// bytes, so limits below 71 act as 71). Default 200.
	MaxKeyLen int
}

// Ticket is the answer of Guard.Claim: the store's Claim plus what Complete,
// Release and Extend need.
type Ticket struct {
	Claim
	// Key is the stored key: namespaced and, when long, hashed.
	Key string
	// Fingerprint is the fingerprint of this input ("" without a
	// Fingerprinter). Claim.Fingerprint is the stored record's.
	Fingerprint string
}

// LeaseDuration returns Lease, or DefaultLease when Lease is not positive.
func (g *Guard) LeaseDuration() time.Duration {
	if g.Lease > 0 {
		return g.Lease
	}
	return DefaultLease
}

// RetentionDuration returns Retention, or DefaultRetention when Retention is
// not positive.
func (g *Guard) RetentionDuration() time.Duration {
	if g.Retention > 0 {
		return g.Retention
	}
	return DefaultRetention
}

func (g *Guard) maxKeyLen() int {
	if g.MaxKeyLen > 0 {
		return g.MaxKeyLen
	}
	return DefaultMaxKeyLen
}

// Resolve computes the stored key and the fingerprint of in without touching
// the store. Errors are those of Claim for invalid input. It parses the
// payload once, into pooled buffers (a JSONFieldKey shares the exact
// fingerprint's parse): with the built-in key sources, the returned strings
// are its only allocations.
func (g *Guard) Resolve(in Input) (key, fingerprint string, err error) {
	c := getCanon()
	defer putCanon(c)
	// A JSON field key reads the document the exact fingerprint parses:
	// parse it once.
	jk, shared := g.Key.(jsonFieldKey)
	shared = shared && !g.NoFingerprint && !g.Fingerprint.jcs()
	var raw string
	var keyErr error
	if !g.NoFingerprint {
		ok := c.parse(in.Data, g.Fingerprint.jcs())
		if shared {
			raw, keyErr = jk.keyFrom(c, ok) // before the fingerprint's Exclude
		}
		sum, err := g.Fingerprint.digest(c, in, ok)
		if err != nil {
			return "", "", err
		}
		fingerprint = hexString(&sum)
	}
	if g.Key != nil {
		if shared {
			err = keyErr
		} else {
			raw, err = g.Key.Key(in)
		}
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
			sum, err := g.Fingerprint.digest(c, in, c.parse(in.Data, g.Fingerprint.jcs()))
			if err != nil {
				return "", "", err
			}
			fp = hexString(&sum)
		}
		return g.storeKey(fingerprintKeyPrefix, fp), fingerprint, nil
	}
	return g.storeKey("", raw), fingerprint, nil
}

func isMissing(err error) bool {
	return err != nil && errors.Is(err, ErrMissingKey)
}

// StoreKey returns the key under which raw is stored: Namespace + ":" + raw,
// hashed as MaxKeyLen describes. It fails like CheckKey for an empty or
// invalid raw key (as a *KeyError).
func (g *Guard) StoreKey(raw string) (string, error) {
	if err := CheckKey(raw); err != nil {
		return "", &KeyError{Source: "key", Err: err}
	}
	return g.storeKey("", raw), nil
}

// storeKey is StoreKey for the valid raw key tag + raw, where tag is "" or
// fingerprintKeyPrefix, built with one allocation.
func (g *Guard) storeKey(tag, raw string) string {
	sep := ""
	if g.Namespace != "" {
		sep = ":"
	}
	limit := g.maxKeyLen()
	if len(g.Namespace)+len(sep)+len(tag)+len(raw) <= limit && (tag != "" || !strings.HasPrefix(raw, hashedKeyPrefix)) {
		return g.Namespace + sep + tag + raw
	}
	raw = tag + raw
	prefix := g.Namespace + sep
	key := prefix + hashKey(raw)
	if len(key) > limit {
		key = hashKey(prefix + raw)
	}
	return key
}

func hashKey(s string) string {
	sum := sha256.Sum256([]byte(s))
	var b [len(hashedKeyPrefix) + 2*sha256.Size]byte
	copy(b[:], hashedKeyPrefix)
	hex.Encode(b[len(hashedKeyPrefix):], sum[:])
	return string(b[:])
}

// Claim resolves in's key and fingerprint and claims the key. Errors are
// either invalid input (IsInvalidInput: a *KeyError, or ErrNotJSON from the
// fingerprint; dead-letter as "invalid") or store errors (retry later).
func (g *Guard) Claim(ctx context.Context, in Input) (Ticket, error) {
	key, fp, err := g.Resolve(in)
	if err != nil {
		return Ticket{}, err
	}
	return g.claimStored(ctx, key, fp)
}

// ClaimKey claims the raw key (namespaced and bounded like StoreKey) with
// the given fingerprint ("" for none), for callers that extract keys and
// fingerprints themselves, such as the HTTP middleware.
func (g *Guard) ClaimKey(ctx context.Context, key, fingerprint string) (Ticket, error) {
	stored, err := g.StoreKey(key)
	if err != nil {
		return Ticket{}, err
	}
	return g.claimStored(ctx, stored, fingerprint)
}

func (g *Guard) claimStored(ctx context.Context, key, fp string) (Ticket, error) {
	if g.Store == nil {
		return Ticket{}, ErrNoStore
	}
	c, err := g.Store.Claim(ctx, key, fp, g.LeaseDuration(), g.RetentionDuration())
	if err != nil {
		return Ticket{}, fmt.Errorf("dedupe: claim %q: %w", key, err)
	}
	return Ticket{Claim: c, Key: key, Fingerprint: fp}, nil
}

// Complete records res for the ticket's key, kept for the guard's retention.
// ErrLeaseLost means the lease was taken over (or the ticket was not
// Acquired): the result was not recorded.
func (g *Guard) Complete(ctx context.Context, t Ticket, res Result) error {
	if g.Store == nil {
		return ErrNoStore
	}
	if err := g.Store.Complete(ctx, t.Key, t.Token, res, g.RetentionDuration()); err != nil {
		return fmt.Errorf("dedupe: complete %q: %w", t.Key, err)
	}
	return nil
}

// Release ends the ticket's lease after a transient failure, so that the
// redelivery runs the operation again at once, as the next Attempt; the
// record keeps counting attempts. ErrLeaseLost means another attempt owns
// the key now (nothing to release).
func (g *Guard) Release(ctx context.Context, t Ticket) error {
	if g.Store == nil {
		return ErrNoStore
	}
	if err := g.Store.Release(ctx, t.Key, t.Token); err != nil {
		return fmt.Errorf("dedupe: release %q: %w", t.Key, err)
	}
	return nil
}

// Delete removes the ticket's in-progress record, attempt count included:
// call it once the message has been dead-lettered, so that a replay of the
// dead letter starts again at Attempt 1. ErrLeaseLost means another attempt
// owns the key now.
func (g *Guard) Delete(ctx context.Context, t Ticket) error {
	if g.Store == nil {
		return ErrNoStore
	}
	if err := g.Store.Delete(ctx, t.Key, t.Token); err != nil {
		return fmt.Errorf("dedupe: delete %q: %w", t.Key, err)
	}
	return nil
}

// Extend pushes the ticket's lease out to now + LeaseDuration(): call it as
// a heartbeat, well before the lease ends, while the handler runs.
// ErrLeaseLost means another attempt took over: stop and do not Complete.
func (g *Guard) Extend(ctx context.Context, t Ticket) error {
	if g.Store == nil {
		return ErrNoStore
	}
	if err := g.Store.Extend(ctx, t.Key, t.Token, g.LeaseDuration()); err != nil {
		return fmt.Errorf("dedupe: extend %q: %w", t.Key, err)
	}
	return nil
}
