package consumer

import (
	"context"
	"errors"
	"runtime/debug"
	"sync"
	"time"

	"github.com/idemq/idemq/dedupe"
)

// call runs the handler with panic recovery and, when configured, a
// heartbeat that calls m.KeepAlive and extends the claim t. leaseLost reports
// that Extend found the claim taken over; the handler's context was then
// cancelled with cause dedupe.ErrLeaseLost.
//
// The heartbeat costs nothing until the handler outlives one interval: it is
// a timer (time.AfterFunc), not a goroutine, armed per call and re-armed
// after each beat.
func (p *Pipeline) call(ctx context.Context, m *Message, t *dedupe.Ticket) (err error, leaseLost bool) {
	defer func() {
		if r := recover(); r != nil {
			stack := debug.Stack()
			err = &PanicError{Value: r, Stack: stack}
			p.log.Error("consumer: handler panicked", "subject", m.Subject, "id", m.ID, "attempt", m.Attempt,
				"panic", panicText(r), "stack", string(stack))
		}
	}()
	if p.heartbeat <= 0 || (m.KeepAlive == nil && t == nil) {
		return p.h(ctx, m), false
	}
	hctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	hb := &heartbeat{p: p, ctx: hctx, cancel: cancel, m: m, t: t}
	hb.mu.Lock()
	hb.timer = time.AfterFunc(p.heartbeat, hb.beat)
	hb.mu.Unlock()
	defer func() { leaseLost = hb.stop() }()
	return p.h(hctx, m), false
}

// heartbeat keeps one running handler's message and claim alive.
type heartbeat struct {
	p      *Pipeline
	ctx    context.Context
	cancel context.CancelCauseFunc
	m      *Message
	t      *dedupe.Ticket
	timer  *time.Timer

	mu      sync.Mutex
	stopped bool
	lost    bool
	beating sync.WaitGroup // a beat in progress
}

// beat runs on the timer's goroutine: one keep-alive and lease extension,
// then it re-arms the timer unless the handler returned, its context ended
// or the claim was lost.
func (h *heartbeat) beat() {
	h.mu.Lock()
	if h.stopped || h.ctx.Err() != nil {
		h.mu.Unlock()
		return
	}
	h.beating.Add(1)
	h.mu.Unlock()
	defer h.beating.Done()

	p, m, t := h.p, h.m, h.t
	if m.KeepAlive != nil {
		if err := m.KeepAlive(h.ctx); err != nil {
			p.log.Warn("consumer: keep-alive failed", "subject", m.Subject, "id", m.ID, "err", err)
		}
	}
	if t != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(h.ctx), p.storeTimeout)
		sctx, start := p.startStore(sctx, m, StoreExtend)
		err := p.guard.Extend(sctx, *t)
		p.endStore(sctx, m, StoreExtend, start, err)
		cancel()
		switch {
		case errors.Is(err, dedupe.ErrLeaseLost):
			p.log.Warn("consumer: dedupe lease lost while the handler ran; cancelling it", "subject", m.Subject, "id", m.ID, "key", t.Key)
			h.mu.Lock()
			h.lost = true
			h.mu.Unlock()
			h.cancel(dedupe.ErrLeaseLost)
			return
		case err != nil:
			p.log.Warn("consumer: dedupe lease extension failed", "subject", m.Subject, "id", m.ID, "key", t.Key, "err", err)
		}
	}
	h.mu.Lock()
	if !h.stopped && h.ctx.Err() == nil {
		h.timer.Reset(p.heartbeat)
	}
	h.mu.Unlock()
}

// stop ends the heartbeat, waits for a beat in progress and reports whether
// the claim was lost.
func (h *heartbeat) stop() bool {
	h.mu.Lock()
	h.stopped = true
	h.timer.Stop()
	h.mu.Unlock()
	h.beating.Wait()
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lost
}
