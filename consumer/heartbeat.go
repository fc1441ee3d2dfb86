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
// The heartbeat costs little until the handler outlives one interval: it is
// a timer (time.AfterFunc), not a goroutine, re-armed after each beat, and
// its state and timer are reused from call to call (heartbeats). Without a
// claim there is no lease to lose, so the handler gets ctx itself, not a
// context of its own.
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
	hctx := ctx
	var cancel context.CancelCauseFunc
	if t != nil {
		hctx, cancel = context.WithCancelCause(ctx)
		defer cancel(nil)
	}
	hb := p.startHeartbeat(hctx, cancel, m, t)
	defer func() { leaseLost = p.stopHeartbeat(hb) }()
	return p.h(hctx, m), false
}

// heartbeats holds stopped heartbeats, their timers disarmed, for reuse.
var heartbeats sync.Pool

// heartbeat keeps one running handler's message and claim alive.
type heartbeat struct {
	timer *time.Timer // fires beat; created once per heartbeat value

	mu      sync.Mutex
	p       *Pipeline
	ctx     context.Context
	cancel  context.CancelCauseFunc // nil without a claim
	m       *Message
	t       dedupe.Ticket // a copy, so that the caller's stays on its stack
	claimed bool          // t is set
	stopped bool
	lost    bool
	beating sync.WaitGroup // a beat in progress
}

// startHeartbeat arms a heartbeat for one call, reusing a stopped one when
// the pool has it.
func (p *Pipeline) startHeartbeat(ctx context.Context, cancel context.CancelCauseFunc, m *Message, t *dedupe.Ticket) *heartbeat {
	hb, _ := heartbeats.Get().(*heartbeat)
	if hb == nil {
		hb = &heartbeat{}
	}
	hb.mu.Lock()
	hb.p, hb.ctx, hb.cancel, hb.m = p, ctx, cancel, m
	hb.t, hb.claimed = dedupe.Ticket{}, t != nil
	if t != nil {
		hb.t = *t
	}
	hb.stopped, hb.lost = false, false
	if hb.timer == nil {
		hb.timer = time.AfterFunc(p.heartbeat, hb.beat)
	} else {
		hb.timer.Reset(p.heartbeat)
	}
	hb.mu.Unlock()
	return hb
}

// stopHeartbeat ends hb, waits for a beat in progress and reports whether
// the claim was lost. hb goes back to the pool only when its timer was
// disarmed before firing: a timer that fired has a beat that may not have
// taken hb.mu yet, and that beat must find hb stopped, not reused.
func (p *Pipeline) stopHeartbeat(hb *heartbeat) bool {
	lost, disarmed := hb.stop()
	if disarmed {
		hb.mu.Lock()
		hb.p, hb.ctx, hb.cancel, hb.m, hb.t = nil, nil, nil, nil, dedupe.Ticket{}
		hb.mu.Unlock()
		heartbeats.Put(hb)
	}
	return lost
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
	p, m, t, claimed := h.p, h.m, h.t, h.claimed
	h.mu.Unlock()
	defer h.beating.Done()

	if m.KeepAlive != nil {
		if err := m.KeepAlive(h.ctx); err != nil {
			p.log.Warn("consumer: keep-alive failed", "subject", m.Subject, "id", m.ID, "err", err)
		}
	}
	if claimed {
		err := p.storeCall(h.ctx, m, StoreExtend, func(ctx context.Context) error { return p.guard.Extend(ctx, t) })
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
// the claim was lost, and whether the timer was disarmed before it fired
// (no beat can start after stop returns).
func (h *heartbeat) stop() (lost, disarmed bool) {
	h.mu.Lock()
	h.stopped = true
	disarmed = h.timer.Stop()
	h.mu.Unlock()
	h.beating.Wait()
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.lost, disarmed
}
