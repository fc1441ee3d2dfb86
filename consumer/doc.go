// Package consumer is idemq's transport-neutral message pipeline: it makes an
// at-least-once handler safe to retry.
//
// A transport adapter (consumer/natsjs for NATS JetStream) translates each
// delivery into a Message, calls Pipeline.Process, and translates the
// returned Outcome into broker actions. The pipeline is the one place that
// orders the pieces, so they cannot be ordered wrongly. In order:
//
//	dedupe claim (Config.Guard, optional)
//	  invalid input (no key, not JSON)   → DeadLetter "invalid"
//	  store error                        → Retry after the backoff (the handler never runs unclaimed)
//	  Busy (another attempt is running)  → Retry after the lease remainder
//	  Duplicate                          → Ack; Outcome.Replay holds the stored result
//	  Conflict (same key, other body)    → DeadLetter "conflict"
//	delivery past the policy's attempts  → DeadLetter "exhausted", handler not run
//	handler, panics recovered, heartbeat (Message.KeepAlive and Guard.Extend
//	  every Config.HeartbeatInterval)
//	handler's error
//	  nil                → Complete with the SetResult data, Ack
//	  Reject(data, err)  → Complete as failed (stored and replayed), Ack; never retried
//	  wraps ErrConflict  → Release, DeadLetter "conflict"
//	  Invalid(err), or dedupe.IsInvalidInput(err)
//	                     → Release, DeadLetter "invalid"
//	  retry.Permanent    → Release, DeadLetter "permanent" (checked after the two
//	                       above, so retry.Permanent(ErrConflict) is "conflict")
//	  transient or panic → Release; DeadLetter "exhausted" when Attempt reached the
//	                       policy's attempts, else Retry after Policy.Delay(Attempt) or
//	                       the retry.After delay, raised to Config.BudgetDelay when the
//	                       retry budget is empty
//
// Claims are released, never completed, on failures: a failed handler must
// not leave a record that makes its redelivery look like a duplicate, and a
// dead letter replayed later must be able to run. Attempts are the broker's
// delivery count, so they survive crashes; every delivery counts, including
// those answered Busy.
//
// When the handler returns nil but recording its result fails (the lease
// was taken over, or the store is down), the message is still acked: the
// work is done, and redelivering would run it again for certain.
//
// When the context given to Process ends (shutdown), the Outcome is a Retry
// marked Interrupted, never a dead letter.
//
// The dead-letter Reason values are a wire format (the Idemq-Reason header):
// "permanent", "exhausted", "conflict", "invalid".
package consumer
