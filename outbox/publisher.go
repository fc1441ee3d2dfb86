package outbox

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Outgoing is one outbox row on its way to the broker.
type Outgoing struct {
	// ID is the row's stable id: the broker's message id where the broker
	// dedupes by one (JetStream: Nats-Msg-Id).
	ID string
	// Subject is the subject (topic) to publish to.
	Subject string
	// Header holds the row's headers.
	Header map[string][]string
	// Data is the body.
	Data []byte
}

// PublishResult is the broker's answer for one Outgoing message.
type PublishResult struct {
	// Err is nil when the broker acknowledged the message.
	Err error
	// Rejected marks an Err that is the broker's verdict on the message
	// itself (too large, malformed, no stream for its subject): the relay
	// marks the row failed instead of retrying it. Outages (timeouts, no
	// responders, a stream without a leader) are never Rejected.
	Rejected bool
	// Duplicate is true when the broker recognised the message id and
	// dropped the message as a republish.
	Duplicate bool
	// Stream names the JetStream stream that stored the message ("" for
	// other brokers).
	Stream string
}

// Publisher publishes outbox rows for the Relay. JetStream is the
// built-in one; any broker with acknowledged publishes can plug in (see
// the Watermill adapter).
type Publisher interface {
	// Publish publishes msgs and fills res[i] for msgs[i], waiting at most
	// timeout for acknowledgements; a message without one by then gets
	// ErrPublishTimeout. Messages go out in the order given only as far as
	// the broker keeps it; the relay sends at most one message per
	// ordering key per call. It returns an error only when ctx ended.
	Publish(ctx context.Context, msgs []Outgoing, res []PublishResult, timeout time.Duration) error
}

// JetStreamPublisher publishes outbox rows to NATS JetStream with
// Nats-Msg-Id = the row id, asynchronously, waiting for every PubAck; the
// streams' Duplicates windows drop republishes. Build it with JetStream.
//
// On nats.go's own JetStream context (what jetstream.New and its variants
// return) it publishes on the context's connection with reply subjects of
// its own, one subscription answering them all, and reads the PubAcks
// itself: no PubAckFuture, channel, timer or JSON decoding per message, and
// no async window (PublishAsyncMaxPending does not apply). A PubAck that
// does not come within the timeout is given up, and one that comes later is
// dropped. A "no responders" answer (no stream captures the subject, or
// its stream is between leaders) is the message's result at once, where
// PublishMsgAsync would first republish it twice 250ms apart: the relay
// retries the row with its own backoff. The PubAcks' subscription is made
// on the first Publish and lasts as long as the connection: make one
// JetStreamPublisher per relay, not one per round. Any other
// implementation of jetstream.JetStream (a tracing wrapper, a test double)
// is published through with PublishMsgAsync, so that it sees every
// publish.
type JetStreamPublisher struct {
	js jetstream.JetStream

	// async is the context PublishMsgAsync goes through: a wrapped context
	// as given, or, should the PubAck subscription fail, a context of the
	// same connection with an ack timeout (WithPublishAsyncTimeout), so
	// that a PubAck that never comes frees its slot in the async window
	// instead of holding it for good. Made on the first Publish.
	once     sync.Once
	async    jetstream.JetStream
	asyncErr error

	// acks publishes on nats.go's own context and routes its PubAcks;
	// made on the first Publish.
	acks *ackRouter
}

// JetStream returns the Publisher that publishes through js.
func JetStream(js jetstream.JetStream) *JetStreamPublisher {
	return &JetStreamPublisher{js: js}
}

// isNATSJetStream reports whether js is nats.go's own JetStream context
// (what jetstream.New returns), not a wrapper around one.
func isNATSJetStream(js jetstream.JetStream) bool {
	t := reflect.TypeOf(js)
	return t != nil && t.Kind() == reflect.Pointer &&
		t.Elem().PkgPath() == "github.com/nats-io/nats.go/jetstream" && t.Elem().Name() == "jetStream"
}

// asyncContext returns the context the asynchronous publishes of a wrapped
// context go through: js itself, given WithPublishAsyncTimeout by its
// owner. nats.go's own context is published on directly (see
// JetStreamPublisher), or through a context of the caller's connection
// whose pending PubAcks expire after timeout, when its reply subscription
// cannot be made.
func (p *JetStreamPublisher) asyncContext(timeout time.Duration) (jetstream.JetStream, *ackRouter, error) {
	p.once.Do(func() {
		if !isNATSJetStream(p.js) {
			// A wrapper (tracing, tests): publish through it as given, so
			// that it sees every publish; give it WithPublishAsyncTimeout
			// yourself.
			p.async = p.js
			return
		}
		if p.acks, p.asyncErr = newAckRouter(p.js.Conn()); p.asyncErr == nil {
			return
		}
		o := p.js.Options()
		opts := []jetstream.JetStreamOpt{jetstream.WithPublishAsyncTimeout(timeout)}
		switch {
		case o.Domain != "":
			p.async, p.asyncErr = jetstream.NewWithDomain(p.js.Conn(), o.Domain, opts...)
		case o.APIPrefix != "":
			p.async, p.asyncErr = jetstream.NewWithAPIPrefix(p.js.Conn(), o.APIPrefix, opts...)
		default:
			p.async, p.asyncErr = jetstream.New(p.js.Conn(), opts...)
		}
	})
	return p.async, p.acks, p.asyncErr
}

// Publish implements Publisher.
func (p *JetStreamPublisher) Publish(ctx context.Context, msgs []Outgoing, res []PublishResult, timeout time.Duration) error {
	async, acks, err := p.asyncContext(timeout)
	if err != nil {
		return fmt.Errorf("outbox: jetstream publishing context: %w", err)
	}
	if acks != nil {
		err = acks.publish(ctx, msgs, res, timeout)
	} else {
		err = publishAsync(ctx, async, msgs, res, timeout)
	}
	if err != nil {
		return err
	}
	p.confirmNoStream(ctx, msgs, res, timeout)
	return nil
}

// publishAsync publishes msgs through js's PublishMsgAsync and waits for
// their PubAckFutures.
func publishAsync(ctx context.Context, async jetstream.JetStream, msgs []Outgoing, res []PublishResult, timeout time.Duration) error {
	futures := make([]jetstream.PubAckFuture, len(msgs))
	for i, x := range msgs {
		msg := &nats.Msg{Subject: x.Subject, Header: nats.Header(x.Header), Data: x.Data}
		// When the context's async window (PublishAsyncMaxPending) is
		// full, wait for room as long as a PubAck may take instead of
		// failing after nats.go's 200ms default: concurrent rounds share
		// the window.
		f, err := async.PublishMsgAsync(msg, jetstream.WithMsgID(x.ID), jetstream.WithStallWait(timeout))
		if err != nil {
			res[i] = publishFailed(err)
			continue
		}
		futures[i] = f
	}
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	expired := false
	for i, f := range futures {
		if f == nil {
			continue
		}
		if expired {
			select {
			case ack := <-f.Ok():
				res[i] = PublishResult{Duplicate: ack.Duplicate, Stream: ack.Stream}
			case err := <-f.Err():
				res[i] = publishFailed(err)
			default:
				res[i] = PublishResult{Err: ErrPublishTimeout}
			}
			continue
		}
		select {
		case ack := <-f.Ok():
			res[i] = PublishResult{Duplicate: ack.Duplicate, Stream: ack.Stream}
		case err := <-f.Err():
			res[i] = publishFailed(err)
		case <-timer.C:
			expired = true
			res[i] = PublishResult{Err: ErrPublishTimeout}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func publishFailed(err error) PublishResult {
	return PublishResult{Err: err, Rejected: Rejected(err)}
}

// confirmNoStream asks the JetStream API, once per subject, whether a
// stream captures the subjects of messages that no stream answered. Only a
// confirmed absence makes such a message Rejected; anything else (a stream
// that exists but has no leader, an API that does not answer) leaves it to
// be retried.
func (p *JetStreamPublisher) confirmNoStream(ctx context.Context, msgs []Outgoing, res []PublishResult, timeout time.Duration) {
	// Bounded: an API that does not answer (a cluster without a meta
	// leader) must not hold the round; the row is then retried.
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	known := map[string]bool{} // subject -> no stream captures it
	for i := range res {
		r := &res[i]
		if r.Err == nil || r.Rejected || !noStreamAnswered(r.Err) {
			continue
		}
		subj := msgs[i].Subject
		missing, ok := known[subj]
		if !ok {
			_, err := p.js.StreamNameBySubject(ctx, subj)
			missing = errors.Is(err, jetstream.ErrStreamNotFound)
			known[subj] = missing
		}
		if missing {
			r.Rejected = true
			r.Err = fmt.Errorf("%w %q: %w", ErrNoStream, subj, r.Err)
		}
	}
}

// jetStream returns the relay's JetStream context when it publishes to
// JetStream, for the streams' Duplicates-window checks; nil otherwise.
func (r *Relay) jetStream() jetstream.JetStream {
	if p, ok := r.pub.(*JetStreamPublisher); ok {
		return p.js
	}
	return nil
}

// Rejected reports whether a publish error is the broker's verdict on the
// message itself, one that republishing cannot change: larger than the
// server's max payload or the stream's max message size, a malformed
// subject or header, or another 4xx JetStream API error (except 408 and
// 429). The relay marks such rows failed. Outages are not verdicts: "no
// responders", "no response from stream", timeouts, 503s and lost
// connections are retried with backoff, whatever their number; a subject
// that no stream answers is marked failed only once the JetStream API
// confirms that no stream captures it.
func Rejected(err error) bool {
	switch {
	case err == nil:
		return false
	case errors.Is(err, nats.ErrMaxPayload),
		errors.Is(err, nats.ErrBadSubject),
		errors.Is(err, nats.ErrBadHeaderMsg),
		errors.Is(err, jetstream.ErrStreamMessageExceedsMaximum):
		return true
	}
	var api *jetstream.APIError
	if errors.As(err, &api) {
		return api.Code >= 400 && api.Code < 500 && api.Code != http.StatusRequestTimeout && api.Code != http.StatusTooManyRequests
	}
	return false
}

// noStreamAnswered reports a publish that no stream acknowledged: either no
// stream captures the subject, or its stream has no leader right now (an
// election, a node down).
func noStreamAnswered(err error) bool {
	return errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders)
}

// ErrNoStream is wrapped by the error of a row marked failed because the
// JetStream API confirmed that no stream captures its subject.
var ErrNoStream = errors.New("outbox: no stream captures the subject")

// checkStreams validates the Duplicates window of RelayConfig.Streams.
func (r *Relay) checkStreams(ctx context.Context) error {
	js := r.jetStream()
	if js == nil {
		return nil // not JetStream: nothing to check
	}
	horizon := r.RedeliveryHorizon()
	for _, name := range r.o.Streams {
		s, err := js.Stream(ctx, name)
		if err != nil {
			return fmt.Errorf("outbox: stream %s: %w", name, err)
		}
		if w := s.CachedInfo().Config.Duplicates; w < horizon {
			return fmt.Errorf("%w: stream %s keeps ids for %v, relay needs %v", ErrDuplicatesWindow, name, w, horizon)
		}
		r.checked.Store(name, struct{}{})
	}
	return nil
}

// checkAcked warns once per stream named by a PubAck whose Duplicates window
// is shorter than the redelivery horizon.
func (r *Relay) checkAcked(ctx context.Context, outs []*outcome) {
	js := r.jetStream()
	if js == nil {
		return
	}
	last := "" // a round's rows mostly name one stream: look each up once
	for _, o := range outs {
		if o == nil || o.stream == "" || o.stream == last {
			continue
		}
		last = o.stream
		if _, seen := r.checked.LoadOrStore(o.stream, struct{}{}); seen {
			continue
		}
		s, err := js.Stream(ctx, o.stream)
		if err != nil {
			r.checked.Delete(o.stream)
			continue
		}
		if w, h := s.CachedInfo().Config.Duplicates, r.RedeliveryHorizon(); w < h {
			r.log.Warn("stream duplicates window is shorter than the relay's redelivery horizon: a republished row may be stored twice",
				"stream", o.stream, "duplicates", w, "horizon", h)
		}
	}
}
