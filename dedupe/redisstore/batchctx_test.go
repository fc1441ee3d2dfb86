package redisstore

import (
	"context"
	"testing"
	"time"
)

func opsOf(ctxs ...context.Context) []*op {
	ops := make([]*op, len(ctxs))
	for i, c := range ctxs {
		ops[i] = &op{ctx: c}
	}
	return ops
}

// waitDone fails unless ctx ends within a generous bound.
func waitDone(t *testing.T, ctx context.Context, what string) {
	t.Helper()
	select {
	case <-ctx.Done():
	case <-time.After(10 * time.Second):
		t.Fatalf("%s: the batch context did not end", what)
	}
}

// TestBatchContextEndsWhenEveryCallerGaveUp: the batch's context ends only
// once every caller has given up — each distinct context without a
// deadline cancelled, and the latest deadline passed — and never when a
// caller cannot give up.
func TestBatchContextEndsWhenEveryCallerGaveUp(t *testing.T) {
	t.Run("shared and distinct contexts", func(t *testing.T) {
		a, cancelA := context.WithCancel(context.Background())
		b, cancelB := context.WithCancel(context.Background())
		defer cancelA()
		defer cancelB()
		// Three ops share a (one watched through a value context on it).
		type markKey struct{}
		va := context.WithValue(a, markKey{}, 1)
		ctx, stop := batchContext(opsOf(a, va, a, b))
		defer stop()
		cancelA()
		time.Sleep(10 * time.Millisecond) // let a wrongly armed watch fire
		if ctx.Err() != nil {
			t.Fatal("the batch context ended while b still waits")
		}
		cancelB()
		waitDone(t, ctx, "a and b cancelled")
	})
	t.Run("deadline", func(t *testing.T) {
		a, cancelA := context.WithCancel(context.Background())
		defer cancelA()
		far, cancelFar := context.WithTimeout(context.Background(), time.Hour)
		defer cancelFar()
		ctx, stop := batchContext(opsOf(a, far))
		defer stop()
		cancelA()
		time.Sleep(10 * time.Millisecond)
		if ctx.Err() != nil {
			t.Fatal("the batch context ended an hour before the latest deadline")
		}

		soon, cancelSoon := context.WithTimeout(context.Background(), 20*time.Millisecond)
		defer cancelSoon()
		b, cancelB := context.WithCancel(context.Background())
		ctx2, stop2 := batchContext(opsOf(soon, b))
		defer stop2()
		cancelB()
		waitDone(t, ctx2, "b cancelled and the deadline passed")
	})
	t.Run("a caller that never gives up", func(t *testing.T) {
		a, cancelA := context.WithCancel(context.Background())
		ctx, stop := batchContext(opsOf(a, context.Background()))
		defer stop()
		cancelA()
		if ctx.Done() != nil && ctx.Err() != nil {
			t.Fatal("the batch context ended though one caller never gives up")
		}
	})
	t.Run("values of the first caller", func(t *testing.T) {
		type key struct{}
		a := context.WithValue(context.Background(), key{}, "v")
		ctx, stop := batchContext(opsOf(a))
		defer stop()
		if ctx.Value(key{}) != "v" {
			t.Fatal("the batch context lost the first caller's values")
		}
	})
}
