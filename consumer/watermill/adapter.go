package idemqwm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/dedupe"
)

// Defaults applied by New to zero-valued Config fields.
const (
	// DefaultMaxWait is Config.MaxWait when zero: 5 seconds.
	DefaultMaxWait = 5 * time.Second
	// DefaultPublishTimeout is Config.PublishTimeout when zero: 5 seconds.
	DefaultPublishTimeout = 5 * time.Second
)

// PauseThreshold is how many deliveries in a row must find the dedupe store
// or the poison publisher unavailable before the adapter logs an outage
// (once) and starts doubling its in-handler wait: 3, as natsjs. That is the
// adapter's pause: when Config.Pipeline.Observer implements
// consumer.PauseObserver, it hears Paused then (with the dependency and its
// error), and Resumed at the first delivery that finds the dependencies
// answering again (with how long the pause lasted).
const PauseThreshold = 3

// swallowWatch bounds how long the adapter watches a message it handed back
// for redelivery, to see whether something acknowledged it instead.
const swallowWatch = 10 * time.Second

// ErrInvalidConfig is wrapped by New's validation errors.
var ErrInvalidConfig = errors.New("idemqwm: invalid config")

// ErrRedeliver is wrapped by the error the middleware returns when the
// pipeline decided on a retry: the router then Nacks the message and the
// pub/sub redelivers it. The same error wraps the handler's own error (or
// the store's), so errors.Is works for both. An outer middleware that must
// not swallow retries (middleware.Retry's ShouldRetry, a custom filter) can
// test for it.
var ErrRedeliver = errors.New("idemqwm: handed back for redelivery")

// ErrPoisonTimeout is the error of a poison publish that did not return
// within Config.PublishTimeout.
var ErrPoisonTimeout = errors.New("idemqwm: poison publish timed out")

// Config configures an Adapter. Pipeline.Guard, PoisonPublisher and
// PoisonTopic are required; every other field has a default.
type Config struct {
	// Pipeline configures dedupe, the retry policy, the retry budget and
	// logging (see consumer.Config). Pipeline.Guard is required: Watermill
	// has no delivery count, so attempts can only be counted in the dedupe
	// record (runs of the handler, durable across crashes); without a guard
	// a failing message would be retried forever and never be exhausted.
	// Leave Pipeline.DeadLetter nil: the adapter publishes dead letters to
	// PoisonTopic. Pipeline.HeartbeatInterval extends the dedupe lease while
	// a handler runs (default a third of the lease); Watermill has no way to
	// tell a broker that a message is still in progress, so keep the
	// pub/sub's own ack deadline above the handler's duration.
	Pipeline consumer.Config
	// PoisonPublisher publishes dead letters ("poison" messages in
	// Watermill's words) for the reasons permanent, exhausted, conflict and
	// invalid. Any message.Publisher works; publish to a JetStream stream
	// (watermill-nats) and `idemq dlq` lists, shows and replays them.
	// Required.
	PoisonPublisher message.Publisher
	// PoisonTopic is the topic dead letters are published to. Required.
	PoisonTopic string
	// MaxWait caps every wait the adapter does inside the handler before it
	// returns the error that makes the router Nack: the retry policy's
	// backoff, a Busy key's lease remainder, an unavailable dependency's
	// delay. Most Watermill pub/subs redeliver a Nacked message at once
	// (gochannel, AMQP) or after a fixed delay (watermill-sql's
	// ResendInterval, watermill-nats' NakDelay), so the backoff is applied
	// here, holding the message and its router goroutine. Keep it well
	// below the pub/sub's ack deadline (watermill-nats AckWaitTimeout and
	// the JetStream consumer's AckWait, watermill-sql AckDeadline: 30s by
	// default). Default DefaultMaxWait (5s); negative means no wait: the
	// message is Nacked at once and the pub/sub's own delay applies.
	MaxWait time.Duration
	// PublishTimeout bounds one poison publish (Watermill's Publish takes
	// no context; the message's context carries this deadline, which AMQP
	// and SQL publishers honour). A publish still running at the deadline
	// counts as failed: the message is retried, its claim kept with its
	// attempt count; if the late publish succeeds after all, the
	// redelivery dead-letters the message a second time, with the same
	// UUID. Default DefaultPublishTimeout (5s).
	PublishTimeout time.Duration
	// SharedKeys makes every handler share the guard's namespace. By
	// default the adapter appends the router handler's name
	// (message.HandlerNameFromCtx) to Guard.Namespace, so that two handlers
	// consuming the same message (a fan-out: billing and shipping) each run
	// once, instead of the second one finding the first one's record and
	// acking a "duplicate". Set it only when several handler names must
	// dedupe as one. Renaming a handler starts a new namespace.
	SharedKeys bool
	// NoReplayProduced turns off the replay of produced messages. By
	// default the messages a Middleware-wrapped handler returns are stored
	// with the dedupe record (UUID, metadata, payload) and returned again
	// for a duplicate, so that when the router fails to publish them after
	// the record was completed, the redelivery republishes them instead of
	// losing them. Downstream sees the same UUIDs again and dedupes them
	// (by UUID, or Nats-Msg-Id with watermill-nats' TrackMsgId). With
	// NoReplayProduced a duplicate produces nothing, and produced messages
	// whose publish failed are lost.
	NoReplayProduced bool
	// Consumer fills Idemq-Consumer. Default: the router handler's name.
	Consumer string
	// Hostname fills Idemq-Host. Default os.Hostname().
	Hostname string
	// Origin, when set, returns the stream and sequence of a message for
	// Idemq-Original-Stream and Idemq-Original-Sequence (for example from
	// metadata a custom unmarshaler adds). Nil leaves both headers empty:
	// Watermill messages carry no broker position.
	Origin func(msg *message.Message) (stream, sequence string)
	// Now is the clock of Idemq-Failed-At. Default time.Now.
	Now func() time.Time
}

// resolve fills defaults and validates; errors wrap ErrInvalidConfig.
func (cfg Config) resolve() (Config, error) {
	bad := func(format string, args ...any) (Config, error) {
		return Config{}, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	if cfg.Pipeline.Guard == nil {
		return bad("Pipeline.Guard is required: Watermill has no delivery count, so attempts are counted in the dedupe record")
	}
	if cfg.Pipeline.Guard.Store == nil {
		return bad("Pipeline.Guard.Store is nil")
	}
	if cfg.Pipeline.DeadLetter != nil {
		return bad("Pipeline.DeadLetter is set: the adapter publishes dead letters to PoisonTopic; leave it nil")
	}
	if cfg.PoisonPublisher == nil {
		return bad("PoisonPublisher is required: dead letters must go somewhere")
	}
	if cfg.PoisonTopic == "" {
		return bad("PoisonTopic is required")
	}
	if cfg.MaxWait == 0 {
		cfg.MaxWait = DefaultMaxWait
	}
	if cfg.MaxWait < 0 {
		cfg.MaxWait = 0
	}
	if cfg.PublishTimeout <= 0 {
		cfg.PublishTimeout = DefaultPublishTimeout
	}
	if cfg.Hostname == "" {
		cfg.Hostname, _ = os.Hostname()
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return cfg, nil
}

// Adapter runs idemq's consumer.Pipeline inside Watermill: dedupe by
// idempotency key or fingerprint, attempts counted in the dedupe record,
// capped in-handler backoff before the router's Nack, and dead letters
// with idemq's headers to a poison topic. Build it with New, then use
// Middleware (router.AddMiddleware, or Handler.AddMiddleware for one
// handler), NoPublishHandler or Handler. An Adapter is safe for concurrent
// use and may serve several routers and handlers.
type Adapter struct {
	cfg   Config
	log   *slog.Logger
	base  *consumer.Pipeline // SharedKeys, or no handler name
	pipes sync.Map           // handler name → *consumer.Pipeline
	mu    sync.Mutex         // serialises pipeline creation

	streak atomic.Int32           // deliveries in a row that found a dependency down
	pauses consumer.PauseObserver // Pipeline.Observer, when it implements it
	pause  struct {
		sync.Mutex // held while streak rises and a pause opens, and to close it
		on         bool
		dep        consumer.Dependency
		since      time.Time
	}
	watches sync.Map     // *message.Message → chan struct{} (superseded)
	nwatch  atomic.Int64 // watches running: supersede is free while none
	warned  atomic.Bool  // double wrap logged

	stats struct {
		acked, duplicates, retried, deadLettered, unavailable, doubleWrapped, ackedRetries atomic.Int64
	}
}

// New validates cfg (errors wrap ErrInvalidConfig) and returns an Adapter.
// It does no I/O.
func New(cfg Config) (*Adapter, error) {
	cfg, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	a := &Adapter{cfg: cfg, log: cfg.Pipeline.Logger}
	a.pauses, _ = cfg.Pipeline.Observer.(consumer.PauseObserver)
	if a.log == nil {
		a.log = slog.Default()
	}
	a.base, err = a.newPipeline(cfg.Pipeline.Guard)
	if err != nil {
		return nil, err
	}
	return a, nil
}

// Config returns the configuration with defaults applied.
func (a *Adapter) Config() Config { return a.cfg }

func (a *Adapter) newPipeline(g *dedupe.Guard) (*consumer.Pipeline, error) {
	pcfg := a.cfg.Pipeline
	pcfg.Guard = g
	pcfg.DeadLetter = a.deadLetter
	p, err := consumer.NewPipeline(pcfg, runInner)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	return p, nil
}

// pipeline returns the pipeline for the router handler named name: one per
// handler name, each with the guard's namespace followed by the name, so
// that handlers sharing messages dedupe separately.
func (a *Adapter) pipeline(name string) *consumer.Pipeline {
	if a.cfg.SharedKeys || name == "" {
		return a.base
	}
	if p, ok := a.pipes.Load(name); ok {
		return p.(*consumer.Pipeline)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if p, ok := a.pipes.Load(name); ok {
		return p.(*consumer.Pipeline)
	}
	g := *a.cfg.Pipeline.Guard
	if g.Namespace != "" {
		g.Namespace += ":" + name
	} else {
		g.Namespace = name
	}
	p, err := a.newPipeline(&g)
	if err != nil {
		// The base pipeline was built from the same configuration; only
		// the namespace differs, which NewPipeline does not check.
		a.log.Error("idemqwm: cannot build the pipeline for a handler; using the shared namespace", "handler", name, "err", err)
		return a.base
	}
	a.pipes.Store(name, p)
	return p
}

// ctxKey types the adapter's context values.
type ctxKey int

const (
	innerKey   ctxKey = iota // the handler call for this Process
	wrappedKey               // set while an idemq layer runs a handler
)

// runInner is every pipeline's handler: it calls the function the wrapper
// put in the context, so that one pipeline serves every wrapped handler of
// a router handler name.
func runInner(ctx context.Context, m *consumer.Message) error {
	h, _ := ctx.Value(innerKey).(consumer.Handler)
	if h == nil {
		return errors.New("idemqwm: internal error: no handler in context")
	}
	return h(ctx, m)
}

// Middleware wraps h, a router handler, in the pipeline. It is a
// message.HandlerMiddleware: router.AddMiddleware(a.Middleware) for every
// handler, or handler.AddMiddleware(a.Middleware) for one.
//
// The wrapped handler returns nil (the router Acks) for a success, a
// duplicate, a stored rejection (consumer.Reject) and a message it
// dead-lettered to PoisonTopic; it returns an error wrapping ErrRedeliver
// (the router Nacks, the pub/sub redelivers) after a capped wait for a
// transient failure, a Busy key or an unavailable dependency. h's produced
// messages are returned on success, and replayed for a duplicate unless
// Config.NoReplayProduced. h sees msg.Context() cancelled when the dedupe
// lease was lost (context.Cause is dedupe.ErrLeaseLost) or the message's
// own context ends.
//
// An idemq layer that finds itself inside another one (the same Adapter
// added twice, router-wide and per handler) runs h directly and logs a
// warning once (Stats.DoubleWrapped): the outer layer already guards the
// message. Remove Watermill's Deduplicator, PoisonQueue, IgnoreErrors and
// InstantAck (Retry is unnecessary); see the package documentation for
// why.
func (a *Adapter) Middleware(h message.HandlerFunc) message.HandlerFunc {
	return func(msg *message.Message) ([]*message.Message, error) {
		if a.doubleWrapped(msg) {
			return h(msg)
		}
		var produced []*message.Message
		inner := func(ctx context.Context, m *consumer.Message) error {
			orig := msg.Context()
			msg.SetContext(ctx)
			defer msg.SetContext(orig)
			out, err := h(msg)
			if err != nil {
				return err
			}
			produced = out
			if !a.cfg.NoReplayProduced && len(out) > 0 {
				data, err := encodeProduced(out)
				if err != nil {
					a.log.Warn("idemqwm: produced messages cannot be stored for replay", "uuid", msg.UUID, "err", err)
				} else {
					m.SetResult(data)
				}
			}
			return nil
		}
		out := a.process(msg, inner)
		if err := a.settle(msg, out); err != nil {
			return nil, err
		}
		if out.Claim == dedupe.Duplicate && !a.cfg.NoReplayProduced && out.Replay != nil && !out.Replay.Failed {
			msgs, ok, err := decodeProduced(out.Replay.Data)
			if err != nil {
				a.log.Warn("idemqwm: the stored produced messages cannot be decoded; acking the duplicate without them", "uuid", msg.UUID, "err", err)
			}
			if ok {
				return msgs, nil
			}
		}
		return produced, nil
	}
}

// NoPublishHandler wraps h in the pipeline, as Middleware does, for
// router.AddConsumerHandler.
func (a *Adapter) NoPublishHandler(h message.NoPublishHandlerFunc) message.NoPublishHandlerFunc {
	mw := a.Middleware(func(msg *message.Message) ([]*message.Message, error) { return nil, h(msg) })
	return func(msg *message.Message) error {
		_, err := mw(msg)
		return err
	}
}

// Handler runs h, an idemq consumer.Handler, as a Watermill handler for
// router.AddConsumerHandler: h gets a consumer.Message (ID = UUID,
// Subject = the subscribed topic, Header = the metadata, Native = the
// *message.Message) and may call SetResult, return consumer.Reject,
// consumer.Invalid or retry.Permanent, with the outcomes of Middleware.
// Its SetResult data is stored and replayed to duplicates in
// consumer.Outcome.Replay, which Watermill has no way to show: use it for
// handlers that reply through their own channel.
func (a *Adapter) Handler(h consumer.Handler) message.NoPublishHandlerFunc {
	return func(msg *message.Message) error {
		if a.doubleWrapped(msg) {
			return h(msg.Context(), convert(msg))
		}
		inner := func(ctx context.Context, m *consumer.Message) error {
			orig := msg.Context()
			msg.SetContext(ctx)
			defer msg.SetContext(orig)
			return h(ctx, m)
		}
		return a.settle(msg, a.process(msg, inner))
	}
}

// doubleWrapped reports (and logs once) a handler already inside an idemq
// layer, and a message that something acknowledged before idemq ran.
func (a *Adapter) doubleWrapped(msg *message.Message) bool {
	a.supersede(msg)
	select {
	case <-msg.Acked(): // never ready for a nil channel (a message not built by NewMessage)
		a.stats.ackedRetries.Add(1)
		a.log.Error("idemqwm: the message was acknowledged before idemq ran (middleware.InstantAck?): a failure can no longer redeliver it",
			"uuid", msg.UUID, "handler", message.HandlerNameFromCtx(msg.Context()))
	default:
	}
	if msg.Context().Value(wrappedKey) == nil {
		return false
	}
	a.stats.doubleWrapped.Add(1)
	if a.warned.CompareAndSwap(false, true) {
		a.log.Warn("idemqwm: a handler is wrapped by idemq twice (router-wide and per handler?); the inner layer passes through",
			"handler", message.HandlerNameFromCtx(msg.Context()))
	}
	return true
}

// convert translates a Watermill message into a consumer.Message: ID is the
// UUID, Subject the subscribed topic (empty outside a router), Header the
// metadata, Attempt 1 (Watermill has no delivery count; the pipeline
// counts handler runs in the dedupe record), Native msg.
func convert(msg *message.Message) *consumer.Message {
	var h map[string][]string
	if len(msg.Metadata) > 0 {
		h = make(map[string][]string, len(msg.Metadata))
		for k, v := range msg.Metadata {
			h[k] = []string{v}
		}
	}
	return &consumer.Message{
		ID:       msg.UUID,
		Subject:  message.SubscribeTopicFromCtx(msg.Context()),
		Header:   h,
		Data:     msg.Payload,
		Attempt:  1,
		Received: time.Now(),
		Native:   msg,
	}
}

// process runs msg through the pipeline of its router handler, with inner
// as the handler.
func (a *Adapter) process(msg *message.Message, inner consumer.Handler) consumer.Outcome {
	ctx := msg.Context()
	ctx = context.WithValue(ctx, innerKey, inner)
	ctx = context.WithValue(ctx, wrappedKey, a)
	return a.pipeline(message.HandlerNameFromCtx(msg.Context())).Process(ctx, convert(msg))
}

// settle turns out into the handler's return: nil to Ack, an error wrapping
// ErrRedeliver to Nack, after the capped wait.
func (a *Adapter) settle(msg *message.Message, out consumer.Outcome) error {
	if out.Unavailable == 0 && (out.Claim != 0 || out.Action != consumer.Retry) {
		if n := a.streak.Swap(0); n >= PauseThreshold {
			a.log.Info("idemqwm: dependencies answer again", "after", int(n))
			a.resume(msg.Context())
		}
	}
	switch out.Action {
	case consumer.Ack:
		a.stats.acked.Add(1)
		if out.Claim == dedupe.Duplicate {
			a.stats.duplicates.Add(1)
		}
		return nil
	case consumer.DeadLetter:
		if out.DeadLettered {
			a.stats.deadLettered.Add(1)
			return nil
		}
		// Not reached: the pipeline publishes through a.deadLetter and
		// retries when that fails.
	}
	a.stats.retried.Add(1)
	if out.Interrupted {
		return a.redeliver(msg, out, 0)
	}
	wait := out.Delay
	if out.Unavailable != 0 {
		a.stats.unavailable.Add(1)
		n := a.unavailable(msg.Context(), out)
		if n > PauseThreshold {
			wait <<= min(n-PauseThreshold, 16)
		}
	}
	wait = min(wait, a.cfg.MaxWait)
	if wait > 0 {
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-out.Wait: // nil unless a local original runs
		case <-msg.Context().Done():
		}
		t.Stop()
	}
	return a.redeliver(msg, out, wait)
}

// unavailable counts a delivery that found out.Unavailable down in the
// streak and returns the streak's length. The PauseThreshold-th in a row
// logs the outage and opens a pause: the adapter holds each message longer
// before handing it back, so the PauseObserver hears Paused. Under the
// pause lock, so that resume, which follows the streak's reset, never runs
// between the rise to PauseThreshold and the pause it opens.
func (a *Adapter) unavailable(ctx context.Context, out consumer.Outcome) int32 {
	a.pause.Lock()
	defer a.pause.Unlock()
	n := a.streak.Add(1)
	if n != PauseThreshold {
		return n
	}
	a.log.Warn("idemqwm: a dependency does not answer; messages wait before they are handed back, doubling to MaxWait",
		"dependency", out.Unavailable.String(), "max_wait", a.cfg.MaxWait, "err", out.Err)
	if a.pauses != nil && !a.pause.on {
		a.pause.on, a.pause.dep, a.pause.since = true, out.Unavailable, time.Now()
		a.pauses.Paused(ctx, out.Unavailable, out.Err)
	}
	return n
}

// resume closes the open pause, if any: a delivery found the dependencies
// answering again.
func (a *Adapter) resume(ctx context.Context) {
	a.pause.Lock()
	defer a.pause.Unlock()
	if a.pause.on {
		a.pause.on = false
		a.pauses.Resumed(ctx, a.pause.dep, time.Since(a.pause.since))
	}
}

// redeliver returns the Nack error for out and watches that the message is
// indeed Nacked.
func (a *Adapter) redeliver(msg *message.Message, out consumer.Outcome, waited time.Duration) error {
	a.watch(msg)
	why := "transient failure"
	switch {
	case out.Interrupted:
		why = "interrupted"
	case out.Unavailable != 0:
		why = out.Unavailable.String() + " unavailable"
	case out.Claim == dedupe.Busy:
		why = "key busy"
	}
	if out.Err == nil {
		return fmt.Errorf("%w (%s, waited %v)", ErrRedeliver, why, waited)
	}
	return fmt.Errorf("%w (%s, attempt %d, waited %v): %w", ErrRedeliver, why, out.Attempt, waited, out.Err)
}

// watch checks, for up to swallowWatch, that a message handed back for
// redelivery is Nacked: an outer middleware that turns the error into nil
// (PoisonQueue, IgnoreErrors) makes the router Ack it, and the retry idemq
// asked for never happens. That is logged and counted
// (Stats.AckedRetries). A later call of the wrapper with the same message
// (an outer middleware.Retry) supersedes the watch. Outside a router
// nothing acks or nacks, so nothing is watched.
func (a *Adapter) watch(msg *message.Message) {
	if message.HandlerNameFromCtx(msg.Context()) == "" || msg.Acked() == nil {
		return
	}
	done := make(chan struct{})
	a.nwatch.Add(1)
	if old, loaded := a.watches.Swap(msg, done); loaded {
		close(old.(chan struct{}))
	}
	go func() {
		defer a.nwatch.Add(-1)
		defer a.watches.CompareAndDelete(msg, done)
		t := time.NewTimer(swallowWatch)
		defer t.Stop()
		select {
		case <-msg.Acked():
			select {
			case <-done: // superseded before the ack: a later call decided
				return
			default:
			}
			a.stats.ackedRetries.Add(1)
			a.log.Error("idemqwm: a message idemq handed back for redelivery was acknowledged: an outer middleware (PoisonQueue, IgnoreErrors, …) swallowed the error, and it will not be retried",
				"uuid", msg.UUID, "handler", message.HandlerNameFromCtx(msg.Context()))
		case <-msg.Nacked():
		case <-done:
		case <-t.C:
		}
	}()
}

// supersede ends the watch of msg: the wrapper runs again for it.
func (a *Adapter) supersede(msg *message.Message) {
	if a.nwatch.Load() == 0 {
		return
	}
	if old, loaded := a.watches.LoadAndDelete(msg); loaded {
		close(old.(chan struct{}))
	}
}

// Stats counts what an Adapter decided since New. Every field is a count of
// deliveries.
type Stats struct {
	// Acked: successes, stored rejections and duplicates (the router Acks).
	Acked int64
	// Duplicates: deliveries answered from the dedupe record, included in
	// Acked.
	Duplicates int64
	// Retried: deliveries handed back for redelivery (the router Nacks).
	Retried int64
	// DeadLettered: deliveries published to PoisonTopic (the router Acks).
	DeadLettered int64
	// Unavailable: retries because the dedupe store or the poison
	// publisher did not answer, included in Retried.
	Unavailable int64
	// DoubleWrapped: deliveries that met an idemq layer inside another
	// (the inner one passed through).
	DoubleWrapped int64
	// AckedRetries: deliveries that were acknowledged although idemq handed
	// them back for redelivery, or before idemq ran: a middleware order
	// that loses retries (see the package documentation).
	AckedRetries int64
}

// Stats returns the counts so far.
func (a *Adapter) Stats() Stats {
	s := &a.stats
	return Stats{
		Acked:         s.acked.Load(),
		Duplicates:    s.duplicates.Load(),
		Retried:       s.retried.Load(),
		DeadLettered:  s.deadLettered.Load(),
		Unavailable:   s.unavailable.Load(),
		DoubleWrapped: s.doubleWrapped.Load(),
		AckedRetries:  s.ackedRetries.Load(),
	}
}
