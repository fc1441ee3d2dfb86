package idemqwm

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemq/idemq/consumer"
)

// headerMsgID is the JetStream deduplication header. Watermill metadata
// becomes NATS headers with watermill-nats, so a dead letter must not carry
// the original's id: it moves to consumer.HeaderOriginalMsgID, as natsjs
// does.
const headerMsgID = "Nats-Msg-Id"

// deadLetter is the pipeline's consumer.DeadLetterFunc: it publishes the
// poison message and waits up to PublishTimeout.
func (a *Adapter) deadLetter(ctx context.Context, m *consumer.Message, l consumer.DeadLetterInfo) error {
	msg, ok := m.Native.(*message.Message)
	if !ok {
		return fmt.Errorf("idemqwm: dead-letter: message %s is not a *message.Message", m.ID)
	}
	poison := a.PoisonMessage(msg, l)
	pctx, cancel := context.WithTimeout(ctx, a.cfg.PublishTimeout)
	defer cancel()
	poison.SetContext(pctx)
	if err := publish(pctx, a.cfg.PoisonPublisher, a.cfg.PoisonTopic, poison); err != nil {
		return fmt.Errorf("idemqwm: dead-letter %s to %s: %w", msg.UUID, a.cfg.PoisonTopic, err)
	}
	return nil
}

// publish runs pub.Publish(topic, msgs...) and waits for it until ctx ends:
// Watermill's Publish takes no context. A publish still running then goes
// on in its goroutine until the publisher returns; its result is dropped.
func publish(ctx context.Context, pub message.Publisher, topic string, msgs ...*message.Message) error {
	done := make(chan error, 1)
	go func() { done <- pub.Publish(topic, msgs...) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		select {
		case err := <-done:
			return err
		default:
		}
		return fmt.Errorf("%w: %w", ErrPoisonTimeout, context.Cause(ctx))
	}
}

// PoisonMessage builds the dead letter of msg as l describes, without
// publishing it: the same UUID (so a re-dead-letter after a crash is the
// same message, and a replay keeps its identity), the payload unchanged,
// the metadata kept except the NATS server directives (Nats-Expected-*,
// Nats-Rollup, Nats-TTL, …) and Nats-Msg-Id, which moves to
// Idemq-Original-Msg-Id; plus the idemq dead-letter metadata, with the
// names and values natsjs writes:
//
//	Idemq-Reason             permanent | exhausted | conflict | invalid
//	Idemq-Error              consumer.ErrorText(l.Err), "" without one
//	Idemq-Original-Subject   the subscribed topic (message.SubscribeTopicFromCtx)
//	Idemq-Original-Stream    Config.Origin's stream, else ""
//	Idemq-Original-Sequence  Config.Origin's sequence, else ""
//	Idemq-Consumer           Config.Consumer, else the router handler's name
//	Idemq-Attempts           l.Attempts: handler runs counted in the dedupe record
//	Idemq-Failed-At          now, RFC 3339 in UTC
//	Idemq-Host               Config.Hostname
func (a *Adapter) PoisonMessage(msg *message.Message, l consumer.DeadLetterInfo) *message.Message {
	id := msg.UUID
	if id == "" {
		id = watermill.NewUUID()
	}
	out := message.NewMessage(id, msg.Payload)
	for k, v := range msg.Metadata {
		if k == headerMsgID {
			if v != "" {
				out.Metadata.Set(consumer.HeaderOriginalMsgID, v)
			}
			continue
		}
		if directive(k) {
			continue
		}
		out.Metadata.Set(k, v)
	}
	ctx := msg.Context()
	var stream, seq string
	if a.cfg.Origin != nil {
		stream, seq = a.cfg.Origin(msg)
	}
	name := a.cfg.Consumer
	if name == "" {
		name = message.HandlerNameFromCtx(ctx)
	}
	errText := ""
	if l.Err != nil {
		errText = consumer.ErrorText(l.Err)
	}
	md := out.Metadata
	md.Set(consumer.HeaderReason, l.Reason.String())
	md.Set(consumer.HeaderError, errText)
	md.Set(consumer.HeaderOriginalSubject, message.SubscribeTopicFromCtx(ctx))
	md.Set(consumer.HeaderOriginalStream, stream)
	md.Set(consumer.HeaderOriginalSequence, seq)
	md.Set(consumer.HeaderConsumer, name)
	md.Set(consumer.HeaderAttempts, strconv.Itoa(l.Attempts))
	md.Set(consumer.HeaderFailedAt, a.cfg.Now().UTC().Format(time.RFC3339))
	md.Set(consumer.HeaderHost, a.cfg.Hostname)
	return out
}

// directive reports metadata that watermill-nats would send as a NATS
// header instructing the server on publish: copied onto a dead letter it
// would make the publish fail (Nats-Expected-*) or act on the dead-letter
// stream (Nats-Rollup purges it). The same list as natsjs.
func directive(k string) bool {
	switch {
	case strings.HasPrefix(k, "Nats-Expected-"),
		k == "Nats-Rollup",
		k == "Nats-TTL",
		strings.HasPrefix(k, "Nats-Schedule"),
		strings.HasPrefix(k, "Nats-Batch-"),
		k == "Nats-Incr",
		k == "Nats-Required-Api-Level":
		return true
	}
	return false
}
