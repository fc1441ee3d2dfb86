// Package natsjs runs idemq's consumer pipeline on a NATS JetStream durable
// pull consumer (github.com/nats-io/nats.go/jetstream). It works with NATS
// server 2.9 and later.
//
// New validates a Config and Run consumes until its context ends. Each
// message goes through consumer.Pipeline.Process, and the Outcome becomes a
// broker action:
//
//	Ack         Ack (DoubleAck when Config.DoubleAck)
//	Retry       NakWithDelay(Outcome.Delay): the backoff of the broker's NumDelivered,
//	            a retry.After delay, the long budget delay, or a Busy lease remainder
//	DeadLetter  publish to DeadLetter.Subject and await the PubAck, then Term;
//	            when the publish fails: NakWithDelay(DeadLetter.RetryDelay), never lose it
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
// Messages the server itself stops redelivering — MaxDeliver reached while
// no worker answered, after crashes — are announced by a MAX_DELIVERIES
// advisory. With Config.CaptureMaxDeliveries the adapter captures those
// advisories durably in a stream (IDEMQ_ADVISORIES by default), fetches each
// original by its stream sequence and dead-letters it with reason exhausted.
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
// window).
//
// # Concurrency and shutdown
//
// A fixed pool of Concurrency worker goroutines (64 by default) runs the
// handlers; no goroutine is started per message. Messages arrive through a
// nats.go Consume subscription that keeps at most FetchBatch messages
// (Concurrency by default) buffered ahead of the workers and refills with
// one pull request when half of them were taken, so a buffered message waits
// about one handler duration while its AckWait runs. A heartbeat timer is
// armed per message and fires only for handlers that outlive
// HeartbeatInterval.
//
// The default Concurrency suits I/O-bound handlers (a dedupe store, a
// database, an API): they spend most of their time waiting, and more
// workers hide that wait. Lower it for CPU-bound handlers or to bound the
// load on a dependency; raise FetchBatch above it only when handlers are
// fast compared with AckWait.
//
// When Run's context ends it stops handing messages to the workers, drains
// the subscription — buffered messages are handed back unstarted with
// NakWithDelay(ShutdownNakDelay) — lets running handlers finish for
// ShutdownTimeout, then cancels them and hands their messages back too; it
// returns when every goroutine it started has ended.
package natsjs
