package consumer

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"
)

type ctxKey struct{}

// A store call's context has StoreTimeout (plus at most one window), the
// delivery's values and none of its cancellation.
func TestStoreContextDeadlineAndValues(t *testing.T) {
	const timeout = 5 * time.Second
	d := newDeadlines(timeout)
	if d.window != timeout/deadlineWindows {
		t.Fatalf("window %v, want %v", d.window, timeout/deadlineWindows)
	}
	parent, cancel := context.WithCancelCause(context.WithValue(context.Background(), ctxKey{}, "span"))
	before := time.Now()
	ctx := d.context(parent)
	after := time.Now()
	dl, ok := ctx.Deadline()
	if !ok {
		t.Fatal("no deadline")
	}
	if dl.Before(before.Add(timeout)) || dl.After(after.Add(timeout+d.window)) {
		t.Errorf("deadline %v after the call, want between %v and %v", dl.Sub(before), timeout, timeout+d.window)
	}
	if got := ctx.Value(ctxKey{}); got != "span" {
		t.Errorf("value %v, want the delivery's", got)
	}
	cancel(errors.New("shutting down"))
	if err := ctx.Err(); err != nil {
		t.Errorf("the delivery's cancellation reached the store call: %v", err)
	}
	if err := context.Cause(ctx); err != nil {
		t.Errorf("Cause %v, want nil while the call runs", err)
	}
	select {
	case <-ctx.Done():
		t.Error("done before its deadline")
	default:
	}
}

// Calls starting in one window share its context (one timer); a later
// window has its own.
func TestStoreContextsShareAWindow(t *testing.T) {
	d := newDeadlines(time.Hour) // windows of about 56s: the calls below fall in one or two
	dones := map[<-chan struct{}]int{}
	for range 100 {
		dones[d.context(context.Background()).Done()]++
	}
	if len(dones) > 2 {
		t.Errorf("100 calls made %d deadline contexts, want at most 2", len(dones))
	}

	d = newDeadlines(time.Millisecond) // 1ms windows
	first := d.context(context.Background()).Done()
	time.Sleep(3 * time.Millisecond)
	if d.context(context.Background()).Done() == first {
		t.Error("a call two windows later got the first window's context")
	}
}

// The context ends at its deadline with DeadlineExceeded, and so do the
// contexts derived from it, which register with the shared context
// instead of starting a goroutine each.
func TestStoreContextEnds(t *testing.T) {
	d := newDeadlines(20 * time.Millisecond)
	ctx := d.context(context.Background())
	const n = 500
	g0 := runtime.NumGoroutine()
	children := make([]context.Context, n)
	stops := make([]context.CancelFunc, n)
	for i := range children {
		children[i], stops[i] = context.WithCancel(ctx)
	}
	if g := runtime.NumGoroutine() - g0; g > n/10 {
		t.Errorf("%d derived contexts started %d goroutines", n, g)
	}
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the store call's context never ended")
	}
	if !errors.Is(ctx.Err(), context.DeadlineExceeded) {
		t.Errorf("Err %v, want DeadlineExceeded", ctx.Err())
	}
	for i, c := range children {
		select {
		case <-c.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("derived context %d did not end with its parent", i)
		}
		if !errors.Is(c.Err(), context.Canceled) && !errors.Is(c.Err(), context.DeadlineExceeded) {
			t.Errorf("derived context %d: Err %v", i, c.Err())
		}
		stops[i]()
	}
}
