// Package consumer is idemq's transport-neutral message pipeline: it makes an
// at-least-once handler safe to retry.
//
// A transport adapter (consumer/natsjs for NATS JetStream) translates each
// delivery into a Message, calls Pipeline.Process, and translates the
// returned Outcome into broker actions. The pipeline is the one place that
// orders the pieces, so they cannot be ordered wrongly. In order:
//
//	dedupe claim (Config.Guard, optional)
//	  invalid input (no key, bad JSON)   → DeadLetter "invalid"
//	  store did not answer               → Retry after UnavailableDelay, Unavailable=store
//	                                       (the handler never runs unclaimed; no attempt used)
//	  Busy (another attempt is running)  → Retry after min(lease remainder, BusyRecheck);
//	                                       Wait closes when a local original ends
//	  Duplicate                          → Ack; Outcome.Replay holds the stored result
//	  Conflict (same key, other body)    → DeadLetter "conflict"
//	attempt past the policy's attempts,
//	  or delivery past MaxDeliveries     → DeadLetter "exhausted", handler not run
//	handler, panics recovered, heartbeat (Message.KeepAlive and Guard.Extend
//	  every Config.HeartbeatInterval)
//	handler's error
//	  nil                → Complete with the SetResult data, Ack
//	  Reject(data, err)  → Complete as failed (stored and replayed), Ack; never retried
//	  Snooze(d)          → Snooze (the lease given back uncounted), Retry after d
//	  lease lost         → Retry after a lease (the other attempt answers)
//	  wraps ErrConflict  → DeadLetter "conflict"
//	  Invalid(err), or dedupe.IsInvalidInput(err)
//	                     → DeadLetter "invalid"
//	  retry.Permanent    → DeadLetter "permanent" (checked after the two
//	                       above, so retry.Permanent(ErrConflict) is "conflict")
//	  transient or panic → DeadLetter "exhausted" when the attempt reached the
//	                       policy's attempts, else Release and Retry after
//	                       Policy.Delay(attempt) or the retry.After delay,
//	                       raised to Config.BudgetDelay when the retry budget is empty
//
// # Attempts
//
// With a Guard, attempts are runs of the handler, counted durably in the
// dedupe record: each claim that is Acquired (first, after a Release, or a
// takeover after a crash) is the next attempt (dedupe.Claim.Attempt). A
// delivery that does not run the handler — the store did not answer, the
// key was Busy, the dead-letter publish failed, the consumer shut down
// before it started — uses no attempt, so an outage of the store or of the
// dead-letter queue never dead-letters a message whose handler did not run.
// The transport's delivery count only backs this with a high safety cap
// (Config.MaxDeliveries, 1000 by default). Without a Guard there is no
// durable record, and attempts are the transport's delivery count.
//
// # Dead letters
//
// With Config.DeadLetter (transports set it) the pipeline publishes dead
// letters itself. The claim is kept until the dead-letter queue has stored
// the message, then deleted, so that a replay from the queue runs again
// from attempt 1. A failed publish releases the claim, keeping its attempt
// count, and retries the message (Outcome.Unavailable=dead_letter): a
// message is never lost, and one whose attempts are used up is
// dead-lettered on its redelivery without running again.
//
// Failures never complete a claim: a failed handler must not leave a
// record that makes its redelivery look like a duplicate.
//
// # Outages
//
// Outcome.Unavailable tells the transport that a dependency did not answer.
// Transports do not churn through messages then: natsjs stops pulling,
// hands the messages it holds back, probes the dependency with a capped
// exponential interval (dedupe.Pinger for stores) and resumes when it
// answers.
//
// When the handler returns nil but recording its result fails (the lease
// was taken over, or the store is down), the message is still acked: the
// work is done, and redelivering would run it again for certain.
//
// When the context given to Process ends (shutdown), the Outcome is a Retry
// marked Interrupted, never a dead letter.
//
// # Observing
//
// Config.Observer sees each delivery: the claim's answer (ClaimResult:
// acquired, takeover, duplicate, busy, conflict, invalid, store_error),
// every dedupe store call with its latency (StoreOp: claim, complete,
// release, delete, extend, snooze), the handler's run and duration, and
// the Outcome with the delivery's duration (Delivery). Transports report their pauses
// to an Observer that implements PauseObserver. Package idemqotel builds
// OpenTelemetry metrics and traces on it; tests can assert on outcomes with
// OutcomeFunc. A nil Observer costs nothing.
//
// The dead-letter Reason values are a wire format (the Idemq-Reason header):
// "permanent", "exhausted", "conflict", "invalid".
package consumer
