package bench

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Tuning of the raw nats.go baselines. A batch of 500 keeps pull requests
// at 1 per 250 messages (Consume refills at half the batch) and stays under
// the consumers' MaxAckPending of 1000.
const (
	// rawBatch is the pull batch (PullMaxMessages) of the raw consumers.
	rawBatch = 500
	// rawWorkers is the worker count of the DoubleAck baseline, which
	// waits one round trip per ack and needs parallelism to hide it.
	rawWorkers = 64
)

// rawAck is the plain baseline: one Consume callback, handler inline, then
// Ack — a fire-and-forget ack, the fastest correct way to consume with
// explicit acks in nats.go's jetstream package.
func rawAck() variant {
	return variant{
		name: "raw-ack",
		prepare: func(tb testing.TB, r *round) session {
			return newRawSession(tb, r, 0)
		},
	}
}

// rawDoubleAck is the like-for-like baseline of consumers that wait for the
// server to confirm each ack (DoubleAck): Consume feeds a pool of workers
// that run the handler and DoubleAck.
func rawDoubleAck() variant {
	return variant{
		name: "raw-doubleack",
		prepare: func(tb testing.TB, r *round) session {
			return newRawSession(tb, r, rawWorkers)
		},
	}
}

// rawSession consumes with nats.go directly. workers 0 means handle and
// Ack inside the Consume callback; otherwise workers goroutines handle and
// DoubleAck.
type rawSession struct {
	r       *round
	workers int
	cons    jetstream.Consumer

	cc   jetstream.ConsumeContext
	msgs chan jetstream.Msg
	wg   sync.WaitGroup
	errs chan error
}

func newRawSession(tb testing.TB, r *round, workers int) *rawSession {
	tb.Helper()
	return &rawSession{r: r, workers: workers, cons: r.mustCreateConsumer(tb)}
}

func (s *rawSession) start(ctx context.Context) error {
	s.errs = make(chan error, 1)
	fail := func(err error) {
		select {
		case s.errs <- err:
		default:
		}
	}
	var cb jetstream.MessageHandler
	if s.workers == 0 {
		cb = func(m jetstream.Msg) {
			if err := s.r.tr.handle(m.Headers().Get(KeyHeader)); err != nil {
				fail(err)
				_ = m.Term()
				return
			}
			if err := m.Ack(); err != nil {
				fail(fmt.Errorf("ack: %w", err))
			}
		}
	} else {
		s.msgs = make(chan jetstream.Msg, rawBatch)
		for range s.workers {
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				for m := range s.msgs {
					if err := s.r.tr.handle(m.Headers().Get(KeyHeader)); err != nil {
						fail(err)
						_ = m.Term()
						continue
					}
					if err := m.DoubleAck(ctx); err != nil {
						fail(fmt.Errorf("double ack: %w", err))
					}
				}
			}()
		}
		cb = func(m jetstream.Msg) { s.msgs <- m }
	}
	var err error
	s.cc, err = s.cons.Consume(cb, jetstream.PullMaxMessages(rawBatch), jetstream.PullExpiry(5*time.Second))
	if err != nil {
		s.stopWorkers()
		return fmt.Errorf("consume: %w", err)
	}
	return nil
}

func (s *rawSession) stopWorkers() {
	if s.msgs != nil {
		close(s.msgs)
		s.wg.Wait()
		s.msgs = nil
	}
}

func (s *rawSession) stop() error {
	if s.cc != nil {
		s.cc.Stop()
		<-s.cc.Closed()
	}
	s.stopWorkers()
	select {
	case err := <-s.errs:
		return err
	default:
		return nil
	}
}

// rawFetchBatch caps one Fetch of the raw-fetch variant, like
// natsjs.Config.Concurrency in the idemq variants (no more messages than
// there are workers).
const rawFetchBatch = idemqConcurrency

// rawFetch is a diagnostic baseline, not a tuned one: nats.go with the
// consumption loop of the idemq adapter — Fetch no more messages than there
// are idle workers (at most idemqConcurrency), one goroutine per message,
// handler then Ack — and none of idemq's pipeline. It separates the cost of
// that loop from the cost of the pipeline.
func rawFetch() variant {
	return variant{
		name:     "raw-fetch",
		baseline: "raw-ack",
		prepare: func(tb testing.TB, r *round) session {
			s := newRawSession(tb, r, 0)
			return &rawFetchSession{raw: s}
		},
	}
}

type rawFetchSession struct {
	raw    *rawSession
	cancel context.CancelFunc
	done   chan struct{}
	wg     sync.WaitGroup
	errs   chan error
}

func (s *rawFetchSession) start(ctx context.Context) error {
	ctx, s.cancel = context.WithCancel(ctx)
	s.done = make(chan struct{})
	s.errs = make(chan error, 1)
	fail := func(err error) {
		select {
		case s.errs <- err:
		default:
		}
	}
	go func() {
		defer close(s.done)
		slots := make(chan struct{}, idemqConcurrency)
		for ctx.Err() == nil {
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return
			}
			n := 1
		fill:
			for n < rawFetchBatch {
				select {
				case slots <- struct{}{}:
					n++
				default:
					break fill
				}
			}
			batch, err := s.raw.cons.Fetch(n, jetstream.FetchMaxWait(time.Second))
			if err != nil {
				for range n {
					<-slots
				}
				if ctx.Err() == nil {
					fail(fmt.Errorf("fetch: %w", err))
				}
				return
			}
			got := 0
			for m := range batch.Messages() {
				got++
				s.wg.Add(1)
				go func() {
					defer func() { <-slots; s.wg.Done() }()
					if err := s.raw.r.tr.handle(m.Headers().Get(KeyHeader)); err != nil {
						fail(err)
						_ = m.Term()
						return
					}
					if err := m.Ack(); err != nil {
						fail(fmt.Errorf("ack: %w", err))
					}
				}()
			}
			for range n - got {
				<-slots
			}
		}
	}()
	return nil
}

func (s *rawFetchSession) stop() error {
	s.cancel()
	<-s.done
	s.wg.Wait()
	select {
	case err := <-s.errs:
		return err
	default:
		return nil
	}
}
