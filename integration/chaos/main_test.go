package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	code := m.Run()
	removeBuild()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

// retryFor calls fn, each call bounded by 5s, every 100ms until it
// succeeds or ctx ends: requests fail while a stream elects a leader, a
// client reconnects or Postgres restarts.
func retryFor(ctx context.Context, what string, fn func(ctx context.Context) error) error {
	var last error
	for {
		attempt, cancel := context.WithTimeout(ctx, 5*time.Second)
		last = fn(attempt)
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w (last: %v)", what, ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// sleepCtx sleeps d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// streamInfo returns fresh information on stream, retried through
// elections.
func streamInfo(ctx context.Context, js jetstream.JetStream, stream string, opts ...jetstream.StreamInfoOpt) (*jetstream.StreamInfo, error) {
	var info *jetstream.StreamInfo
	err := retryFor(ctx, "stream info "+stream, func(ctx context.Context) error {
		s, err := js.Stream(ctx, stream)
		if err != nil {
			return err
		}
		info, err = s.Info(ctx, opts...)
		return err
	})
	return info, err
}

// readStream calls fn for every message of stream from sequence 1 to the
// stream's last sequence when it is called, through an ordered consumer.
// Requests that fail (a JetStream API still without a meta leader after a
// node restart answers "no responders") are retried: the consumer is made
// again from the next sequence.
func readStream(ctx context.Context, js jetstream.JetStream, stream string, fn func(jetstream.Msg)) error {
	info, err := streamInfo(ctx, js, stream)
	if err != nil {
		return err
	}
	last := info.State.LastSeq
	if info.State.Msgs == 0 {
		return nil
	}
	var cons jetstream.Consumer
	next, empty, failures := uint64(1), 0, 0
	failed := func(err error) error {
		if failures++; failures == 20 {
			return fmt.Errorf("read %s at sequence %d: %w", stream, next, err)
		}
		cons = nil
		sleepCtx(ctx, 250*time.Millisecond)
		return nil
	}
	for next <= last {
		if cons == nil {
			if err := retryFor(ctx, "read "+stream, func(ctx context.Context) (err error) {
				cons, err = js.OrderedConsumer(ctx, stream, jetstream.OrderedConsumerConfig{
					DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: next,
				})
				return err
			}); err != nil {
				return err
			}
		}
		batch, err := cons.Fetch(int(min(1000, last-next+1)), jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			if err := failed(err); err != nil {
				return err
			}
			continue
		}
		got := 0
		for m := range batch.Messages() {
			md, err := m.Metadata()
			if err != nil || md.Sequence.Stream > last || md.Sequence.Stream < next {
				continue
			}
			got++
			next = md.Sequence.Stream + 1
			fn(m)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, nats.ErrTimeout) {
			if err := failed(err); err != nil {
				return err
			}
			continue
		}
		if got == 0 {
			if empty++; empty == 5 {
				return fmt.Errorf("read %s: stuck at sequence %d of %d", stream, next, last)
			}
		}
	}
	return nil
}
