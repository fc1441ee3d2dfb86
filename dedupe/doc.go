// Package dedupe makes at-least-once message handlers safe to retry: each
// logical operation, however often it is delivered, takes effect once and
// its result is replayed to every repeat.
//
// # The state machine
//
// Every delivery first claims its key on a Store (Guard.Claim). The record
// behind a key is in_progress, done or failed, and Claim answers:
//
//   - Acquired: nobody holds the key (or the record's retention is over).
//     The caller holds a lease with a fresh fencing token, runs the
//     operation, then calls Complete with its Result — or Release after a
//     transient failure, so the redelivery runs it again. A failed handler
//     never leaves a record that turns its redelivery into a "duplicate".
//   - Acquired with Takeover: the previous holder's lease expired (it
//     crashed or stalled); the new token fences it out, so its late
//     Complete, Release or Extend gets ErrLeaseLost.
//   - Busy: another attempt holds a live lease; retry after
//     Claim.RetryAfter (JetStream: NakWithDelay; HTTP: 409 + Retry-After).
//   - Duplicate: the operation is done; Claim.Result is its stored result,
//     including a stored business failure ("402 No Money!" is replayed, not
//     re-evaluated). Acknowledge and replay.
//   - Conflict: the key is done with a different fingerprint — the sender
//     reused a key for another operation. Never run it, never drop it
//     silently: HTTP 409, dead-letter reason "conflict".
//
// # Fencing
//
// Every Acquired claim carries two fencing tokens: Claim.Token, an opaque
// string the store itself checks on Complete, Release, Delete and Extend,
// and Claim.Fence, a number that grows with every lease of the key — first
// claim, claim after Release, takeover — for systems the store does not
// know. A handler passes the fence along with its writes (a column, a
// header, a conditional update "WHERE fence < $1"); the downstream system
// keeps the largest fence it has accepted per key and refuses smaller ones,
// so a holder that stalled past its lease and was taken over cannot
// overwrite its successor's effects. Fences grow without any clock
// assumption while the key's record exists; across a Delete or the end of
// retention they rely on the clocks of the processes sharing the store
// (storekit.NextFence says exactly how).
//
// Long handlers call Guard.Extend as a heartbeat. storekit.Decide is the
// one implementation of these rules; stores call it (package
// dedupe/storekit holds what only store authors need), or mirror it
// server-side and are held to it by the conformance suite in
// dedupe/storetest.
//
// # Keys
//
// A KeySource extracts the idempotency key: HeaderKey("Idempotency-Key",
// "Nats-Msg-Id"), JSONFieldKey("payment_id"), MessageIDKey(), or — with
// Guard.Key nil — the fingerprint itself. A missing key is a *KeyError
// wrapping ErrMissingKey (IsInvalidInput reports true: dead-letter as
// "invalid", HTTP 400) unless Guard.FallbackToFingerprint is set. Keys must
// be valid UTF-8 without control characters (ErrInvalidKey). Guard prefixes
// keys with its Namespace (consumer, tenant) and replaces keys longer than
// MaxKeyLen (200 bytes) by "sha256:" + their hash, never truncating them.
//
// # Fingerprints
//
// A Fingerprinter hashes what defines the operation, so a key reused for a
// different operation is caught as a Conflict. JSON payloads are hashed in
// canonical form (Canonicalize: sorted members, no insignificant
// whitespace, exact normalised numbers so 100, 100.0 and 1e2 agree), after
// dropping Exclude fields (a timestamp) or keeping only Include fields,
// together with the chosen Headers. SHA-256 by default; HMAC-SHA256 with
// HMACKey when stored fingerprints must not reveal the payload. Non-JSON
// payloads hash their raw bytes; asking for fields of one is ErrNotJSON.
//
// Fingerprinter.Canonical CanonicalJCS switches to RFC 8785 (JCS,
// CanonicalizeJCS: numbers as IEEE 754 doubles written as JavaScript
// writes them, names in UTF-16 order) and to a plain SHA-256 of the
// canonical bytes, so that a producer in Python, JavaScript or any language
// with a JCS library computes the same fingerprint and can send it, or
// check it, itself. The exact mode stays the default: it never makes two
// different amounts look alike, and changing a default would change every
// stored fingerprint.
//
// # Retention
//
// A completed record is kept for Guard.Retention (24h by default). Too short
// and a late redelivery runs the operation again; too long and a legitimate
// repeat of the same operation (same fingerprint, key derived from it) is
// swallowed. ValidateRetention checks the retention against the redelivery
// horizon (RedeliveryHorizon: attempts × (ack wait + backoff) + DLQ replay
// window) and fails at startup, naming both numbers, when it is shorter.
//
// # Stores and their guarantees
//
//   - dedupe/memstore: in memory, sharded, bounded, TTL-evicting. One
//     process; forgets everything on restart. Tests, examples, and effects
//     that are idempotent anyway.
//   - dedupe/redisstore: Redis (go-redis v9 UniversalClient, Cluster-safe),
//     one round trip per operation (Lua). Shared by many processes;
//     durable as Redis persistence is configured.
//   - dedupe/sqlstore: Postgres and SQLite. Used on its own it is a shared,
//     durable store; used inside the caller's transaction (the inbox mode)
//     the record commits with the handler's writes, so database effects
//     apply exactly once even across a crash anywhere.
//   - dedupe/natskv: a JetStream key-value bucket (create to claim, revision
//     CAS to complete, bucket TTL for retention); NATS server 2.9 and later.
//
// Outside inbox mode every store gives the same guarantee: duplicates are
// suppressed, but a crash inside the handler, after its effect and before
// Complete, lets the next attempt run it again once the lease expires. Use
// store dedupe for idempotent or re-runnable effects, and the transactional
// inbox (plus outbox, see package outbox) for effects that must happen
// exactly once.
//
// The HTTP idempotency middleware (Idempotency-Key, stored responses, 409 on
// conflict or while in flight) is in dedupe/httpdedupe.
package dedupe
