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
	fl := &flight{msgs: make(map[jetstream.Msg]struct{})}
	err = c.pull(ctx, hctx, cons, fl)

	done := make(chan struct{})
	go func() { fl.wg.Wait(); close(done) }()
	timer := time.NewTimer(c.cfg.ShutdownTimeout)
	select {
	case <-done:
	case <-timer.C:
		n := fl.handBack(c.cfg.ShutdownNakDelay)
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

// flight tracks the messages whose handlers are running.
type flight struct {
	wg   sync.WaitGroup
	mu   sync.Mutex
	msgs map[jetstream.Msg]struct{}
}

func (f *flight) add(m jetstream.Msg) {
	f.mu.Lock()
	f.msgs[m] = struct{}{}
	f.mu.Unlock()
}

func (f *flight) remove(m jetstream.Msg) {
	f.mu.Lock()
	delete(f.msgs, m)
	f.mu.Unlock()
}

// handBack Naks every running message so that the server can redeliver it
// without waiting for AckWait. The late Ack or Nak of a handler that
// finishes afterwards is refused by the client (already acknowledged).
func (f *flight) handBack(delay time.Duration) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	for m := range f.msgs {
		_ = m.NakWithDelay(delay)
	}
	return len(f.msgs)
}

// fetchLinger is how long the pull loop waits for more idle workers before
// it fetches for fewer than half of FetchBatch while handlers are running:
// it turns one pull request per finished handler into one per batch under
// load, and costs an idle worker at most this long.
const fetchLinger = 2 * time.Millisecond

// pull fetches messages while ctx lives, never more than there are idle
// workers, and starts a handler goroutine for each. Pulls overlap: each
// batch is drained by its own goroutine, so the next pull does not wait for
// the previous one to expire. It returns when ctx ends (after every pull has
// ended and its late messages were handed back) or on a fatal error.
func (c *Consumer) pull(ctx, hctx context.Context, cons jetstream.Consumer, fl *flight) error {
	slots := make(chan struct{}, c.cfg.Concurrency)
	pctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	var fetches sync.WaitGroup
	defer fetches.Wait()
	minBatch := max(1, c.cfg.FetchBatch/2)
	linger := time.NewTimer(fetchLinger)
	linger.Stop()
	for {
		select {
		case slots <- struct{}{}:
		case <-pctx.Done():
			return fatalCause(ctx, pctx)
		}
		n := 1 + grab(slots, c.cfg.FetchBatch-1)
		if n < minBatch && len(slots) > n {
			// Handlers are running and will free workers soon: gather a
			// few more before paying for a pull request.
			linger.Reset(fetchLinger)
		gather:
			for n < minBatch {
				select {
				case slots <- struct{}{}:
					n++
				case <-linger.C:
					break gather
				case <-pctx.Done():
					break gather
				}
			}
			linger.Stop()
		}
		batch, err := cons.Fetch(n, jetstream.FetchMaxWait(c.cfg.PullWait))
		if err != nil {
			release(slots, n)
			if fatal(err) {
				return fmt.Errorf("natsjs: fetch from %s: %w", c.cfg.Durable, err)
			}
			c.log.Warn("natsjs: fetch failed; retrying", "err", err)
			sleep(pctx, c.cfg.PullWait)
			continue
		}
		fetches.Go(func() {
			if err := c.drain(pctx, hctx, batch, n, slots, fl); err != nil {
				stop(err)
			}
		})
	}
}

// drain dispatches the messages of one pull to handler goroutines; messages
// arriving after shutdown began are handed back unstarted. It releases the
// slots the pull did not use. A non-nil error is fatal for the consumer.
func (c *Consumer) drain(ctx, hctx context.Context, batch jetstream.MessageBatch, n int, slots chan struct{}, fl *flight) error {
	got := 0
	for msg := range batch.Messages() {
		got++
		if ctx.Err() != nil {
			_ = msg.NakWithDelay(c.cfg.ShutdownNakDelay)
			<-slots
			continue
		}
		fl.wg.Add(1)
		fl.add(msg)
		go func() {
			defer func() {
				fl.remove(msg)
				<-slots
				fl.wg.Done()
			}()
			c.handle(hctx, msg)
		}()
	}
	release(slots, n-got)
	err := batch.Error()
	if err == nil || errors.Is(err, nats.ErrTimeout) || errors.Is(err, context.Canceled) {
		return nil
	}
	if fatal(err) {
		return fmt.Errorf("natsjs: fetch from %s: %w", c.cfg.Durable, err)
	}
	c.log.Warn("natsjs: pull failed", "err", err)
	return nil
}

// grab takes up to n free slots without blocking and returns how many.
func grab(slots chan struct{}, n int) int {
	got := 0
	for got < n {
		select {
		case slots <- struct{}{}:
			got++
		default:
			return got
		}
	}
	return got
}

// release frees n slots.
func release(slots chan struct{}, n int) {
	for range n {
		<-slots
	}
}

// fatalCause returns the fatal error that stopped the pull loop (the cause
// of pctx), or nil when Run's ctx simply ended.
func fatalCause(ctx, pctx context.Context) error {
	if ctx.Err() != nil {
		return nil
	}
	return context.Cause(pctx)
}

// fatal reports fetch errors that retrying cannot fix.
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
	md, err := msg.Metadata()
	if err != nil {
		return nil, fmt.Errorf("natsjs: not a JetStream consumer message: %w", err)
	}
	h := msg.Headers()
	id := h.Get(jetstream.MsgIDHeader)
	if id == "" {
		id = md.Stream + ":" + strconv.FormatUint(md.Sequence.Stream, 10)
	}
	return &consumer.Message{
		ID:       id,
		Subject:  msg.Subject(),
		Header:   h,
		Data:     msg.Data(),
		Attempt:  max(clampInt(md.NumDelivered), 1),
		Received: time.Now(),
		Native:   msg,
	}, nil
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

// sleep waits d or until ctx ends; it reports whether d passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
