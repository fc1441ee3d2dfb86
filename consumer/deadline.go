package consumer

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// deadlineWindows is how many windows one StoreTimeout is cut into: a
// store call's context ends between StoreTimeout and StoreTimeout plus
// StoreTimeout/deadlineWindows after the call began.
const deadlineWindows = 64

// minDeadlineWindow bounds a window from below, so that a short
// StoreTimeout does not make a timer per call again.
const minDeadlineWindow = time.Millisecond

// deadlines gives the store calls made after a handler (Complete, Release,
// Snooze, Delete, Extend) their StoreTimeout without a timer per call:
// the calls that start in the same window (StoreTimeout/deadlineWindows
// long, at least minDeadlineWindow) share one context that ends
// StoreTimeout after the window's end, so each call gets at least
// StoreTimeout and at most one window more. A call's own context is a
// storeCtx: that shared deadline, with the values (trace spans, loggers)
// of the delivery's context and none of its cancellation. At most
// deadlineWindows+1 windows' timers are pending at once, each released when
// it fires.
type deadlines struct {
	timeout time.Duration
	window  time.Duration
	epoch   time.Time // the windows are counted from it, monotonically

	cur atomic.Pointer[deadlineWindow]
	mu  sync.Mutex // serialises making the next window
}

// deadlineWindow is the shared context of the calls starting before end
// (time since deadlines.epoch).
type deadlineWindow struct {
	end time.Duration
	ctx context.Context
}

func newDeadlines(timeout time.Duration) *deadlines {
	return &deadlines{
		timeout: timeout,
		window:  max(timeout/deadlineWindows, minDeadlineWindow),
		epoch:   time.Now(),
	}
}

// context returns the context of a store call starting now on behalf of a
// delivery whose context is ctx. It never needs to be cancelled: its
// deadline's timer is shared and fires by itself.
func (d *deadlines) context(ctx context.Context) context.Context {
	now := time.Since(d.epoch)
	w := d.cur.Load()
	if w == nil || now >= w.end {
		w = d.next(now)
	}
	return &storeCtx{Context: w.ctx, values: context.WithoutCancel(ctx)}
}

// next returns the window holding now, making it if no other call did.
func (d *deadlines) next(now time.Duration) *deadlineWindow {
	d.mu.Lock()
	defer d.mu.Unlock()
	if w := d.cur.Load(); w != nil && now < w.end {
		return w
	}
	end := (now/d.window + 1) * d.window
	// The context's own timer releases it at its deadline; it is never
	// cancelled before: every call it serves ends by then or is cut off.
	ctx, cancel := context.WithDeadline(context.Background(), d.epoch.Add(end+d.timeout))
	_ = cancel
	w := &deadlineWindow{end: end, ctx: ctx}
	d.cur.Store(w)
	return w
}

// storeCtx is a store call's context: the deadline, Done channel and error
// of its window's shared context, and the values of the delivery's context
// (without its cancellation: a shutdown still settles claims).
type storeCtx struct {
	context.Context // the window's: Deadline, Done, Err
	values          context.Context
}

// Value returns the delivery context's value for key.
func (c *storeCtx) Value(key any) any { return c.values.Value(key) }

// AfterFunc arranges for f to run when the window's context ends, so that
// context.WithCancel and context.AfterFunc on a storeCtx register with
// that context instead of starting a goroutine each to watch it.
func (c *storeCtx) AfterFunc(f func()) (stop func() bool) {
	return context.AfterFunc(c.Context, f)
}

// String names the context for debugging.
func (c *storeCtx) String() string { return "consumer.storeCtx" }
