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
// At most Concurrency handlers run at once. Messages are pulled in small
// batches, never more than there are idle workers, so no fetched message
// ages in a buffer while its AckWait runs. When Run's context ends it stops
// pulling, lets running handlers finish for ShutdownTimeout, then cancels
// them and hands their messages back with NakWithDelay; it returns when
// every goroutine it started has ended.
package natsjs
