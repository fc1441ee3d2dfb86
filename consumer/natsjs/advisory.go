package natsjs

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/consumer"
)

// MaxDeliveriesAdvisoryPrefix starts the subject on which the server
// announces a message it stopped redelivering because MaxDeliver was
// reached; the stream and consumer names follow.
const MaxDeliveriesAdvisoryPrefix = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."

// ErrMaxDeliveries is the error of a dead letter for a message the server
// stopped redelivering (reason "exhausted").
var ErrMaxDeliveries = fmt.Errorf("%w: the server reached MaxDeliver", consumer.ErrExhausted)

// MaxDeliveriesSubject returns the advisory subject for stream's consumer.
func MaxDeliveriesSubject(stream, consumerName string) string {
	return MaxDeliveriesAdvisoryPrefix + stream + "." + consumerName
}

// maxDeliveriesAdvisory is the body of a MAX_DELIVERIES advisory
// (io.nats.jetstream.advisory.v1.max_deliver).
type maxDeliveriesAdvisory struct {
	Type       string `json:"type"`
	Stream     string `json:"stream"`
	Consumer   string `json:"consumer"`
	StreamSeq  uint64 `json:"stream_seq"`
	Deliveries uint64 `json:"deliveries"`
}

// advisoryConsumerName names the durable consumer that reads this
// consumer's advisories from the advisory stream.
func (c *Consumer) advisoryConsumerName() string {
	return "idemq_" + c.cfg.Stream + "_" + c.cfg.Durable
}

// setupAdvisories makes sure the advisory stream captures this consumer's
// MAX_DELIVERIES advisories and returns the durable consumer reading them.
func (c *Consumer) setupAdvisories(ctx context.Context) (jetstream.Consumer, error) {
	subject := MaxDeliveriesSubject(c.cfg.Stream, c.cfg.Durable)
	name := c.cfg.AdvisoryStream
	s, err := c.js.Stream(ctx, name)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		_, err = c.js.CreateStream(ctx, jetstream.StreamConfig{
			Name:     name,
			Subjects: []string{subject},
			Storage:  jetstream.FileStorage,
			MaxAge:   DefaultAdvisoryMaxAge,
		})
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return c.setupAdvisories(ctx) // created concurrently: add our subject
		}
		if err != nil {
			return nil, fmt.Errorf("natsjs: create advisory stream %s: %w", name, c.overlapHint(ctx, []string{subject}, err))
		}
	case err != nil:
		return nil, fmt.Errorf("natsjs: advisory stream %s: %w", name, err)
	default:
		sc := s.CachedInfo().Config
		if !slices.ContainsFunc(sc.Subjects, func(pattern string) bool { return subjectCovers(pattern, subject) }) {
			sc.Subjects = append(sc.Subjects, subject)
			if _, err := c.js.UpdateStream(ctx, sc); err != nil {
				return nil, fmt.Errorf("natsjs: add %s to advisory stream %s: %w", subject, name, c.overlapHint(ctx, []string{subject}, err))
			}
		}
	}
	cons, err := c.js.CreateOrUpdateConsumer(ctx, name, jetstream.ConsumerConfig{
		Durable:       c.advisoryConsumerName(),
		FilterSubject: subject,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       DefaultAckWait,
		MaxDeliver:    -1,
	})
	if err != nil {
		return nil, fmt.Errorf("natsjs: advisory consumer on %s: %w", name, err)
	}
	return cons, nil
}

// advisoryBatch is how many captured advisories the watcher buffers.
const advisoryBatch = 16

// watchAdvisories dead-letters, with reason exhausted, every message named
// by a captured MAX_DELIVERIES advisory, until ctx ends. An advisory is
// acknowledged only once its message is dead-lettered (or gone from the
// stream); otherwise it is redelivered after DeadLetter.RetryDelay.
// Advisories still buffered at shutdown are redelivered to the next Run
// after the advisory consumer's AckWait.
func (c *Consumer) watchAdvisories(ctx context.Context, adv jetstream.Consumer) {
	var stream jetstream.Stream
	stopped := make(chan struct{})
	var once sync.Once
	stop := func() { once.Do(func() { close(stopped) }) }
	cc, err := adv.Consume(func(msg jetstream.Msg) {
		if ctx.Err() != nil {
			return // redelivered after AckWait
		}
		if stream == nil {
			var err error
			if stream, err = c.js.Stream(ctx, c.cfg.Stream); err != nil {
				stream = nil
				c.log.Warn("natsjs: stream lookup for a MAX_DELIVERIES advisory failed; retrying", "err", err)
				_ = msg.NakWithDelay(c.cfg.DeadLetter.RetryDelay)
				return
			}
		}
		c.deadLetterAdvised(ctx, stream, msg)
	},
		jetstream.PullMaxMessages(advisoryBatch),
		jetstream.PullExpiry(c.cfg.PullWait),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if fatal(err) {
				stop()
				return
			}
			c.log.Warn("natsjs: pulling advisories failed; nats.go retries", "err", err)
		}),
	)
	if err != nil {
		c.log.Error("natsjs: cannot consume MAX_DELIVERIES advisories", "err", err)
		return
	}
	select {
	case <-ctx.Done():
	case <-stopped:
	}
	cc.Stop()
	<-cc.Closed()
}

// deadLetterAdvised handles one MAX_DELIVERIES advisory.
func (c *Consumer) deadLetterAdvised(ctx context.Context, stream jetstream.Stream, msg jetstream.Msg) {
	var a maxDeliveriesAdvisory
	if err := json.Unmarshal(msg.Data(), &a); err != nil || a.StreamSeq == 0 {
		c.log.Error("natsjs: unreadable MAX_DELIVERIES advisory; dropping it", "subject", msg.Subject(), "err", err)
		_ = msg.Term()
		return
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.DeadLetter.PublishTimeout)
	defer cancel()
	raw, err := stream.GetMsg(pctx, a.StreamSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		c.log.Warn("natsjs: message named by a MAX_DELIVERIES advisory is no longer in the stream", "sequence", a.StreamSeq)
		_ = msg.Ack()
		return
	}
	if err != nil {
		c.log.Warn("natsjs: fetch of a message named by a MAX_DELIVERIES advisory failed; retrying", "sequence", a.StreamSeq, "err", err)
		_ = msg.NakWithDelay(c.cfg.DeadLetter.RetryDelay)
		return
	}
	consumerName := a.Consumer
	if consumerName == "" {
		consumerName = c.cfg.Durable
	}
	err = c.dl.PublishLetter(pctx, Letter{
		Subject:  raw.Subject,
		Header:   raw.Header,
		Data:     raw.Data,
		Stream:   c.cfg.Stream,
		Sequence: raw.Sequence,
		Consumer: consumerName,
		Attempts: clampInt(a.Deliveries),
		Reason:   consumer.ReasonExhausted,
		Err:      ErrMaxDeliveries,
	})
	if err != nil {
		c.log.Error("natsjs: dead-letter of a message the server gave up on failed; retrying", "sequence", a.StreamSeq, "err", err)
		_ = msg.NakWithDelay(c.cfg.DeadLetter.RetryDelay)
		return
	}
	c.log.Warn("natsjs: dead-lettered a message the server stopped redelivering", "reason", consumer.ReasonExhausted.String(), "sequence", a.StreamSeq, "deliveries", a.Deliveries)
	c.observeAdvised(ctx, raw, clampInt(a.Deliveries))
	_ = msg.Ack()
}

// observeAdvised reports a message dead-lettered from a MAX_DELIVERIES
// advisory to the pipeline's Observer when it is a
// consumer.DeadLetterObserver (reason exhausted, ErrMaxDeliveries).
func (c *Consumer) observeAdvised(ctx context.Context, raw *jetstream.RawStreamMsg, deliveries int) {
	obs, ok := c.pipe.Observer().(consumer.DeadLetterObserver)
	if !ok {
		return
	}
	id := raw.Header.Get(jetstream.MsgIDHeader)
	if id == "" {
		id = c.cfg.Stream + ":" + strconv.FormatUint(raw.Sequence, 10)
	}
	m := &consumer.Message{
		ID:       id,
		Subject:  raw.Subject,
		Header:   raw.Header,
		Data:     raw.Data,
		Attempt:  max(deliveries, 1),
		Received: time.Now(),
		Sequence: raw.Sequence,
	}
	obs.DeadLettered(context.WithoutCancel(ctx), m, consumer.ReasonExhausted, ErrMaxDeliveries)
}
