package dedupe

import (
	"fmt"
	"time"
)

// ValidateRetention returns an error wrapping ErrRetentionTooShort, naming
// both durations, when retention is shorter than horizon, the longest time
// after a first delivery at which the same operation may still arrive (see
// RedeliveryHorizon). A record that expires inside the horizon lets a late
// redelivery run the operation again. Call it at startup: a too-short
// retention is a configuration error, not a silent hole. Equal is accepted.
func ValidateRetention(retention, horizon time.Duration) error {
	if retention < horizon {
		return fmt.Errorf("%w: retention %v < redelivery horizon %v (raise the retention to at least %v, or shorten the backoff, attempts, ack wait or replay window)",
			ErrRetentionTooShort, retention, horizon, horizon)
	}
	return nil
}

// RedeliveryHorizon estimates how long after its first delivery a message
// can still be redelivered: maxAttempts deliveries, each waiting up to
// ackWait for the handler and then up to maxBackoff before the next, plus
// the window during which dead letters may be replayed. Negative inputs
// count as zero.
func RedeliveryHorizon(maxAttempts int, ackWait, maxBackoff, replayWindow time.Duration) time.Duration {
	n := time.Duration(max(maxAttempts, 0))
	return n*(max(ackWait, 0)+max(maxBackoff, 0)) + max(replayWindow, 0)
}
