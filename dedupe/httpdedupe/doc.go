// Package httpdedupe is HTTP idempotency middleware over a dedupe.Guard:
// a client that retries an unsafe request (PUT /payment) with the same
// Idempotency-Key gets the response of the first attempt, and the handler
// runs once.
//
// For each unsafe request (anything but GET, HEAD, OPTIONS and TRACE):
//
//   - The key comes from the Idempotency-Key header. Missing: 400 with an
//     application/problem+json body (unless Config.KeyOptional).
//   - The body is read (over Config.MaxBodyBytes: 413) and fingerprinted
//     with the guard's Fingerprinter, together with the method and path, so
//     the same key on another endpoint or with another body is a conflict.
//     A body that is not JSON while the Fingerprinter selects fields is
//     answered 400; an empty body is fingerprinted as empty.
//   - The key is claimed. The first request runs the handler; its response
//     is buffered, recorded (status, the stored headers, body) and then
//     sent. A retry gets the identical stored response with the header
//     Idempotent-Replayed: true — a stored failure too (a 402 is replayed).
//   - The same key with a different fingerprint: 409 problem. The same key
//     while the first request still runs: 409 with Retry-After (seconds,
//     rounded up). A store that cannot answer: 503 with Retry-After.
//   - A handler that panics or answers 5xx (or 408, 425, 429) releases the
//     key, so the client's retry runs the handler again; the panic is
//     re-raised for http.Server to log.
//
// While the handler runs, the middleware extends the lease every third of
// the guard's lease, so a slow handler is not taken over by a retry.
//
// Config.Observer sees each unsafe request's claim, guard calls with their
// latency, handler run and answer (Observer); package idemqotel implements
// it with OpenTelemetry metrics and spans.
package httpdedupe
