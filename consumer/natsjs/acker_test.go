package natsjs

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// recMsg is a jetstream.Msg that records the acknowledgements sent for it.
type recMsg struct {
	jetstream.Msg // nil: any other method panics

	mu    sync.Mutex
	acks  int
	naks  []time.Duration
	terms int
	err   error // returned by every acknowledgement
}

func (m *recMsg) Ack() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.acks++
	return m.err
}

func (m *recMsg) NakWithDelay(d time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.naks = append(m.naks, d)
	return m.err
}

func (m *recMsg) Term() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.terms++
	return m.err
}

func (m *recMsg) Subject() string { return "orders.x" }

// TestAckerSendsEachOnce: acknowledgements queued from many goroutines are
// each sent exactly once, of the kind asked, by the time stopAndFlush
// returns; one sent after it is published by the caller.
func TestAckerSendsEachOnce(t *testing.T) {
	a := newAcker(slog.New(slog.NewTextHandler(io.Discard, nil)))
	const workers, per = 8, 500
	msgs := make([]*recMsg, workers*per)
	for i := range msgs {
		msgs[i] = &recMsg{}
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w * per; i < (w+1)*per; i++ {
				switch i % 3 {
				case 0:
					a.send(ackOp{msg: msgs[i], kind: opAck})
				case 1:
					a.send(ackOp{msg: msgs[i], kind: opNak, delay: time.Duration(i) * time.Millisecond})
				default:
					a.send(ackOp{msg: msgs[i], kind: opTerm})
				}
			}
		})
	}
	wg.Wait()
	a.stopAndFlush()
	for i, m := range msgs {
		m.mu.Lock()
		acks, naks, terms := m.acks, m.naks, m.terms
		m.mu.Unlock()
		switch i % 3 {
		case 0:
			if acks != 1 || len(naks) != 0 || terms != 0 {
				t.Fatalf("message %d: acks %d, naks %v, terms %d; want one ack", i, acks, naks, terms)
			}
		case 1:
			if acks != 0 || len(naks) != 1 || naks[0] != time.Duration(i)*time.Millisecond || terms != 0 {
				t.Fatalf("message %d: acks %d, naks %v, terms %d; want one nak with delay %v", i, acks, naks, terms, time.Duration(i)*time.Millisecond)
			}
		default:
			if acks != 0 || len(naks) != 0 || terms != 1 {
				t.Fatalf("message %d: acks %d, naks %v, terms %d; want one term", i, acks, naks, terms)
			}
		}
	}

	late := &recMsg{}
	a.send(ackOp{msg: late, kind: opAck})
	if late.acks != 1 {
		t.Fatalf("an ack sent after stopAndFlush was published %d times before send returned, want 1", late.acks)
	}
	a.stopAndFlush() // a second stop is a no-op
}

// TestAckerLogsFailures: a failed acknowledgement is logged with the
// message's ID; an already acknowledged message is not a failure.
func TestAckerLogsFailures(t *testing.T) {
	var mu sync.Mutex
	var logged []string
	h := recordHandler{fn: func(msg string, attrs map[string]string) {
		mu.Lock()
		defer mu.Unlock()
		logged = append(logged, msg+" id="+attrs["id"])
	}}
	a := newAcker(slog.New(h))
	a.send(ackOp{msg: &recMsg{err: errors.New("connection closed")}, kind: opAck, id: "m-1"})
	a.send(ackOp{msg: &recMsg{err: jetstream.ErrMsgAlreadyAckd}, kind: opNak, id: "m-2"})
	a.stopAndFlush()
	mu.Lock()
	defer mu.Unlock()
	if len(logged) != 1 || logged[0] != "natsjs: ack failed id=m-1" {
		t.Fatalf("logged %q, want one ack failure for m-1", logged)
	}
}

// recordHandler is a slog.Handler passing each record's message and
// attributes (as text) to fn.
type recordHandler struct {
	fn func(msg string, attrs map[string]string)
}

func (recordHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h recordHandler) Handle(_ context.Context, r slog.Record) error {
	attrs := map[string]string{}
	r.Attrs(func(a slog.Attr) bool {
		attrs[a.Key] = a.Value.String()
		return true
	})
	h.fn(r.Message, attrs)
	return nil
}

func (h recordHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h recordHandler) WithGroup(string) slog.Handler      { return h }
