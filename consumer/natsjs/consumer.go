package natsjs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/consumer"
)

// ErrRunning is returned by Run when the Consumer is already running.
var ErrRunning = errors.New("natsjs: consumer is already running")

// ErrServerTooOld is wrapped by Run when the configuration needs a newer
// NATS server than the one connected (several FilterSubjects need 2.10).
var ErrServerTooOld = errors.New("natsjs: NATS server too old for this configuration")

// Consumer runs a consumer.Pipeline on a durable JetStream pull consumer:
// bounded concurrency, broker-side redelivery with backoff, dead-lettering,
// heartbeats and graceful shutdown. Build it with New and start it with Run.
type Consumer struct {
	js      jetstream.JetStream
	cfg     Config
	pipe    *consumer.Pipeline
	dl      *DeadLetterer
	log     *slog.Logger
	running atomic.Bool
}

// New validates cfg (see Config; errors wrap ErrInvalidConfig and name the
// numbers that disagree) and returns a Consumer running h. It does no I/O:
// Run creates the streams and the durable consumer.
func New(js jetstream.JetStream, cfg Config, h consumer.Handler) (*Consumer, error) {
	if js == nil {
		return nil, fmt.Errorf("%w: JetStream is nil", ErrInvalidConfig)
	}
	cfg, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	pipe, err := consumer.NewPipeline(cfg.Pipeline, h)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidConfig, err)
	}
	log := cfg.Pipeline.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("stream", cfg.Stream, "consumer", cfg.Durable)
	return &Consumer{
		js:   js,
		cfg:  cfg,
		pipe: pipe,
		dl:   &DeadLetterer{JS: js, Subject: cfg.DeadLetter.Subject, Stream: cfg.DeadLetter.Stream, Host: cfg.Hostname},
		log:  log,
	}, nil
}

// Config returns the configuration with defaults applied.
func (c *Consumer) Config() Config { return c.cfg }

// DeadLetterer returns the dead-letter publisher the consumer uses.
func (c *Consumer) DeadLetterer() *DeadLetterer { return c.dl }

// Run creates the dead-letter stream (DeadLetter.CreateStream), the
// advisory stream (CaptureMaxDeliveries) and the durable pull consumer
// (created, or updated to this configuration), then consumes until ctx
// ends. Setup errors are returned at once (nil when ctx ended first).
//
// When ctx ends Run shuts down gracefully: it stops pulling, hands back
// (NakWithDelay(ShutdownNakDelay)) messages that were fetched but not
// started, lets running handlers finish for up to ShutdownTimeout, then
// cancels their contexts and hands their messages back too. It returns nil
// once every goroutine it started has ended — which waits for handlers to
// return, so handlers must honour their context. It returns an error if the
// connection closes. Run may be called again after it returns, not
// concurrently (ErrRunning).
func (c *Consumer) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return ErrRunning
	}
	defer c.running.Store(false)

	cons, err := c.setup(ctx)
	var adv jetstream.Consumer
	if err == nil && c.cfg.CaptureMaxDeliveries {
		adv, err = c.setupAdvisories(ctx)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil // shut down before it started
		}
		return err
	}

	// Handlers run under hctx: it outlives ctx by ShutdownTimeout.
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hcancel()
	var bg sync.WaitGroup
	if adv != nil {
		bg.Go(func() { c.watchAdvisories(ctx, adv) })
	}
	p := newPool(c.cfg.Concurrency)
	err = c.consume(ctx, hctx, cons, p)

	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	timer := time.NewTimer(c.cfg.ShutdownTimeout)
	select {
	case <-done:
	case <-timer.C:
		n := p.handBack(c.cfg.ShutdownNakDelay)
		c.log.Warn("natsjs: shutdown timeout; cancelling running handlers and handing their messages back",
			"timeout", c.cfg.ShutdownTimeout, "messages", n)
		hcancel()
		<-done
	}
	timer.Stop()
	bg.Wait()
	return err
}

// setup creates the dead-letter stream when asked and the durable consumer.
func (c *Consumer) setup(ctx context.Context) (jetstream.Consumer, error) {
	if c.cfg.DeadLetter.CreateStream {
		if err := ensureStream(ctx, c.js, jetstream.StreamConfig{
			Name:     c.cfg.DeadLetter.Stream,
			Subjects: c.cfg.DeadLetter.StreamSubjects,
			Storage:  jetstream.FileStorage,
		}); err != nil {
			return nil, fmt.Errorf("natsjs: dead-letter stream %s: %w", c.cfg.DeadLetter.Stream, err)
		}
	}
	cc := jetstream.ConsumerConfig{
		Durable:       c.cfg.Durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.cfg.AckWait,
		MaxDeliver:    c.cfg.MaxDeliver,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	switch len(c.cfg.FilterSubjects) {
	case 0:
	case 1:
		cc.FilterSubject = c.cfg.FilterSubjects[0]
	default:
		if v := c.js.Conn().ConnectedServerVersion(); !serverAtLeast(v, 2, 10) {
			return nil, fmt.Errorf("%w: %d FilterSubjects need server 2.10 or later, connected to %s; use one subject",
				ErrServerTooOld, len(c.cfg.FilterSubjects), v)
		}
		cc.FilterSubjects = c.cfg.FilterSubjects
	}
	cons, err := c.js.CreateOrUpdateConsumer(ctx, c.cfg.Stream, cc)
	if err != nil {
		return nil, fmt.Errorf("natsjs: create or update consumer %s on stream %s: %w", c.cfg.Durable, c.cfg.Stream, err)
	}
	return cons, nil
}

// pool is the fixed set of worker goroutines; each records the message it
// is working on, so that a shutdown past its deadline can hand it back.
type pool struct {
	wg    sync.WaitGroup
	slots []slot
}

// slot is one worker's message in flight (nil when idle).
type slot struct {
	mu  sync.Mutex
	msg jetstream.Msg
	_   [40]byte // keep workers' slots on separate cache lines
}

func newPool(n int) *pool { return &pool{slots: make([]slot, n)} }

func (s *slot) set(m jetstream.Msg) {
	s.mu.Lock()
	s.msg = m
	s.mu.Unlock()
}

// handBack Naks every running message so that the server can redeliver it
// without waiting for AckWait. The late Ack or Nak of a handler that
// finishes afterwards is refused by the client (already acknowledged).
func (p *pool) handBack(delay time.Duration) int {
	n := 0
	for i := range p.slots {
		s := &p.slots[i]
		s.mu.Lock()
		if s.msg != nil {
			_ = s.msg.NakWithDelay(delay)
			n++
		}
		s.mu.Unlock()
	}
	return n
}

// consume runs the pool's workers on a nats.go Consume subscription until
// ctx ends or a fatal error occurs. Consume keeps at most FetchBatch
// messages buffered ahead of the workers and asks for more when half of
// them were taken, so pull requests stay few (about one per FetchBatch/2
// messages) whatever the handlers' speed; its callback hands each message
// to an idle worker, waiting for one, so nothing is buffered beyond that.
//
// On shutdown it stops the workers from taking messages, drains the
// subscription (messages still buffered are handed back with
// NakWithDelay(ShutdownNakDelay), unstarted) and returns once the
// subscription is closed; running handlers are left to Run.
func (c *Consumer) consume(ctx, hctx context.Context, cons jetstream.Consumer, p *pool) error {
	work := make(chan jetstream.Msg)
	stopping := make(chan struct{})
	fatalc := make(chan error, 1)
	for i := range p.slots {
		s := &p.slots[i]
		p.wg.Go(func() {
			for {
				select {
				case <-stopping:
					return
				case msg := <-work:
					s.set(msg)
					c.handle(hctx, msg)
					s.set(nil)
				}
			}
		})
	}
	handBack := func(msg jetstream.Msg) { _ = msg.NakWithDelay(c.cfg.ShutdownNakDelay) }
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		select {
		case <-stopping:
			handBack(msg)
			return
		default:
		}
		select {
		case work <- msg:
		case <-stopping:
			handBack(msg)
		}
	},
		jetstream.PullMaxMessages(c.cfg.FetchBatch),
		jetstream.PullExpiry(c.cfg.PullWait),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			if fatal(err) {
				select {
				case fatalc <- err:
				default:
				}
				return
			}
			c.log.Warn("natsjs: pull failed; nats.go retries", "err", err)
		}),
	)
	if err != nil {
		close(stopping)
		return fmt.Errorf("natsjs: consume from %s: %w", c.cfg.Durable, err)
	}
	select {
	case <-ctx.Done():
	case ferr := <-fatalc:
		err = fmt.Errorf("natsjs: consume from %s: %w", c.cfg.Durable, ferr)
	}
	close(stopping)
	cc.Drain()
	closeWait := time.NewTimer(c.cfg.ShutdownTimeout)
	defer closeWait.Stop()
	select {
	case <-cc.Closed():
	case <-closeWait.C:
		// The drain could not complete (the connection is down): what was
		// buffered is redelivered after AckWait.
		cc.Stop()
		c.log.Warn("natsjs: draining the subscription timed out; buffered messages are redelivered after AckWait", "timeout", c.cfg.ShutdownTimeout)
	}
	return err
}

// fatal reports pull errors that retrying cannot fix.
func fatal(err error) bool {
	return errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, jetstream.ErrConsumerDeleted)
}

// handle runs one message through the pipeline and applies the outcome.
func (c *Consumer) handle(hctx context.Context, msg jetstream.Msg) {
	m, err := Convert(msg)
	if err != nil {
		c.log.Error("natsjs: cannot read message metadata; redelivering", "subject", msg.Subject(), "err", err)
		_ = msg.NakWithDelay(c.cfg.DeadLetter.RetryDelay)
		return
	}
	m.KeepAlive = func(context.Context) error { return msg.InProgress() }
	out := c.pipe.Process(hctx, m)
	c.apply(hctx, msg, m, out)
}

// apply translates out into broker actions.
func (c *Consumer) apply(hctx context.Context, msg jetstream.Msg, m *consumer.Message, out consumer.Outcome) {
	switch out.Action {
	case consumer.Ack:
		if !c.cfg.DoubleAck {
			if err := msg.Ack(); err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
				c.log.Warn("natsjs: ack failed", "subject", m.Subject, "id", m.ID, "err", err)
			}
			return
		}
		actx, cancel := context.WithTimeout(context.WithoutCancel(hctx), c.cfg.DeadLetter.PublishTimeout)
		defer cancel()
		if err := msg.DoubleAck(actx); err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
			c.log.Warn("natsjs: ack not confirmed; the redelivery will be answered from the dedupe record", "subject", m.Subject, "id", m.ID, "err", err)
		}
	case consumer.Retry:
		delay := out.Delay
		if out.Interrupted {
			delay = c.cfg.ShutdownNakDelay
		}
		if err := msg.NakWithDelay(delay); err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
			c.log.Warn("natsjs: nak failed; the server redelivers after AckWait", "subject", m.Subject, "id", m.ID, "err", err)
		}
	case consumer.DeadLetter:
		pctx, cancel := context.WithTimeout(context.WithoutCancel(hctx), c.cfg.DeadLetter.PublishTimeout)
		defer cancel()
		if err := c.dl.Publish(pctx, msg, out.Reason, out.Err); err != nil {
			c.log.Error("natsjs: dead-letter publish failed; redelivering the message", "subject", m.Subject, "id", m.ID,
				"reason", out.Reason.String(), "retry_in", c.cfg.DeadLetter.RetryDelay, "err", err)
			_ = msg.NakWithDelay(c.cfg.DeadLetter.RetryDelay)
			return
		}
		if err := msg.Term(); err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
			c.log.Warn("natsjs: term after dead-lettering failed; a redelivery is dead-lettered again and deduped by Nats-Msg-Id",
				"subject", m.Subject, "id", m.ID, "err", err)
		}
	default:
		c.log.Error("natsjs: outcome without action; redelivering", "subject", m.Subject, "id", m.ID)
		_ = msg.NakWithDelay(c.cfg.DeadLetter.RetryDelay)
	}
}

// Convert translates a JetStream message into a consumer.Message: ID is the
// Nats-Msg-Id header when present, else "<stream>:<stream sequence>";
// Attempt is NumDelivered; Native is msg. It fails when msg carries no
// JetStream metadata (it was not delivered by a consumer).
func Convert(msg jetstream.Msg) (*consumer.Message, error) {
	// The ack subject holds the metadata; reading the three fields needed
	// here from it directly spares msg.Metadata's allocation and its parsing
	// of fields nobody reads, on every message.
	stream, delivered, seq, ok := ackFields(msg.Reply())
	if !ok {
		md, err := msg.Metadata()
		if err != nil {
			return nil, fmt.Errorf("natsjs: not a JetStream consumer message: %w", err)
		}
		stream, delivered, seq = md.Stream, md.NumDelivered, md.Sequence.Stream
	}
	h := msg.Headers()
	var id string
	if v := h[jetstream.MsgIDHeader]; len(v) > 0 {
		id = v[0]
	}
	if id == "" {
		id = stream + ":" + strconv.FormatUint(seq, 10)
	}
	return &consumer.Message{
		ID:       id,
		Subject:  msg.Subject(),
		Header:   h,
		Data:     msg.Data(),
		Attempt:  max(clampInt(delivered), 1),
		Received: time.Now(),
		Native:   msg,
	}, nil
}

// ackFields reads the stream name, the delivery count and the stream
// sequence from a JetStream ack subject, without allocating. Servers send
// "$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<time>.<pending>"
// or, since 2.9, "$JS.ACK.<domain>.<account hash>.<stream>.<consumer>.<delivered>.…"
// with 11 tokens or more. ok is false for anything else.
func ackFields(reply string) (stream string, delivered, seq uint64, ok bool) {
	rest, found := strings.CutPrefix(reply, "$JS.ACK.")
	if !found {
		return "", 0, 0, false
	}
	var first int // token index of the stream after "$JS.ACK."
	switch n := strings.Count(rest, ".") + 1 + 2; {
	case n == 9:
		first = 0
	case n >= 11:
		first = 2
	default:
		return "", 0, 0, false
	}
	for range first {
		_, rest, _ = strings.Cut(rest, ".")
	}
	var consumerTok, dtok, stok string
	stream, rest, _ = strings.Cut(rest, ".")
	consumerTok, rest, _ = strings.Cut(rest, ".")
	dtok, rest, _ = strings.Cut(rest, ".")
	stok, _, _ = strings.Cut(rest, ".")
	d, err1 := strconv.ParseUint(dtok, 10, 64)
	q, err2 := strconv.ParseUint(stok, 10, 64)
	if stream == "" || consumerTok == "" || err1 != nil || err2 != nil {
		return "", 0, 0, false
	}
	return stream, d, q, true
}

// ensureStream creates the stream when it does not exist. An existing
// stream is left as it is.
func ensureStream(ctx context.Context, js jetstream.JetStream, sc jetstream.StreamConfig) error {
	_, err := js.Stream(ctx, sc.Name)
	if err == nil {
		return nil
	}
	if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return err
	}
	_, err = js.CreateStream(ctx, sc)
	if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
		return nil // created concurrently
	}
	return err
}

// serverAtLeast reports whether version ("2.9.10", "2.11.0-RC.1") is at
// least major.minor.
func serverAtLeast(version string, major, minor int) bool {
	parts := strings.SplitN(version, ".", 3)
	if len(parts) < 2 {
		return false
	}
	ma, err1 := strconv.Atoi(parts[0])
	mi, err2 := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		return false
	}
	return ma > major || ma == major && mi >= minor
}
