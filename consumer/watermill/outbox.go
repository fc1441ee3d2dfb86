package idemqwm

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemq/idemq/outbox"
)

// DefaultOutboxConcurrency is OutboxConfig.Concurrency when zero: 8.
const DefaultOutboxConcurrency = 8

// ErrMultiValueHeader is wrapped by the error of an outbox row with a header
// of several values: Watermill metadata holds one value per key, and the
// row is not published altered. The relay marks it failed (Rejected).
var ErrMultiValueHeader = errors.New("idemqwm: header with several values cannot be Watermill metadata")

// OutboxConfig configures an OutboxPublisher. Its zero value means
// defaults.
type OutboxConfig struct {
	// IDMetadata, when set, also writes the row id into this metadata key
	// (the message UUID always carries it). Use "Nats-Msg-Id" with
	// watermill-nats' pkg/jetstream publisher, which has no TrackMsgId, so
	// that JetStream drops republishes; or the key your consumers' guard
	// reads (dedupe.HeaderKey), when rows carry no Idempotency-Key of
	// their own. Empty: none.
	IDMetadata string
	// Concurrency is how many Watermill publishes one relay round runs at
	// once (each row is one Publish call, so each gets its own result).
	// Default DefaultOutboxConcurrency (8); 1 publishes in order.
	Concurrency int
}

// OutboxPublisher is an outbox.Publisher over a Watermill message.Publisher:
// the relay publishes outbox rows through any Watermill pub/sub. Each row
// becomes a message with UUID = the row id, metadata = the row's headers
// (one value each), payload = the row's data, published to the row's
// subject as the topic. Build it with NewOutboxPublisher and pass it to
// outbox.NewRelay.
//
// A relay that dies between a publish and marking the row sent publishes
// the row again, with the same UUID. Whether the broker drops that copy
// depends on the pub/sub:
//
//	watermill-nats pkg/nats, JetStream with TrackMsgId   yes: Nats-Msg-Id = UUID, within the stream's Duplicates window
//	watermill-nats pkg/jetstream                          only with IDMetadata "Nats-Msg-Id" (metadata become headers)
//	AMQP, SQL, Kafka, gochannel                           no broker dedupe: the consumer's dedupe drops it (key = UUID
//	                                                      with dedupe.MessageIDKey, or the row's Idempotency-Key)
//
// Watermill reports no duplicates, so PublishResult.Duplicate is always
// false; PublishResult.Rejected is set for errors outbox.Rejected
// recognises (a NATS message too large, a bad subject, a 4xx JetStream
// API error) and for rows whose headers cannot become metadata; every
// other error leaves the row pending, retried with the relay's backoff.
type OutboxPublisher struct {
	pub message.Publisher
	cfg OutboxConfig
}

// NewOutboxPublisher returns the outbox.Publisher that publishes through
// pub. It fails when pub is nil.
func NewOutboxPublisher(pub message.Publisher, cfg OutboxConfig) (*OutboxPublisher, error) {
	if pub == nil {
		return nil, fmt.Errorf("%w: the Watermill publisher is nil", ErrInvalidConfig)
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultOutboxConcurrency
	}
	return &OutboxPublisher{pub: pub, cfg: cfg}, nil
}

var _ outbox.Publisher = (*OutboxPublisher)(nil)

// Message builds the Watermill message of an outbox row, or fails with
// ErrMultiValueHeader.
func (p *OutboxPublisher) Message(x outbox.Outgoing) (*message.Message, error) {
	m := message.NewMessage(x.ID, x.Data)
	for k, v := range x.Header {
		switch len(v) {
		case 0:
		case 1:
			m.Metadata.Set(k, v[0])
		default:
			return nil, fmt.Errorf("%w: %q has %d values", ErrMultiValueHeader, k, len(v))
		}
	}
	if p.cfg.IDMetadata != "" {
		m.Metadata.Set(p.cfg.IDMetadata, x.ID)
	}
	return m, nil
}

// Publish implements outbox.Publisher: it publishes msgs[i] with its own
// Publish call, Concurrency at a time, and fills res[i]. Each message's
// context carries the deadline (publishers that honour it, AMQP and SQL,
// stop then); a row whose publish has not returned by timeout gets
// outbox.ErrPublishTimeout, and the publish goes on in its goroutine
// until the Watermill publisher returns, its result dropped (the relay
// republishes the row later). It returns an error only when ctx ended.
func (p *OutboxPublisher) Publish(ctx context.Context, msgs []outbox.Outgoing, res []outbox.PublishResult, timeout time.Duration) error {
	type result struct {
		i   int
		err error
	}
	pctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	done := make(chan result, len(msgs)) // buffered: late publishes never block
	slots := make(chan struct{}, p.cfg.Concurrency)
	pending := make([]bool, len(msgs))
	started := 0
	for i, x := range msgs {
		m, err := p.Message(x)
		if err != nil {
			res[i] = outbox.PublishResult{Err: err, Rejected: true}
			continue
		}
		m.SetContext(pctx)
		select {
		case slots <- struct{}{}:
		case <-pctx.Done():
		}
		if pctx.Err() != nil {
			res[i] = outbox.PublishResult{Err: outbox.ErrPublishTimeout}
			continue
		}
		pending[i] = true
		started++
		go func() {
			defer func() { <-slots }()
			done <- result{i, p.pub.Publish(x.Subject, m)}
		}()
	}
	record := func(r result) {
		pending[r.i] = false
		res[r.i] = outbox.PublishResult{Err: r.err, Rejected: outbox.Rejected(r.err)}
	}
wait:
	for ; started > 0; started-- {
		select {
		case r := <-done:
			record(r)
		case <-pctx.Done():
			break wait
		}
	}
	for drained := false; !drained; { // what returned by the deadline
		select {
		case r := <-done:
			record(r)
		default:
			drained = true
		}
	}
	for i, running := range pending {
		if running {
			res[i] = outbox.PublishResult{Err: outbox.ErrPublishTimeout}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return nil
}
