package outbox

import (
	"context"
	"time"
)

// RelayObserver receives what a Relay does: every row it hands to the
// Publisher and the broker's answer, and every round's counts. Metrics and
// traces are built on it (idemqotel.Telemetry.Relay starts a publish span
// per row whose parent is the trace context the writer stored with the row,
// and publishes the row with that span's traceparent). Set it in
// RelayConfig.Observer. It must be safe for concurrent use: the relay's
// Workers call it at once. Embed NopRelayObserver to implement only some
// methods.
type RelayObserver interface {
	// StartPublish is called for each row just before it is handed to the
	// Publisher. m.Header holds the row's stored headers (the writer's
	// traceparent and tracestate among them, see Config.InjectTrace) in a
	// copy made for this publish: the observer may change it, or set it
	// when nil, and the message is published with what it holds. The
	// returned context is given to EndPublish.
	StartPublish(ctx context.Context, m *Outgoing) context.Context
	// EndPublish is called with the broker's answer for the row. lag is
	// the time from the row's created_at (when AddTx ran, on the writer's
	// clock) to the answer (on the relay's clock, RelayConfig.Now), for an
	// acknowledged row; 0 otherwise. A row acknowledged here is marked sent
	// by the round's commit; if that commit fails it is published again.
	EndPublish(ctx context.Context, m *Outgoing, res PublishResult, lag time.Duration)
	// Round is called after each round that claimed rows or failed, once
	// its marks are committed (or with Err when it failed); rounds that
	// found nothing are not reported.
	Round(ctx context.Context, r RelayRound)
}

// RelayRound is one relay round's account, given to RelayObserver.Round.
// Every row the round published is in exactly one of Published, Failed and
// Retried; rows held back for their ordering key are in none.
type RelayRound struct {
	// Claimed is the number of rows the round claimed.
	Claimed int
	// Published is the number of rows acknowledged by the broker and marked
	// sent, Duplicates included.
	Published int
	// Duplicates is how many of those the broker had already stored under
	// the same Nats-Msg-Id.
	Duplicates int
	// Failed is the number of rows marked failed (a permanent rejection).
	Failed int
	// Retried is the number of rows left pending after a transient publish
	// failure, with a backoff.
	Retried int
	// Duration is how long the round took, from its claim to its commit.
	Duration time.Duration
	// Err is why the round failed (the database or the broker did not
	// answer); nil for a committed round. A failed round marked nothing
	// (counts are zero) unless every publish of more than one row failed
	// transiently (the broker is not answering), in which case Retried
	// counts the rows left pending.
	Err error
}

// NopRelayObserver implements RelayObserver and does nothing. Embed it in
// an observer that needs only some of the methods.
type NopRelayObserver struct{}

// StartPublish returns ctx.
func (NopRelayObserver) StartPublish(ctx context.Context, _ *Outgoing) context.Context { return ctx }

// EndPublish does nothing.
func (NopRelayObserver) EndPublish(context.Context, *Outgoing, PublishResult, time.Duration) {}

// Round does nothing.
func (NopRelayObserver) Round(context.Context, RelayRound) {}

// startPublish calls StartPublish for each message of a wave.
func (r *Relay) startPublish(ctx context.Context, msgs []Outgoing) []context.Context {
	octx := make([]context.Context, len(msgs))
	for j := range msgs {
		octx[j] = r.obs.StartPublish(ctx, &msgs[j])
	}
	return octx
}

// endPublish calls EndPublish for each message of a wave, with its lag.
func (r *Relay) endPublish(octx []context.Context, rows []row, sent []int, msgs []Outgoing, res []PublishResult) {
	now := r.o.Now()
	for j, i := range sent {
		var lag time.Duration
		if c := rows[i].CreatedAt; res[j].Err == nil && c.Valid {
			lag = max(now.Sub(c.Time), 0)
		}
		r.obs.EndPublish(octx[j], &msgs[j], res[j], lag)
	}
}
