// Package idemqwm runs idemq's consumer pipeline inside Watermill
// (github.com/ThreeDotsLabs/watermill): the same dedupe, attempt counting,
// retry policy, retry budget and dead-lettering as consumer/natsjs, on any
// Watermill pub/sub, with any idemq store (memstore, redisstore, sqlstore,
// natskv).
//
// The package lives in consumer/watermill but is named idemqwm, so that it
// reads as "idemq for Watermill" at call sites and never collides with the
// watermill, message and middleware packages imported next to it:
//
//	a, err := idemqwm.New(idemqwm.Config{
//		Pipeline: consumer.Config{
//			Guard: &dedupe.Guard{Store: redisstore.New(rdb, redisstore.Config{}), Key: dedupe.HeaderKey("Idempotency-Key")},
//			Retry: retry.Policy{MaxAttempts: 5},
//		},
//		PoisonPublisher: pub, PoisonTopic: "payments.poison",
//	})
//	router.AddMiddleware(a.Middleware) // or handler.AddMiddleware(a.Middleware)
//
// a.NoPublishHandler wraps a message.NoPublishHandlerFunc, and a.Handler
// runs an idemq consumer.Handler (SetResult, Reject, Invalid) as one.
//
// # Keys
//
// The guard's KeySource reads a dedupe.Input whose Header is the Watermill
// metadata and whose MessageID is the message UUID:
//
//	dedupe.HeaderKey("Idempotency-Key")  metadata set by the publisher (recommended)
//	dedupe.MessageIDKey()                the UUID: catches broker redeliveries, but most publishers
//	                                     make a new UUID per Publish call, so not a publisher's retry
//	dedupe.JSONFieldKey("payment_id")    a payload field
//	nil                                  the payload's fingerprint is the key
//
// The guard fingerprints the payload too, so a key reused with another
// payload is a conflict (dead letter "conflict"), as with natsjs. Keys are
// namespaced per router handler (Config.SharedKeys to opt out), so a
// fan-out to several handlers runs each once.
//
// # Outcomes
//
// Watermill's router Acks a message when the handler returns nil and Nacks
// it when the handler returns an error; the pub/sub then redelivers it.
// The pipeline's Outcome becomes:
//
//	Ack (success, duplicate, Reject)   return nil (with the produced messages; a duplicate
//	                                   returns the first run's again, see Config.NoReplayProduced)
//	Retry (transient error)            wait min(backoff, MaxWait), then return an error wrapping
//	                                   ErrRedeliver: the router Nacks
//	Retry, Busy (key held elsewhere)   an original in this process: wait until it ends, at most
//	                                   min(lease remainder, MaxWait); elsewhere: min(lease remainder,
//	                                   1s, MaxWait); then Nack: the redelivery is a duplicate
//	Retry, Unavailable (store or       wait UnavailableDelay (1s), doubling after PauseThreshold
//	  poison publisher down)           deliveries in a row, capped at MaxWait; no attempt is used
//	Retry, Snoozed (consumer.Snooze)   wait min(delay, MaxWait), then Nack; no attempt is used.
//	                                   With no delivery count the MaxDeliveries cap never applies
//	                                   here: a handler that always snoozes keeps its message
//	                                   circulating every MaxWait
//	Retry, Interrupted (shutdown)      Nack at once
//	DeadLetter (permanent, exhausted,  publish to PoisonTopic (PoisonMessage: idemq's Idemq-*
//	  conflict, invalid)               metadata), then return nil; a failed publish is a Retry
//
// PauseThreshold deliveries in a row that find a dependency down are an
// outage, the adapter's pause: it is logged, and reported to
// Config.Pipeline.Observer when that implements consumer.PauseObserver
// (idemqotel's does: idemq.consumer.paused and idemq.consumer.pauses), as
// natsjs reports its pauses. The first delivery that finds the
// dependencies answering ends it. The adapter has no Run to stop, so a
// router that closes during a pause reports no Resumed.
//
// Watermill has no delivery count, so every delivery is Attempt 1 and the
// pipeline counts attempts in the dedupe record: runs of the handler,
// durable across crashes and shared by every process using the store. That
// is why New requires a Guard. Deliveries that did not run the handler (the
// store was down, the key was Busy, the poison publish failed) use no
// attempt; the attempt past the retry policy is dead-lettered "exhausted"
// without running the handler.
//
// # Backoff and each pub/sub
//
// Most Watermill pub/subs cannot delay a Nack, so the adapter waits inside
// the handler, holding the message, before it returns the error; MaxWait
// caps that wait (5s by default), and retry.Policy delays above it are cut
// to it. Waits end early when the message's context ends.
//
//	gochannel        Nack redelivers at once, in process; no delay, no durability: a crash loses
//	                 the message (the publisher must resend; the dedupe record survives in a
//	                 durable store and keeps it once)
//	watermill-nats   pkg/nats and pkg/jetstream: SubscriberConfig.NakDelay is a Delay computed
//	                 from the delivery count only (StaticDelay, MaxRetryDelay), not per message:
//	                 a StaticDelay adds a floor to the in-handler wait. Never use MaxRetryDelay
//	                 or TermSignal: the subscriber Terms the message after N deliveries without
//	                 a dead letter, behind idemq's back. The JetStream consumer's AckWait (and the
//	                 subscriber's AckWaitTimeout, 30s) must exceed the handler plus MaxWait; no
//	                 InProgress is sent
//	AMQP (v3)        Nack requeues at once (NoRequeueOnNack must stay false, or a Nack drops the
//	                 message); no delay. Declare the poison queue before the first dead letter
//	                 (Subscriber.SubscribeInitialize(PoisonTopic)): the publisher declares no
//	                 queue, and RabbitMQ confirms a message that no queue takes and drops it
//	SQL (v4)         a Nack is resent after SubscriberConfig.ResendInterval (1s by default) in
//	                 the same transaction, blocking the messages behind it; AckDeadline (30s)
//	                 must exceed the handler plus MaxWait. Set MaxWait negative to rely on
//	                 ResendInterval alone. UUIDs are VARCHAR(36) and payloads JSON by default.
//	                 DefaultPostgreSQLSchema delivers a row only once every transaction older
//	                 than it has ended on the server (pg_snapshot_xmin): one session idle in a
//	                 transaction stalls delivery; PostgreSQLQueueSchema (row locks) does not
//
// Watermill's DelayOnError and the SQL DelayedRequeuer republish a message
// through a poison topic to delay it; they work with idemq (the republished
// copy has the same key, and its attempts continue in the record) but they
// are not needed.
//
// # Middleware order
//
// The pipeline orders dedupe, the handler, classification, retries and
// dead-lettering itself. Watermill middleware that does part of that job
// breaks the guarantee if it wraps idemq, and should be removed:
//
//	middleware.Deduplicator   remove. Outside idemq it records a message before the handler
//	                          succeeded; the redelivery of a failure is then acked as a
//	                          "duplicate" and the operation is lost (TestSideBySide shows it)
//	middleware.PoisonQueue    remove: idemq dead-letters itself, with idemq's metadata. Outside
//	                          idemq it turns idemq's redelivery error into an Ack, so the first
//	                          transient failure is poisoned without retries; inside, it makes a
//	                          failure look like a success that idemq records as done
//	middleware.IgnoreErrors   remove: the same Ack of a retry
//	middleware.InstantAck     remove: the message is acked before the handler runs
//	middleware.Retry          not needed. Outside idemq it works (each retry is a new attempt in
//	                          the record, and an exhausted message is dead-lettered and acked);
//	                          inside, one idemq attempt hides several handler runs
//	middleware.Recoverer,     fine in either place; the pipeline recovers panics itself
//	  Timeout, Throttle,
//	  CorrelationID
//
// What the adapter can see it reports: a message acked although idemq
// handed it back (an outer PoisonQueue or IgnoreErrors) or acked before
// idemq ran (InstantAck) is logged as an error and counted in
// Stats.AckedRetries; an idemq layer inside another (the adapter added
// router-wide and per handler) passes through and is counted in
// Stats.DoubleWrapped, because the inner claim would find the outer one's
// key Busy forever.
//
// # Dead letters
//
// A dead letter is the original message — same UUID, payload unchanged,
// metadata kept — plus the metadata natsjs writes as headers:
// Idemq-Reason, Idemq-Error, Idemq-Original-Subject (the topic),
// Idemq-Original-Stream and Idemq-Original-Sequence (Config.Origin, else
// empty), Idemq-Consumer (the handler's name), Idemq-Attempts,
// Idemq-Failed-At and Idemq-Host. Published to a JetStream stream through
// watermill-nats, metadata become NATS headers, and `idemq dlq`
// lists, shows and replays them; a replay republishes to the topic with the
// UUID header kept, so the message keeps its identity.
//
// # Outbox
//
// OutboxPublisher is an outbox.Publisher over any message.Publisher, so
// outbox.NewRelay publishes outbox rows through Watermill: UUID = the row
// id, metadata = the row's headers. See OutboxPublisher for which brokers
// drop a republished row.
package idemqwm
