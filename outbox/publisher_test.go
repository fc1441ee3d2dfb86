package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestJetStreamPublisherResults publishes through JetStreamPublisher on
// nats.go's own context, from concurrent calls as a relay's workers do,
// and checks each message's result: stored with its Nats-Msg-Id, a
// republished id reported as a duplicate, a subject nobody answers timed
// out (and its late answer not taken for another's), a subject no stream
// captures rejected once the API confirms it.
func TestJetStreamPublisherResults(t *testing.T) {
	env := harness.NATS(t)
	ctx := ctxT(t)
	stream := env.Name("PUB")
	createStream(t, env.JS, jetstream.StreamConfig{Name: stream, Subjects: []string{env.Subject("pub.>")}, Duplicates: 5 * time.Minute})
	// A core subscriber that swallows publishes, then answers one too late
	// with a PubAck: the publisher must have given up by then.
	late := make(chan *nats.Msg, 1)
	swallow, err := env.Conn.Subscribe(env.Subject("swallow"), func(m *nats.Msg) {
		select {
		case late <- m:
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = swallow.Unsubscribe() }()
	if err := env.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	p := outbox.JetStream(env.JS)

	const workers, n = 3, 500
	var wg sync.WaitGroup
	results := make([][]outbox.PublishResult, workers)
	for w := range workers {
		wg.Go(func() {
			msgs := make([]outbox.Outgoing, n)
			for i := range msgs {
				msgs[i] = outbox.Outgoing{ID: fmt.Sprint("w", w, "-", i), Subject: env.Subject("pub.x"), Data: []byte(fmt.Sprint(w, "-", i)),
					Header: map[string][]string{"X-Row": {fmt.Sprint(i)}}}
			}
			results[w] = make([]outbox.PublishResult, n)
			if err := p.Publish(ctx, msgs, results[w], 10*time.Second); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for w, res := range results {
		for i, r := range res {
			if r.Err != nil || r.Duplicate || r.Stream != stream {
				t.Fatalf("worker %d message %d: %+v, want stored in %s", w, i, r, stream)
			}
		}
	}
	s, err := env.JS.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(ctx, env.Subject("pub.x"))
	if err != nil {
		t.Fatal(err)
	}
	if m.Header.Get(jetstream.MsgIDHeader) == "" || m.Header.Get("X-Row") == "" {
		t.Errorf("stored headers %v, want Nats-Msg-Id and X-Row", m.Header)
	}
	if info, err := s.Info(ctx); err != nil || info.State.Msgs != workers*n {
		t.Fatalf("stream holds %v messages (%v), want %d", info, err, workers*n)
	}

	// Republished ids, one unanswered subject, one without a stream.
	msgs := []outbox.Outgoing{
		{ID: "w0-0", Subject: env.Subject("pub.x"), Data: []byte("again")},
		{ID: "swallowed", Subject: env.Subject("swallow"), Data: []byte("x")},
		{ID: "nostream", Subject: env.Subject("nostream"), Data: []byte("x")},
		{ID: "w1-7", Subject: env.Subject("pub.x"), Data: []byte("again")},
	}
	res := make([]outbox.PublishResult, len(msgs))
	start := time.Now()
	if err := p.Publish(ctx, msgs, res, 300*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if waited := time.Since(start); waited < 300*time.Millisecond {
		t.Errorf("returned after %v with a message unanswered, want the whole timeout", waited)
	}
	for _, i := range []int{0, 3} {
		if r := res[i]; r.Err != nil || !r.Duplicate || r.Stream != stream {
			t.Errorf("republished %s: %+v, want a duplicate in %s", msgs[i].ID, r, stream)
		}
	}
	if r := res[1]; !errors.Is(r.Err, outbox.ErrPublishTimeout) || r.Rejected {
		t.Errorf("unanswered: %+v, want ErrPublishTimeout, retried", r)
	}
	if r := res[2]; !errors.Is(r.Err, outbox.ErrNoStream) || !r.Rejected {
		t.Errorf("no stream: %+v, want rejected with ErrNoStream", r)
	}

	// The swallowed publish's answer arrives now, while another call
	// waits: it must not be taken for that call's message, nor fail it.
	var sw *nats.Msg
	select {
	case sw = <-late:
	case <-ctx.Done():
		t.Fatal("the swallowed publish never arrived")
	}
	if sw.Reply == "" {
		t.Fatal("publish without a reply subject")
	}
	res = make([]outbox.PublishResult, 1)
	done := make(chan error, 1)
	go func() {
		done <- p.Publish(ctx, []outbox.Outgoing{{ID: "after", Subject: env.Subject("pub.x"), Data: []byte("x")}}, res, 10*time.Second)
	}()
	if err := env.Conn.Publish(sw.Reply, []byte(`{"stream":"`+stream+`","seq":999999,"duplicate": true}`)); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if r := res[0]; r.Err != nil || r.Duplicate || r.Stream != stream {
		t.Errorf("after a late answer: %+v, want stored, not a duplicate", r)
	}

	// A cancelled context ends a call that waits.
	cctx, cancel := context.WithCancel(ctx)
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	err = p.Publish(cctx, []outbox.Outgoing{{ID: "cancelled", Subject: env.Subject("swallow"), Data: []byte("x")}}, make([]outbox.PublishResult, 1), time.Minute)
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Publish with a cancelled context: %v, want context.Canceled", err)
	}
}
