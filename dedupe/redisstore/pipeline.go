package redisstore

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// op is one command the store sends: a script (EVALSHA, resent as EVAL when
// the server answers NOSCRIPT) or, when script is nil, the plain command in
// args. After it ran, cmd holds its reply or per-command error, or err holds
// the failure of the whole round trip that carried it.
type op struct {
	script *redis.Script
	key    string
	args   []any
	cmd    *redis.Cmd
	err    error

	// Batching state. ctx is the caller's; wake is signalled (buffered, one
	// pending signal suffices) when done or lead changes; done and lead are
	// guarded by Store.mu.
	ctx  context.Context
	wake chan struct{}
	done bool
	lead bool
}

// queueOn adds o to pipe, as EVAL when eval is set.
func (o *op) queueOn(ctx context.Context, pipe redis.Pipeliner, eval bool) {
	switch {
	case o.script == nil:
		o.cmd = pipe.Do(ctx, o.args...)
	case eval:
		o.cmd = o.script.Eval(ctx, pipe, []string{o.key}, o.args...)
	default:
		o.cmd = o.script.EvalSha(ctx, pipe, []string{o.key}, o.args...)
	}
}

// result returns o's reply or error: the round trip's failure, else the
// command's own error reply (redis.Nil for a nil reply).
func (o *op) result() (*redis.Cmd, error) {
	if o.err != nil {
		return nil, o.err
	}
	return o.cmd, o.cmd.Err()
}

// exec runs o and returns the failure of the round trip that carried it (the
// command's own error reply stays in o.cmd). With batching on, o joins the
// queue: the caller that finds no flush in progress becomes the leader and
// sends at most maxBatch queued ops in one pipeline, then hands leadership
// to the first op still queued, whose caller sends the next batch. No
// goroutine and no timer outlive a call.
//
// A caller whose ctx ends returns ctx.Err(): its op is dropped if it is still
// queued, and otherwise may still run (it is already on the wire). The
// leader sends its batch under a context that ends only when every caller in
// the batch has given up, so it returns when the round trip does.
func (s *Store) exec(ctx context.Context, o *op) error {
	if s.maxBatch <= 1 {
		s.send(ctx, []*op{o})
		return o.err
	}
	o.ctx = ctx
	o.wake = make(chan struct{}, 1)
	s.mu.Lock()
	s.queue = append(s.queue, o)
	lead := !s.flushing
	s.flushing = true
	s.mu.Unlock()
	for {
		if lead {
			s.flush()
		}
		select {
		case <-o.wake:
		case <-ctx.Done():
			if s.abandon(o) {
				return o.err
			}
			return ctx.Err()
		}
		s.mu.Lock()
		done := o.done
		lead, o.lead = o.lead, false
		s.mu.Unlock()
		if done {
			return o.err
		}
	}
}

// signal wakes o's caller; one pending signal is enough, since the caller
// reads the state under the lock.
func signal(o *op) {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// abandon withdraws o after its caller's ctx ended and reports whether o had
// already completed. A queued op is removed and never sent; an op that was
// handed leadership passes it on to the next queued op.
func (s *Store) abandon(o *op) (done bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o.done {
		return true
	}
	for i, q := range s.queue {
		if q == o {
			copy(s.queue[i:], s.queue[i+1:])
			s.queue[len(s.queue)-1] = nil
			s.queue = s.queue[:len(s.queue)-1]
			break
		}
	}
	if o.lead {
		o.lead = false
		s.handOff()
	}
	return false
}

// handOff makes the first queued op the leader, or ends the flush when the
// queue is empty. s.mu must be held.
func (s *Store) handOff() {
	if len(s.queue) == 0 {
		s.flushing = false
		return
	}
	s.queue[0].lead = true
	signal(s.queue[0])
}

// flush sends one batch from the head of the queue (the leader's own op is
// its first), marks its ops done and hands leadership on. Ops whose caller
// gave up before the batch left are not sent.
func (s *Store) flush() {
	s.mu.Lock()
	n := min(len(s.queue), s.maxBatch)
	taken := make([]*op, n)
	copy(taken, s.queue)
	rest := copy(s.queue, s.queue[n:])
	clear(s.queue[rest:])
	s.queue = s.queue[:rest]
	s.mu.Unlock()

	batch := make([]*op, 0, n)
	for _, o := range taken {
		if err := o.ctx.Err(); err != nil {
			o.err = err
			continue
		}
		batch = append(batch, o)
	}
	switch len(batch) {
	case 0:
	case 1: // the batch serves its caller alone
		s.send(batch[0].ctx, batch)
	default:
		ctx, stop := batchContext(batch)
		s.send(ctx, batch)
		stop()
	}

	s.mu.Lock()
	for _, o := range taken {
		o.done = true
		signal(o)
	}
	s.handOff()
	s.mu.Unlock()
}

// batchContext returns the context a batch is sent under: the first
// caller's values, cancelled only once every caller in the batch has given
// up (a batch serves them all). stop releases it.
func batchContext(batch []*op) (context.Context, func()) {
	ctx, cancel := context.WithCancel(context.WithoutCancel(batch[0].ctx))
	for _, o := range batch {
		if o.ctx.Done() == nil { // this caller never gives up
			return ctx, cancel
		}
	}
	var left atomic.Int64
	left.Store(int64(len(batch)))
	stops := make([]func() bool, len(batch))
	for i, o := range batch {
		stops[i] = context.AfterFunc(o.ctx, func() {
			if left.Add(-1) == 0 {
				cancel()
			}
		})
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}

// send runs ops in one round trip: a lone op as a single command (a script
// through Script.Run, which falls back to EVAL on NOSCRIPT), several as one
// pipeline, followed by a second pipeline of EVALs for the scripts the
// server answered NOSCRIPT to (it restarted or flushed its script cache;
// those did not run). Each op's reply or error reply lands in its cmd; a
// failure of the round trip itself (connection, context) lands in every
// op's err.
func (s *Store) send(ctx context.Context, ops []*op) {
	if len(ops) == 1 {
		o := ops[0]
		if o.script != nil {
			o.cmd = o.script.Run(ctx, s.c, []string{o.key}, o.args...)
		} else {
			o.cmd = s.c.Do(ctx, o.args...)
		}
		if err := o.cmd.Err(); err != nil && !isReply(err) {
			o.err = fmt.Errorf("redisstore: %w", err)
		}
		return
	}
	if s.pipeline(ctx, ops, false) {
		return
	}
	var missing []*op
	for _, o := range ops {
		if o.script != nil && redis.HasErrorPrefix(o.cmd.Err(), "NOSCRIPT") {
			missing = append(missing, o)
		}
	}
	if len(missing) > 0 {
		s.pipeline(ctx, missing, true)
	}
}

// pipeline sends ops as one pipeline and reports whether the round trip
// failed as a whole (then every op's err is set).
func (s *Store) pipeline(ctx context.Context, ops []*op, eval bool) (failed bool) {
	pipe := s.c.Pipeline()
	for _, o := range ops {
		o.queueOn(ctx, pipe, eval)
	}
	if _, err := pipe.Exec(ctx); err == nil {
		return false
	}
	for _, o := range ops {
		if err := o.cmd.Err(); err != nil && !isReply(err) {
			err = fmt.Errorf("redisstore: pipeline of %d commands: %w", len(ops), err)
			for _, o := range ops {
				o.err = err
			}
			return true
		}
	}
	return false
}

// isReply reports whether err is the server's answer to one command (an
// error reply, or redis.Nil for a nil reply) rather than a failure to
// reach the server.
func isReply(err error) bool {
	var rerr redis.Error
	return errors.Is(err, redis.Nil) || errors.As(err, &rerr)
}
