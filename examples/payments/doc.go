// Payments is idemq's flagship example: a payment API and a worker that
// applies a non-idempotent transfer exactly once per idempotency key, however
// often the client retries and however hard the processes crash.
//
// With no arguments it runs a self-contained demo: an embedded NATS server
// with JetStream and SQLite in a temporary directory, the API and two workers
// as subprocesses (this executable re-executed), a client that sends a few
// thousand payments through PUT /payments, loses a fifth of the responses on
// purpose and retries with backoff and jitter (retry.Do), reuses some keys
// with a changed amount, and a misbehaving producer that publishes malformed
// bodies, conflicting reuses and duplicates straight to JetStream. Meanwhile
// the demo SIGKILLs and restarts the workers, and once the API. At the end it
// checks, from the database and the streams, that money is conserved, every
// accepted payment was applied exactly once, the completed events match the
// applied payments and the dead-letter queue holds exactly the malformed and
// conflicting messages; it exits 0 only when they all hold.
//
//	go run ./examples/payments
//	go run ./examples/payments -nats nats://127.0.0.1:4222 -db 'postgres://postgres@127.0.0.1:5432/test?sslmode=disable'
//
// The commands, whose names, flags, subjects, headers, tables and status
// codes are a contract other tools rely on (see docs/ARCHITECTURE.md):
//
//	payments worker -nats URL -db URL [-concurrency N] [-metrics ADDR]
//	payments api -addr :8080 -nats URL -db URL [-metrics ADDR]
//
// With -metrics ADDR a command serves Prometheus text at http://ADDR/metrics:
// idemq's metrics from package idemqotel (messages by outcome, claims by
// answer — duplicates and conflicts among them —, dead letters by reason,
// retries, store latency, the outbox backlog, lag and relay throughput, HTTP
// requests by answer; docs/grafana/idemq.json is a dashboard over them).
// Without it nothing is served or recorded.
//
// The worker consumes payments.requested from the stream PAYMENTS with
// consumer/natsjs and runs each message in outbox.Inbox: the dedupe record,
// the two balance updates, a ledger row in transfers and the outcome event
// (payments.completed, or payments.rejected for a "402" insufficient-funds
// result) commit in one transaction; its outbox relay publishes the events
// with Nats-Msg-Id completed.<key> or rejected.<key>. A key reused with a
// different payment is dead-lettered with reason conflict, a body that is not
// a payment with reason invalid, on dlq.payments in the stream DLQ.
//
// The API puts PUT /payments behind dedupe/httpdedupe (fingerprint: the body
// without timestamp) and writes payments.requested into the outbox, with
// outbox id requested.<key>; its relay publishes it.
package main
