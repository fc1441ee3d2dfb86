package natsjs

import (
	"errors"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ackKind is the acknowledgement an ackOp sends.
type ackKind uint8

const (
	opAck  ackKind = iota + 1 // Ack
	opNak                     // NakWithDelay(delay)
	opTerm                    // Term
)

// ackOp is one acknowledgement a worker decided.
type ackOp struct {
	msg   jetstream.Msg
	kind  ackKind
	delay time.Duration
	id    string // the message's ID, for the log of a failure
}

// acker sends the workers' acknowledgements in bursts from one goroutine.
//
// Every Ack, Nak or Term is a small publish, and nats.go writes what is
// buffered each time its flusher goroutine runs. Sent by the workers
// themselves, each acknowledgement went out in a write of its own: the
// worker published, went back to wait for its next message, and the
// flusher — made runnable by the publish — ran at once. That is one write
// system call per message in the client and one read in the server, which
// on a loaded machine cost more than the rest of the consumer's work. The
// acker takes every acknowledgement queued since its last burst, yields
// once so that workers finishing meanwhile join the burst, and publishes
// them back to back, so the flusher sends them in one write. On an idle
// machine the yield returns at once and a burst is one acknowledgement:
// nothing waits on a timer.
//
// Acknowledgements are fire-and-forget publishes either way (the
// consumer's DoubleAck mode does not use the acker): queuing one changes
// when it is written, by the time the other workers take to reach the
// acker, not what is sent.
type acker struct {
	log  *slog.Logger
	wake chan struct{} // one pending signal suffices
	stop chan struct{}
	done chan struct{}

	mu      sync.Mutex
	pending []ackOp
	spare   []ackOp
	stopped bool
}

// newAcker starts an acker; stopAndFlush ends it.
func newAcker(log *slog.Logger) *acker {
	a := &acker{
		log:  log,
		wake: make(chan struct{}, 1),
		stop: make(chan struct{}),
		done: make(chan struct{}),
	}
	go a.run()
	return a
}

// send queues op for the next burst. After stopAndFlush it sends op at
// once, from the caller.
func (a *acker) send(op ackOp) {
	a.mu.Lock()
	if a.stopped {
		a.mu.Unlock()
		a.publish(op)
		return
	}
	a.pending = append(a.pending, op)
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *acker) run() {
	defer close(a.done)
	for {
		select {
		case <-a.wake:
		case <-a.stop:
			a.flush()
			return
		}
		// Let the workers that are runnable now finish and queue their
		// acknowledgements before this burst is taken.
		runtime.Gosched()
		a.flush()
	}
}

// flush publishes every queued acknowledgement.
func (a *acker) flush() {
	a.mu.Lock()
	batch := a.pending
	a.pending = a.spare[:0]
	a.mu.Unlock()
	for i := range batch {
		a.publish(batch[i])
		batch[i] = ackOp{} // drop the message for the collector
	}
	a.mu.Lock()
	a.spare = batch[:0]
	a.mu.Unlock()
}

// publish sends one acknowledgement and logs its failure; a message that
// was already acknowledged (a handed-back one, at shutdown) is not one.
func (a *acker) publish(op ackOp) {
	var err error
	switch op.kind {
	case opAck:
		err = op.msg.Ack()
	case opNak:
		err = op.msg.NakWithDelay(op.delay)
	case opTerm:
		err = op.msg.Term()
	}
	if err == nil || errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
		return
	}
	switch op.kind {
	case opAck:
		a.log.Warn("natsjs: ack failed", "subject", op.msg.Subject(), "id", op.id, "err", err)
	case opNak:
		a.log.Warn("natsjs: nak failed; the server redelivers after AckWait", "subject", op.msg.Subject(), "id", op.id, "err", err)
	case opTerm:
		a.log.Warn("natsjs: term after dead-lettering failed; a redelivery is dead-lettered again and deduped by Nats-Msg-Id",
			"subject", op.msg.Subject(), "id", op.id, "err", err)
	}
}

// stopAndFlush publishes what is queued and ends the acker's goroutine;
// later sends publish directly. It returns once the queue is empty.
func (a *acker) stopAndFlush() {
	a.mu.Lock()
	if a.stopped {
		a.mu.Unlock()
		return
	}
	a.stopped = true
	a.mu.Unlock()
	close(a.stop)
	<-a.done
	a.flush() // what was queued between the last burst and stopped
}
