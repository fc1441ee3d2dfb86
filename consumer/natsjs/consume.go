package natsjs

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

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

// consume runs the pool's workers on nats.go Consume subscriptions until
// ctx ends or a fatal error occurs. A subscription keeps at most FetchBatch
// messages buffered ahead of the workers and asks for more when half of
// them were taken, so pull requests stay few (about one per FetchBatch/2
// messages) whatever the handlers' speed; its callback hands each message
// to the workers through a channel of handoffBuffer(Concurrency) slots,
// waiting when it is full, so little is buffered beyond that.
//
// When the breaker opens (a dependency is down) the subscription is
// drained — buffered messages are handed back with the pipeline's
// unavailable delay, unstarted — and a new one starts once waitDependency
// says the dependency answers again. On shutdown it stops the workers from
// taking messages, drains the subscription (buffered messages are handed
// back with NakWithDelay(ShutdownNakDelay)) and returns; running handlers
// are left to Run.
func (c *Consumer) consume(ctx, hctx context.Context, cons jetstream.Consumer, p *pool) error {
	work := make(chan jetstream.Msg, handoffBuffer(c.cfg.Concurrency))
	stopping := make(chan struct{})
	defer close(stopping)
	var current atomic.Pointer[leaving] // the running subscription's
	for i := range p.slots {
		s := &p.slots[i]
		p.wg.Go(func() {
			for {
				select {
				case <-stopping:
					// What a callback still put in the hand-off buffer
					// goes back unstarted.
					for {
						select {
						case msg := <-work:
							_ = msg.NakWithDelay(c.cfg.ShutdownNakDelay)
							continue
						default:
						}
						return
					}
				case msg := <-work:
					if ctx.Err() != nil {
						// Shutting down: a message still in the hand-off
						// buffer goes back unstarted.
						_ = msg.NakWithDelay(c.cfg.ShutdownNakDelay)
						continue
					}
					if l := current.Load(); l != nil && l.left() {
						// Pausing: the same, with the pause's delay.
						_ = msg.NakWithDelay(l.delay)
						continue
					}
					s.set(msg)
					c.handle(ctx, hctx, msg, s)
					s.set(nil)
				}
			}
		})
	}
	for {
		paused, err := c.subscribe(ctx, cons, work, &current)
		if err != nil || !paused {
			return err
		}
		if !c.waitDependency(ctx) {
			return nil
		}
	}
}

// leaving is closed when a subscription stops handing messages to the
// workers; delay is the redelivery delay of what it hands back, set before
// done is closed.
type leaving struct {
	done  chan struct{}
	delay time.Duration
}

// left reports whether l's subscription is leaving.
func (l *leaving) left() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

// subscribe runs one Consume subscription feeding work until ctx ends
// (paused false), a fatal error, or the breaker opens (paused true).
func (c *Consumer) subscribe(ctx context.Context, cons jetstream.Consumer, work chan jetstream.Msg, current *atomic.Pointer[leaving]) (paused bool, err error) {
	l := &leaving{done: make(chan struct{}), delay: c.cfg.ShutdownNakDelay}
	current.Store(l)
	var once sync.Once
	leave := func(pause bool) {
		once.Do(func() {
			if pause {
				l.delay = c.pipe.UnavailableDelay()
			}
			close(l.done)
		})
	}
	fatalc := make(chan error, 1)
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		select {
		case <-l.done:
			_ = msg.NakWithDelay(l.delay)
			return
		default:
		}
		select {
		case work <- msg:
		case <-l.done:
			_ = msg.NakWithDelay(l.delay)
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
		return false, fmt.Errorf("natsjs: consume from %s: %w", c.cfg.Durable, err)
	}
	c.markReady()
	select {
	case <-ctx.Done():
		leave(false)
	case <-c.brk.trip:
		leave(true)
		paused = true
	case ferr := <-fatalc:
		leave(false)
		err = fmt.Errorf("natsjs: consume from %s: %w", c.cfg.Durable, ferr)
	}
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
	// Hand back what the workers have not taken from the hand-off buffer.
	for {
		select {
		case msg := <-work:
			_ = msg.NakWithDelay(l.delay)
			continue
		default:
		}
		break
	}
	return paused && err == nil && ctx.Err() == nil, err
}

// handoffBuffer is the capacity of the channel between the subscription's
// callback and the workers: a quarter of the workers, at least 1. The
// callback then rarely waits for an idle worker, nor a worker for the
// callback, when messages come in bursts (each such wait parks a
// goroutine), and at most that many messages are buffered beyond
// FetchBatch.
func handoffBuffer(concurrency int) int { return max(concurrency/4, 1) }
