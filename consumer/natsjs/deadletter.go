package natsjs

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/consumer"
)

// ErrNoSubject is returned by DeadLetterer when its Subject is empty.
var ErrNoSubject = errors.New("natsjs: dead-letter subject is empty")

// Letter is one message to dead-letter: the original message and where it
// came from. DeadLetterer.Publish builds it from a jetstream.Msg; the
// MAX_DELIVERIES path and the outbox build it from a stored message.
type Letter struct {
	// Subject, Header and Data are the original message's. Data is
	// published unchanged and Header is kept, except the server-directive
	// headers (Nats-Expected-*, Nats-Rollup, Nats-TTL, Nats-Schedule*,
	// Nats-Batch-*) that would make the dead-letter publish fail or act on
	// the dead-letter stream.
	Subject string
	Header  nats.Header
	Data    []byte
	// Stream and Sequence locate the original; they form the dead letter's
	// Nats-Msg-Id "<Stream>:<Sequence>", so dead-lettering the same message
	// twice within the dead-letter stream's duplicate window stores it once.
	Stream   string
	Sequence uint64
	// Consumer is the durable consumer name.
	Consumer string
	// Attempts is the number of deliveries.
	Attempts int
	// Reason is why the message is dead-lettered.
	Reason consumer.Reason
	// Err is the error behind it; nil leaves Idemq-Error empty.
	Err error
}

// DeadLetterer publishes dead letters to a JetStream subject with the idemq
// dead-letter headers and waits for the stream's acknowledgement. Set its
// fields before first use; it is then safe for concurrent use.
type DeadLetterer struct {
	// JS publishes. Required.
	JS jetstream.JetStream
	// Subject receives the dead letters, e.g. "dlq.payments", or a
	// template with {stream}, {reason} and {subject} placeholders (see
	// DeadLetterConfig.Subject). A stream must capture it. Required.
	Subject string
	// Stream, when set, is the stream expected to store the dead letters
	// (the publish fails if another stream answers). Empty: any stream.
	Stream string
	// Host fills Idemq-Host. Empty means os.Hostname().
	Host string
	// Now is the clock for Idemq-Failed-At. Nil means time.Now.
	Now func() time.Time
}

// Publish dead-letters msg, a message delivered by a JetStream consumer,
// with reason and cause: its metadata gives the stream, sequence, consumer
// and attempts (its delivery count). It returns nil once the dead-letter
// stream has stored the message (or recognised it as a duplicate); only
// then may the caller Term msg. On error the caller must redeliver msg
// later (NakWithDelay).
func (d *DeadLetterer) Publish(ctx context.Context, msg jetstream.Msg, reason consumer.Reason, cause error) error {
	l, err := LetterOf(msg, reason, cause, -1)
	if err != nil {
		return err
	}
	return d.PublishLetter(ctx, l)
}

// LetterOf builds the Letter of msg, a message delivered by a JetStream
// consumer, from its metadata. attempts fills Letter.Attempts; a negative
// value means the delivery count.
func LetterOf(msg jetstream.Msg, reason consumer.Reason, cause error, attempts int) (Letter, error) {
	md, err := msg.Metadata()
	if err != nil {
		return Letter{}, fmt.Errorf("natsjs: dead-letter: message metadata: %w", err)
	}
	if attempts < 0 {
		attempts = clampInt(md.NumDelivered)
	}
	return Letter{
		Subject:  msg.Subject(),
		Header:   msg.Headers(),
		Data:     msg.Data(),
		Stream:   md.Stream,
		Sequence: md.Sequence.Stream,
		Consumer: md.Consumer,
		Attempts: attempts,
		Reason:   reason,
		Err:      cause,
	}, nil
}

// PublishLetter publishes l to the dead-letter subject and waits for the
// stream's acknowledgement (see Publish).
func (d *DeadLetterer) PublishLetter(ctx context.Context, l Letter) error {
	if d.Subject == "" {
		return ErrNoSubject
	}
	if _, err := parseRoute(d.Subject); err != nil {
		return err
	}
	out := d.Msg(l)
	var opts []jetstream.PublishOpt
	if d.Stream != "" {
		opts = append(opts, jetstream.WithExpectStream(d.Stream))
	}
	if _, err := d.JS.PublishMsg(ctx, out, opts...); err != nil {
		return fmt.Errorf("natsjs: dead-letter %s:%d to %s: %w", l.Stream, l.Sequence, out.Subject, err)
	}
	return nil
}

// Msg builds the dead-letter message for l without publishing it.
func (d *DeadLetterer) Msg(l Letter) *nats.Msg {
	h := make(nats.Header, len(l.Header)+11)
	for k, v := range l.Header {
		if k == jetstream.MsgIDHeader {
			if len(v) > 0 && v[0] != "" {
				h.Set(consumer.HeaderOriginalMsgID, v[0])
			}
			continue
		}
		if directive(k) {
			continue
		}
		h[k] = append([]string(nil), v...)
	}
	now := time.Now
	if d.Now != nil {
		now = d.Now
	}
	host := d.Host
	if host == "" {
		host, _ = os.Hostname()
	}
	errText := ""
	if l.Err != nil {
		errText = consumer.ErrorText(l.Err)
	}
	h.Set(consumer.HeaderReason, l.Reason.String())
	h.Set(consumer.HeaderError, errText)
	h.Set(consumer.HeaderOriginalSubject, l.Subject)
	h.Set(consumer.HeaderOriginalStream, l.Stream)
	h.Set(consumer.HeaderOriginalSequence, strconv.FormatUint(l.Sequence, 10))
	h.Set(consumer.HeaderConsumer, l.Consumer)
	h.Set(consumer.HeaderAttempts, strconv.Itoa(l.Attempts))
	h.Set(consumer.HeaderFailedAt, now().UTC().Format(time.RFC3339))
	h.Set(consumer.HeaderHost, host)
	h.Set(jetstream.MsgIDHeader, l.Stream+":"+strconv.FormatUint(l.Sequence, 10))
	subject := d.Subject
	if rt, err := parseRoute(d.Subject); err == nil {
		subject = rt.subject(l.Stream, l.Reason, l.Subject)
	}
	return &nats.Msg{Subject: subject, Header: h, Data: l.Data}
}

// directive reports headers that instruct the server on publish; copying
// them onto a dead letter would make its publish fail (Nats-Expected-*) or
// act on the dead-letter stream (Nats-Rollup purges it).
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

func clampInt(n uint64) int {
	if n > uint64(int(^uint(0)>>1)) {
		return int(^uint(0) >> 1)
	}
	return int(n)
}
