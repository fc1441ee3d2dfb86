// Package idemqotel is idemq's OpenTelemetry instrumentation: metrics and
// traces for the consumer pipeline (and so natsjs and the Watermill
// adapter), the outbox relay and the HTTP idempotency middleware, built on
// their observer hooks (consumer.Observer, outbox.RelayObserver,
// httpdedupe.Observer). It uses only the OpenTelemetry API; the program
// chooses the SDK and the exporter (Prometheus, OTLP).
//
//	tel, err := idemqotel.New(idemqotel.Config{MeterProvider: mp, TracerProvider: tp})
//	ob, _ := outbox.New(ctx, db, outbox.Config{InjectTrace: tel.InjectTrace})
//	relay, _ := outbox.NewRelay(db, outbox.JetStream(js), outbox.RelayConfig{Observer: tel.Relay()})
//	cons, _ := natsjs.New(js, natsjs.Config{Stream: "PAYMENTS", Durable: "worker", Store: store,
//		Pipeline: consumer.Config{Observer: tel.Consumer(idemqotel.ConsumerOptions{Group: "worker"})}}, h)
//	api := httpdedupe.New(guard, httpdedupe.Config{Observer: tel.HTTP()})(mux)
//	_, _ = tel.ObserveOutbox(db, ob) // backlog gauges, read at collection
//
// # Metrics
//
// Durations are histograms in seconds. Attributes follow the semantic
// conventions for messaging where they apply (messaging.system "nats",
// messaging.destination.name, messaging.consumer.group.name,
// messaging.operation.name, error.type), plus idemq's own:
//
//	messaging.process.duration     s          a delivery through the pipeline, by idemq.outcome; with
//	                                          ConsumerOptions.ProcessDuration (off by default)
//	idemq.consumer.messages        {message}  deliveries by idemq.outcome: ack, retry, dead_letter, interrupted, unavailable
//	idemq.dedupe.claims            {claim}    claims by idemq.dedupe.outcome: acquired, takeover, duplicate, busy,
//	                                          conflict, invalid, store_error; idemq.component: consumer, http
//	idemq.dead_letters             {message}  dead letters stored, by idemq.dead_letter.reason
//	idemq.retry.delay              s          redelivery delays by idemq.retry.cause: transient, busy, unavailable,
//	                                          lease_lost, budget, snooze (the count is the number of retries)
//	idemq.handler.duration         s          handler runs, by idemq.component: http always; consumer with
//	                                          ConsumerOptions.HandlerDuration (off by default)
//	idemq.dedupe.store.duration    s          store calls by idemq.dedupe.operation: claim, complete, release,
//	                                          delete, extend, snooze; error.type on failure; a consumer's
//	                                          successful calls sampled (ConsumerOptions.StoreDurationEvery:
//	                                          one in 16 by default), its failed ones all
//	idemq.consumer.paused          {consumer} 1 while paused, by idemq.dependency: store, dead_letter,
//	                                          handler_dependency
//	idemq.consumer.pauses          {pause}    pauses, by idemq.dependency
//	messaging.client.sent.messages {message}  rows the relay handed to the broker, by destination; error.type on failure
//	idemq.outbox.lag               s          a row's AddTx to its PubAck
//	idemq.outbox.claimed           {row}      rows claimed by relay rounds
//	idemq.outbox.rows              {row}      rows by idemq.outbox.result: published, duplicate, failed, retried
//	idemq.outbox.rounds            {round}    rounds that claimed rows or failed (error.type on failure)
//	idemq.outbox.round.duration    s          rounds, claim to commit
//	idemq.outbox.backlog           {row}      rows by idemq.outbox.state: pending, failed (ObserveOutbox)
//	idemq.outbox.oldest_pending.age s         age of the oldest pending row (ObserveOutbox)
//	idemq.http.requests            {request}  unsafe requests by idemq.dedupe.outcome, http.request.method,
//	                                          http.response.status_code
//
// The Prometheus exporter names them with underscores and unit suffixes:
// idemq_consumer_messages_total, idemq_dedupe_store_duration_seconds_bucket,
// and so on; docs/grafana/idemq.json is a dashboard over them.
//
// # Traces
//
// One trace runs from the HTTP request through the outbox and the relay to
// the worker, and on through the worker's own outbox:
//
//	PUT /payments (server; or idemq.idempotency under otelhttp's span)
//	├── idemq.dedupe.claim
//	├── idemq.handler ── the outbox row stores its traceparent (InjectTrace)
//	└── idemq.dedupe.complete
//	send payments.requested (producer; parent: the row's stored context; the message carries its traceparent)
//	└── process payments.requested (consumer; parent: the message's traceparent)
//	    ├── idemq.dedupe.claim
//	    ├── idemq.handler ── its outbox rows continue the trace
//	    └── idemq.dedupe.complete
//
// The process span carries idemq.outcome, idemq.dedupe.outcome and, where
// they apply, idemq.dead_letter.reason, idemq.retry.cause and
// idemq.retry.delay; it is marked as an error for dead letters and failed
// attempts. Message headers are read with a carrier that accepts both
// "traceparent" (NATS keeps case) and "Traceparent" (HTTP).
package idemqotel
