package retry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"
	"time"
)

func TestPermanent(t *testing.T) {
	if Permanent(nil) != nil {
		t.Fatal("Permanent(nil) != nil")
	}
	err := Permanent(io.ErrUnexpectedEOF)
	if err.Error() != io.ErrUnexpectedEOF.Error() {
		t.Errorf("Error() = %q, want the cause's text", err.Error())
	}
	wrapped := fmt.Errorf("decode payment: %w", err)
	if !IsPermanent(wrapped) {
		t.Error("IsPermanent lost through fmt.Errorf")
	}
	if !errors.Is(wrapped, io.ErrUnexpectedEOF) {
		t.Error("errors.Is does not see the cause through Permanent")
	}
	var pe *PermanentError
	if !errors.As(wrapped, &pe) || pe.Err != io.ErrUnexpectedEOF {
		t.Errorf("errors.As = %v, want the PermanentError with its cause", pe)
	}
	if IsPermanent(io.EOF) || IsPermanent(nil) {
		t.Error("IsPermanent true for an unmarked error")
	}
}

func TestAfter(t *testing.T) {
	err := After(3*time.Second, io.EOF)
	if d, ok := AfterDelay(fmt.Errorf("op: %w", err)); !ok || d != 3*time.Second {
		t.Errorf("AfterDelay = %v, %v; want 3s, true", d, ok)
	}
	if !errors.Is(err, io.EOF) {
		t.Error("errors.Is does not see the cause through After")
	}
	if got, want := err.Error(), "EOF (retry after 3s)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if d, ok := AfterDelay(After(-time.Second, io.EOF)); !ok || d != 0 {
		t.Errorf("negative After: AfterDelay = %v, %v; want 0, true", d, ok)
	}
	later := After(time.Second, nil)
	if later == nil || !errors.Is(later, ErrRetryLater) {
		t.Errorf("After(d, nil) = %v, want an error wrapping ErrRetryLater", later)
	}
	if d, ok := AfterDelay(io.EOF); ok || d != 0 {
		t.Errorf("AfterDelay(unmarked) = %v, %v; want 0, false", d, ok)
	}
	if _, ok := AfterDelay(nil); ok {
		t.Error("AfterDelay(nil) reported a delay")
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want Class
	}{
		{"nil", nil, Success},
		{"plain", io.EOF, Transient},
		{"context", context.DeadlineExceeded, Transient},
		{"permanent", Permanent(io.EOF), Terminal},
		{"permanent wrapped twice", fmt.Errorf("a: %w", fmt.Errorf("b: %w", Permanent(io.EOF))), Terminal},
		{"after", After(time.Second, io.EOF), Deferred},
		{"after wrapped", fmt.Errorf("a: %w", After(time.Second, nil)), Deferred},
		{"permanent beats after (outside)", Permanent(After(time.Second, io.EOF)), Terminal},
		{"permanent beats after (inside)", After(time.Second, Permanent(io.EOF)), Terminal},
		{"joined with a permanent", errors.Join(io.EOF, Permanent(io.ErrClosedPipe)), Terminal},
		{"joined with an after", errors.Join(io.EOF, After(time.Second, nil)), Deferred},
		{"formatted with %v loses the mark", fmt.Errorf("a: %v", Permanent(io.EOF)), Transient},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Classify(tt.err); got != tt.want {
				t.Errorf("Classify(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}

func TestClassString(t *testing.T) {
	for c, want := range map[Class]string{Transient: "transient", Terminal: "terminal", Deferred: "deferred", Success: "success", 42: "class(42)"} {
		if got := c.String(); got != want {
			t.Errorf("Class(%d).String() = %q, want %q", int(c), got, want)
		}
	}
}
