package natsjs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/consumer"
)

// Batch-mode defaults (NewBatch).
const (
	// DefaultBatchSize is Config.BatchSize when zero: 250 messages per
	// batch handler call.
	DefaultBatchSize = 250
	// DefaultBatchConcurrency is Config.Concurrency in batch mode when
	// zero: 4 batches at once, so that while one waits for the database the
	// others run.
	DefaultBatchConcurrency = 4
	// DefaultBatchPullWait is Config.PullWait in batch mode when zero: 1s,
	// how long an idle worker waits for the first message of a batch (it
	// bounds how long Run takes to return after its context ends).
	DefaultBatchPullWait = time.Second
	// MinBatchMaxAckPending is the least MaxAckPending the batch durable
	// gets (2 × Concurrency × BatchSize when larger): 1000.
	MinBatchMaxAckPending = 1000
)

// ErrBatchResults is the batch error when a BatchHandler returns a number
// of results different from the number of messages it was given.
var ErrBatchResults = errors.New("natsjs: batch handler returned the wrong number of results")

// NewBatch returns a Consumer in batch mode: each of Concurrency workers
// fetches up to BatchSize messages, gives them to h together, and turns each
// message's error into broker actions through the same pipeline and the
// same translation as New's consumer — one place for the outcome table. h
// is typically outbox.Inbox.BatchHandler, which runs a whole batch in one
// database transaction.
//
// In batch mode Pipeline.Guard must be nil (the batch handler dedupes, in
// its transaction), so attempts are the broker's delivery count: a message
// delivered past the retry policy's attempts is dead-lettered without being
// given to h. When h reports that the batch did not take effect (batchErr,
// or a panic), every message is handed back with the pipeline's
// UnavailableDelay and the worker backs off (100ms doubling to
// MaxProbeInterval). There are no heartbeats: a batch must finish well
// within AckWait.
func NewBatch(js jetstream.JetStream, cfg Config, h consumer.BatchHandler) (*Consumer, error) {
	if h == nil {
		return nil, fmt.Errorf("%w: batch handler is nil", ErrInvalidConfig)
	}
	if cfg.Pipeline.Guard != nil {
		return nil, fmt.Errorf("%w: Pipeline.Guard must be nil in batch mode: the batch handler dedupes (outbox.Inbox in its transaction)", ErrInvalidConfig)
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultBatchConcurrency
	}
	if cfg.PullWait <= 0 {
		cfg.PullWait = DefaultBatchPullWait
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	cfg.FetchBatch = cfg.BatchSize
	c, err := newConsumer(js, cfg, nil, true)
	if err != nil {
		return nil, err
	}
	c.batch = h
	return c, nil
}

// batchResultsKey carries a batch's per-message errors to batchResult.
type batchResultsKey struct{}

// batchResult is the pipeline's handler in batch mode: it answers with the
// error the batch handler returned for m.
func batchResult(ctx context.Context, m *consumer.Message) error {
	results, _ := ctx.Value(batchResultsKey{}).(map[*consumer.Message]error)
	return results[m]
}

// runBatches runs the batch workers until ctx ends or one of them meets a
// fatal error. A worker that finds the breaker open (the dead-letter stream
// does not answer) waits for the dependency while holding the pause lock,
// so that the others stop between batches too.
func (c *Consumer) runBatches(ctx context.Context, cons jetstream.Consumer) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var pause sync.RWMutex
	errs := make(chan error, c.cfg.Concurrency)
	for range c.cfg.Concurrency {
		go func() {
			err := c.batchWorker(wctx, cons, &pause)
			if err != nil {
				cancel() // one fatal error stops every worker
			}
			errs <- err
		}()
	}
	c.markReady()
	var first error
	for range c.cfg.Concurrency {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// batchWorker fetches and processes batches until ctx ends.
func (c *Consumer) batchWorker(ctx context.Context, cons jetstream.Consumer, pause *sync.RWMutex) error {
	failures := 0
	backoff := func() bool {
		failures++
		return sleepCtx(ctx, min(MinProbeInterval<<min(failures-1, 10), c.cfg.MaxProbeInterval))
	}
	for ctx.Err() == nil {
		select {
		case <-c.brk.trip:
			pause.Lock()
			ok := c.waitDependency(ctx)
			pause.Unlock()
			if !ok {
				return nil
			}
		default:
		}
		msgs, err := c.fetch(ctx, cons)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if fatal(err) {
				return fmt.Errorf("natsjs: batch fetch from %s: %w", c.cfg.Durable, err)
			}
			c.log.Warn("natsjs: batch fetch failed; retrying", "err", err)
			if !backoff() {
				return nil
			}
			continue
		}
		if len(msgs) == 0 {
			continue
		}
		pause.RLock()
		// A batch in flight finishes even when ctx ends: it is short, and
		// finishing it avoids redelivering work already done.
		ok := c.processBatch(context.WithoutCancel(ctx), msgs)
		pause.RUnlock()
		if ok {
			failures = 0
		} else if !backoff() {
			return nil
		}
	}
	return nil
}

// processBatch runs one batch through the batch handler and the pipeline,
// and applies every outcome. It reports false when the batch did not take
// effect (every message was handed back).
func (c *Consumer) processBatch(ctx context.Context, msgs []jetstream.Msg) bool {
	conv := make([]*consumer.Message, len(msgs))
	outs := make([]consumer.Outcome, len(msgs))
	run := make([]*consumer.Message, 0, len(msgs))
	runIdx := make([]int, 0, len(msgs))
	attempts := c.pipe.Policy().Attempts()
	for i, msg := range msgs {
		m, err := Convert(msg)
		if err != nil {
			c.log.Error("natsjs: cannot read message metadata; redelivering", "subject", msg.Subject(), "err", err)
			_ = msg.NakWithDelay(c.cfg.DeadLetter.RetryDelay)
			continue
		}
		conv[i] = m
		if m.Attempt > attempts {
			outs[i] = c.pipe.Process(ctx, m) // dead-lettered, never given to the batch handler
			continue
		}
		run = append(run, m)
		runIdx = append(runIdx, i)
	}
	ok := true
	if len(run) > 0 {
		errs, err := c.callBatch(ctx, run)
		if err != nil {
			ok = false
			var una *consumer.UnavailableError
			if errors.As(err, &una) {
				// The batch handler's database did not answer: pause and
				// probe it, as a store outage, instead of churning.
				for range DefaultPauseThreshold {
					c.brk.observe(consumer.Outcome{Action: consumer.Retry, Unavailable: consumer.HandlerUnavailable, Probe: una.Probe, Err: err})
				}
			}
			delay := c.pipe.UnavailableDelay()
			c.log.Warn("natsjs: batch did not take effect; handing it back", "messages", len(run), "retry_in", delay, "err", err)
			for _, i := range runIdx {
				_ = msgs[i].NakWithDelay(delay)
				conv[i] = nil
			}
		} else {
			results := make(map[*consumer.Message]error, len(run))
			for j, m := range run {
				results[m] = errs[j]
			}
			rctx := context.WithValue(ctx, batchResultsKey{}, results)
			for _, i := range runIdx {
				outs[i] = c.pipe.Process(rctx, conv[i])
			}
		}
	}
	c.applyAll(ctx, msgs, conv, outs)
	return ok
}

// applyAll applies the outcomes of the messages that have one.
func (c *Consumer) applyAll(ctx context.Context, msgs []jetstream.Msg, conv []*consumer.Message, outs []consumer.Outcome) {
	for i, msg := range msgs {
		if conv[i] == nil {
			continue
		}
		c.apply(ctx, ctx, msg, conv[i], outs[i])
		c.brk.observe(outs[i])
	}
}

// callBatch calls the batch handler, turning a panic or a wrong number of
// results into a batch error.
func (c *Consumer) callBatch(ctx context.Context, msgs []*consumer.Message) (errs []error, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = &consumer.PanicError{Value: r}
		}
	}()
	errs, err = c.batch(ctx, msgs)
	if err == nil && len(errs) != len(msgs) {
		err = fmt.Errorf("%w: %d for %d messages", ErrBatchResults, len(errs), len(msgs))
	}
	return errs, err
}

// fetch returns up to BatchSize messages: whatever is available at once,
// else it waits up to PullWait for one message and adds what arrived with
// it.
func (c *Consumer) fetch(ctx context.Context, cons jetstream.Consumer) ([]jetstream.Msg, error) {
	n := c.cfg.BatchSize
	msgs, err := drain(cons.FetchNoWait(n))
	if err != nil || len(msgs) > 0 {
		return msgs, err
	}
	wait := c.cfg.PullWait
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl))
	}
	if wait <= 0 {
		return nil, ctx.Err()
	}
	msgs, err = drain(cons.Fetch(1, jetstream.FetchMaxWait(wait)))
	if err != nil || len(msgs) == 0 || n == 1 {
		return msgs, err
	}
	more, err := drain(cons.FetchNoWait(n - 1))
	return append(msgs, more...), err
}

func drain(batch jetstream.MessageBatch, err error) ([]jetstream.Msg, error) {
	if err != nil {
		return nil, err
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
		return msgs, err
	}
	return msgs, nil
}

// sleepCtx sleeps d or until ctx ends; it reports whether it slept the
// whole time.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
