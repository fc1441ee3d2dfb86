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
	"github.com/idemq/idemq/dedupe"
)

// ErrRunning is returned by Run when the Consumer is already running.
var ErrRunning = errors.New("natsjs: consumer is already running")

// ErrServerTooOld is wrapped by Run when the configuration needs a newer
// NATS server than the one connected (several FilterSubjects need 2.10).
var ErrServerTooOld = errors.New("natsjs: NATS server too old for this configuration")

// Consumer runs a consumer.Pipeline on a durable JetStream pull consumer:
// bounded concurrency, broker-side redelivery with backoff, dead-lettering,
// heartbeats, a pause while a dependency does not answer, and graceful
// shutdown. Build it with New and start it with Run.
type Consumer struct {
	batch   consumer.BatchHandler // batch mode (NewBatch); nil otherwise
	js      jetstream.JetStream
	cfg     Config
	pipe    *consumer.Pipeline
	dl      *DeadLetterer
	log     *slog.Logger
	brk     *breaker
	pauses  consumer.PauseObserver // Pipeline.Observer, when it implements it
	acks    *acker                 // the current Run's; set before its workers start
	running atomic.Bool
	parked  sync.WaitGroup // goroutines holding Busy duplicates

	mu    sync.Mutex
	ready chan struct{} // closed when the current (or next) Run consumes
}

// New validates cfg (see Config; errors wrap ErrInvalidConfig and name the
// numbers that disagree) and returns a Consumer running h. It does no I/O:
// Run checks and creates the streams and the durable consumer.
func New(js jetstream.JetStream, cfg Config, h consumer.Handler) (*Consumer, error) {
	if h == nil {
		return nil, fmt.Errorf("%w: handler is nil", ErrInvalidConfig)
	}
	return newConsumer(js, cfg, h, false)
}

// newConsumer builds a Consumer running h, or batchResult in batch mode.
func newConsumer(js jetstream.JetStream, cfg Config, h consumer.Handler, batch bool) (*Consumer, error) {
	if js == nil {
		return nil, fmt.Errorf("%w: JetStream is nil", ErrInvalidConfig)
	}
	cfg, err := cfg.resolve()
	if err != nil {
		return nil, err
	}
	if batch {
		h = batchResult
		cfg.Pipeline.HeartbeatInterval = -1 // a batch is short; AckWait covers it
	}
	log := cfg.Pipeline.Logger
	if log == nil {
		log = slog.Default()
	}
	c := &Consumer{
		js:    js,
		cfg:   cfg,
		dl:    &DeadLetterer{JS: js, Subject: cfg.DeadLetter.Subject, Stream: cfg.DeadLetter.Stream, Host: cfg.Hostname},
		log:   log.With("stream", cfg.Stream, "consumer", cfg.Durable),
		brk:   newBreaker(),
		ready: make(chan struct{}),
	}
	c.pauses, _ = cfg.Pipeline.Observer.(consumer.PauseObserver)
	pcfg := cfg.Pipeline
	pcfg.DeadLetter = c.publishDeadLetter
	c.pipe, err = consumer.NewPipeline(pcfg, h)
	if err != nil {
		return nil, err // wraps consumer.ErrInvalidConfig, which is ErrInvalidConfig
	}
	return c, nil
}

// Config returns the configuration with defaults applied.
func (c *Consumer) Config() Config { return c.cfg }

// DeadLetterer returns the dead-letter publisher the consumer uses.
func (c *Consumer) DeadLetterer() *DeadLetterer { return c.dl }

// Ready returns a channel that is closed once Run has passed its start-up
// checks, created the durable consumer and started pulling. After Run
// returns, Ready returns a new channel for the next Run.
func (c *Consumer) Ready() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ready
}

// Run checks the streams and creates what is missing, then consumes until
// ctx ends. Before taking any message it checks, with errors that wrap
// ErrSetup and name the stream and subjects: that the source stream exists
// and captures every filter subject; that DeadLetter.Stream, when it
// exists, captures DeadLetter.Subject (it is created unless
// DeadLetter.NoCreateStream; a missing one is only a warning, and the first
// dead letter pauses consumption until it exists), and that the source
// stream does not capture it; that the advisory capture (finite
// MaxDeliver) does not collide with another stream. Then it creates or
// updates the durable pull consumer and closes Ready. Setup errors are
// returned at once (nil when ctx ended first). A dedupe store that says
// what a restart would forget (dedupe.DurabilityChecker) is asked once and
// its answer logged as a warning.
//
// While the dedupe store or the dead-letter stream does not answer
// (DefaultPauseThreshold deliveries in a row found it unavailable), Run
// stops pulling, hands the buffered messages back, probes the dependency
// (MinProbeInterval doubling to MaxProbeInterval) and resumes when it
// answers; it logs the pause and the resumption once each. No attempt is
// used meanwhile.
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
	defer func() {
		c.mu.Lock()
		select {
		case <-c.ready:
			c.ready = make(chan struct{})
		default:
		}
		c.mu.Unlock()
	}()

	cons, adv, err := c.setup(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil // shut down before it started
		}
		return err
	}
	c.checkDurability(ctx)

	// Handlers run under hctx: it outlives ctx by ShutdownTimeout.
	hctx, hcancel := context.WithCancel(context.WithoutCancel(ctx))
	defer hcancel()
	c.acks = newAcker(c.log)
	defer c.acks.stopAndFlush() // after the workers and parked messages below
	var bg sync.WaitGroup
	if adv != nil {
		bg.Go(func() { c.watchAdvisories(ctx, adv) })
	}
	if c.batch != nil {
		err = c.runBatches(ctx, cons)
		bg.Wait()
		return err
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
	c.parked.Wait()
	bg.Wait()
	return err
}

// markReady closes the current Ready channel (once).
func (c *Consumer) markReady() {
	c.mu.Lock()
	defer c.mu.Unlock()
	select {
	case <-c.ready:
	default:
		close(c.ready)
	}
}

// checkDurability logs, once per Run, what the dedupe store says a restart
// would forget.
func (c *Consumer) checkDurability(ctx context.Context) {
	g := c.pipe.Guard()
	if g == nil {
		return
	}
	dc, ok := g.Store.(dedupe.DurabilityChecker)
	if !ok {
		return
	}
	cctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	switch warning, err := dc.CheckDurability(cctx); {
	case err != nil:
		c.log.Info("natsjs: could not check the dedupe store's durability", "err", err)
	case warning != "":
		c.log.Warn("natsjs: the dedupe store may forget records: " + warning)
	}
}

// publishDeadLetter is the pipeline's consumer.DeadLetterFunc: it publishes
// the delivery's dead letter and waits for the stream, up to
// DeadLetter.PublishTimeout.
func (c *Consumer) publishDeadLetter(ctx context.Context, m *consumer.Message, l consumer.DeadLetterInfo) error {
	msg, ok := m.Native.(jetstream.Msg)
	if !ok {
		return fmt.Errorf("natsjs: dead-letter: message %s is not a jetstream.Msg", m.ID)
	}
	letter, err := LetterOf(msg, l.Reason, l.Err, l.Attempts)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, c.cfg.DeadLetter.PublishTimeout)
	defer cancel()
	return c.dl.PublishLetter(pctx, letter)
}

// fatal reports pull errors that retrying cannot fix.
func fatal(err error) bool {
	return errors.Is(err, nats.ErrConnectionClosed) || errors.Is(err, jetstream.ErrConsumerDeleted)
}

// handle runs one message through the pipeline and applies the outcome.
// ctx is Run's context (it ends at shutdown), hctx the handlers'.
// s is the worker's slot, cleared once the outcome is decided so that a
// shutdown's hand-back does not Nak a message whose ack is queued.
func (c *Consumer) handle(ctx, hctx context.Context, msg jetstream.Msg, s *slot) {
	m, err := Convert(msg)
	if err != nil {
		c.log.Error("natsjs: cannot read message metadata; redelivering", "subject", msg.Subject(), "err", err)
		_ = msg.NakWithDelay(c.cfg.DeadLetter.RetryDelay)
		return
	}
	m.KeepAlive = func(context.Context) error { return msg.InProgress() }
	out := c.pipe.Process(hctx, m)
	s.set(nil)
	c.apply(ctx, hctx, msg, m, out)
	c.brk.observe(out)
}

// apply translates out into broker actions. Acks, Naks and Terms go
// through the acker (see acker), which sends them in bursts; DoubleAck
// waits for the server's confirmation here.
func (c *Consumer) apply(ctx, hctx context.Context, msg jetstream.Msg, m *consumer.Message, out consumer.Outcome) {
	switch out.Action {
	case consumer.Ack:
		if !c.cfg.DoubleAck {
			c.acks.send(ackOp{msg: msg, kind: opAck, id: m.ID})
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
		if out.Wait != nil && !out.Interrupted {
			c.park(ctx, msg, out.Wait, delay)
			return
		}
		c.acks.send(ackOp{msg: msg, kind: opNak, delay: delay, id: m.ID})
	case consumer.DeadLetter:
		// The pipeline published the dead letter (Pipeline.DeadLetter is
		// the consumer's publishDeadLetter): only the Term is left.
		c.acks.send(ackOp{msg: msg, kind: opTerm, id: m.ID})
	default:
		c.log.Error("natsjs: outcome without action; redelivering", "subject", m.Subject, "id", m.ID)
		_ = msg.NakWithDelay(c.cfg.DeadLetter.RetryDelay)
	}
}

// park holds a Busy duplicate, without a worker, until the original attempt
// running in this process ends (wait closes), then hands it back for an
// immediate redelivery, which finds the stored result. It gives up after
// limit (the lease remainder) or AckWait/2, whichever is sooner, and at
// shutdown hands the message back with ShutdownNakDelay.
func (c *Consumer) park(ctx context.Context, msg jetstream.Msg, wait <-chan struct{}, limit time.Duration) {
	c.parked.Go(func() {
		t := time.NewTimer(min(limit, c.cfg.AckWait/2))
		defer t.Stop()
		select {
		case <-wait:
			_ = msg.Nak()
		case <-t.C:
			_ = msg.Nak()
		case <-ctx.Done():
			_ = msg.NakWithDelay(c.cfg.ShutdownNakDelay)
		}
	})
}

// Convert translates a JetStream message into a consumer.Message: ID is the
// Nats-Msg-Id header when present, else "<stream>:<stream sequence>";
// Attempt is NumDelivered; Sequence is the stream sequence; Native is msg. It fails when msg carries no
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
		var buf [64]byte // one allocation, the string's, for names up to 43 bytes
		b := append(append(buf[:0], stream...), ':')
		id = string(strconv.AppendUint(b, seq, 10))
	}
	return &consumer.Message{
		ID:       id,
		Subject:  msg.Subject(),
		Header:   h,
		Data:     msg.Data(),
		Attempt:  max(clampInt(delivered), 1),
		Received: time.Now(),
		Native:   msg,
		Sequence: seq,
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
