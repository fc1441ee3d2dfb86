// Package natsjs runs idemq's consumer pipeline on a NATS JetStream durable
// pull consumer (github.com/nats-io/nats.go/jetstream). It works with NATS
// server 2.9 and later.
//
// New validates a Config and Run consumes until its context ends. Each
// message goes through consumer.Pipeline.Process, and the Outcome becomes a
// broker action:
//
//	Ack         Ack (DoubleAck when Config.DoubleAck)
//	Retry       NakWithDelay(Outcome.Delay): the backoff of the attempt (handler runs,
//	            counted in the dedupe record), a retry.After delay, the long budget
//	            delay, or a Busy recheck; a Busy duplicate of a local original is held
//	            and handed back when the original ends
//	DeadLetter  the pipeline has published it to DeadLetter.Subject and the stream
//	            stored it: Term. When the publish fails the message is retried,
//	            never lost, and the consumer pauses until the stream answers
//	Unavailable the dedupe store or the dead-letter stream did not answer: after
//	            three such deliveries the consumer stops pulling, hands buffered
//	            messages back, probes, and resumes when it answers
//
// While a handler runs, the message is marked InProgress and the dedupe lease
// extended every HeartbeatInterval (AckWait/2 by default).
//
// # Dead letters
//
// A dead letter is the original message — body unchanged, original headers
// kept — plus the headers Idemq-Reason (permanent | exhausted | conflict |
// invalid), Idemq-Error (capped at 1 KiB), Idemq-Original-Subject,
// Idemq-Original-Stream, Idemq-Original-Sequence, Idemq-Consumer,
// Idemq-Attempts, Idemq-Failed-At (RFC 3339, UTC) and Idemq-Host, and
// Nats-Msg-Id = "<stream>:<sequence>", so dead-lettering one message twice
// stores it once. The original Nats-Msg-Id, if any, moves to
// Idemq-Original-Msg-Id. DeadLetterer publishes them and is reusable on its
// own (the outbox relay, the payments example).
//
// MaxDeliver is unlimited by default, so the server never gives up on a
// message idemq has not decided. With a finite MaxDeliver the server stops
// redelivering a message after that many deliveries and announces it with a
// MAX_DELIVERIES advisory; Run then captures those advisories durably in a
// stream (IDEMQ_ADVISORIES by default), fetches each original by its stream
// sequence and dead-letters it with reason exhausted.
//
// Dead letters go to DeadLetter.Subject, "dlq.<stream>" by default, in a
// stream DLQ created when missing. The subject may be a template that
// routes by stream, reason and original subject ("dlq.{stream}.{reason}",
// "dlq.{reason}.{subject}"); Run checks that the dead-letter stream
// captures every subject it can produce.
//
// # Batch mode
//
// NewBatch gives a consumer.BatchHandler up to BatchSize messages at a time
// (outbox.Inbox.BatchHandler runs them in one database transaction) and
// translates each message's result through the same pipeline and the same
// broker actions as New's consumer.
//
// # Start-up checks
//
// New refuses configurations that would lose or double messages, naming the
// numbers: MaxDeliver not above the retry policy's attempts (the server would
// give up before idemq dead-letters), AckWait longer than the dedupe lease,
// a heartbeat not shorter than AckWait, and a dedupe retention shorter than
// the redelivery horizon (Horizon: backoff + AckWait × attempts + replay
// window). Run then checks the streams before taking a message (see Run):
// the source stream and its filter subjects, the dead-letter stream and
// every routed subject, the advisory capture; Ready closes once it pulls.
//
// # Observing
//
// Config.Pipeline.Observer (consumer.Observer) sees every delivery: its
// claim, store calls, handler run and outcome; when it also implements
// consumer.PauseObserver, the consumer reports each pause (Paused, with the
// dependency that stopped answering) and its end (Resumed); when it
// implements consumer.DeadLetterObserver, each message dead-lettered from a
// MAX_DELIVERIES advisory (DeadLettered, reason exhausted,
// ErrMaxDeliveries). Package
// idemqotel implements both with OpenTelemetry. Messages carry their stream
// sequence (consumer.Message.Sequence), which the dead-letter log lines
// name.
//
// # Concurrency and shutdown
//
// A fixed pool of Concurrency worker goroutines (64 by default) runs the
// handlers; no goroutine is started per message. Messages arrive through a
// nats.go Consume subscription that keeps at most FetchBatch messages
// (eight times Concurrency, at most 512, by default) buffered ahead of the
// workers and refills with one pull request when half of them were taken,
// so a buffered message waits about eight handler durations while its
// AckWait runs; the
// subscription's callback hands messages to the workers through a channel
// of Concurrency/4 slots. A heartbeat timer (reused from message to
// message) is armed per message and fires only for handlers that outlive
// HeartbeatInterval. Acks, Naks and Terms go to one acker goroutine that
// publishes what the workers queued back to back, so that nats.go writes
// them in one system call rather than one each; with DoubleAck each worker
// waits for its own ack's confirmation instead.
//
// The default Concurrency suits I/O-bound handlers (a dedupe store, a
// database, an API): they spend most of their time waiting, and more
// workers hide that wait. Lower it for CPU-bound handlers or to bound the
// load on a dependency; set FetchBatch to Concurrency when handlers are
// slow compared with AckWait (longer than about AckWait/10).
//
// When Run's context ends it stops handing messages to the workers, drains
// the subscription — buffered messages are handed back unstarted with
// NakWithDelay(ShutdownNakDelay) — lets running handlers finish for
// ShutdownTimeout, then cancels them and hands their messages back too; it
// returns when every goroutine it started has ended.
package natsjs
