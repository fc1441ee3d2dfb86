package bench

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/redisstore"
	"github.com/idemq/idemq/integration/harness"
)

// Tuning of redisBatchFloor.
const (
	// floorBatch is the most messages one ClaimMany / CompleteMany carries.
	floorBatch = 64
	// floorLanes is the number of goroutines that each take a batch, claim,
	// handle, complete and ack it, so that one lane's Redis round trip
	// overlaps another's work.
	floorLanes = 4
)

// redisBatchFloor is not a consumer but the cheapest a batched design of
// one could be on Redis: raw nats.go Consume + Ack, with each batch of up
// to floorBatch buffered messages claimed with one redisstore.ClaimMany
// (keys and fingerprints from the same dedupe.Guard as idemq-redis's,
// Guard.Resolve) and completed with one CompleteMany before its acks — no
// pipeline, no retries, no dead letters, no observer, and no worker parked
// per store call. Its row bounds what claiming and completing each pulled
// batch together (the next step README names) could save: the distance
// from idemq-redis to it is the most that design could take off, the
// distance from raw-ack to it what Redis costs at the least.
func redisBatchFloor() variant {
	return variant{
		name:     "redis-batch-floor",
		baseline: idemqBaseline,
		prepare: func(tb testing.TB, r *round) session {
			tb.Helper()
			cons := r.mustCreateConsumer(tb)
			env := r.fx.redis(tb)
			prefix := env.Prefix + r.id + ":"
			return &floorSession{
				r:      r,
				cons:   cons,
				redis:  env,
				prefix: prefix,
				store:  redisstore.New(env.Client, redisstore.Config{Prefix: prefix}),
				guard:  &dedupe.Guard{Key: dedupe.HeaderKey(KeyHeader), Namespace: r.consumer},
			}
		},
	}
}

// floorSession runs redisBatchFloor for one round.
type floorSession struct {
	r      *round
	cons   jetstream.Consumer
	redis  *harness.RedisEnv
	prefix string
	store  *redisstore.Store
	guard  *dedupe.Guard

	cc     jetstream.ConsumeContext
	msgs   chan jetstream.Msg
	cancel context.CancelFunc
	wg     sync.WaitGroup
	errs   chan error
}

func (s *floorSession) start(ctx context.Context) error {
	ctx, s.cancel = context.WithCancel(ctx)
	s.errs = make(chan error, 1)
	s.msgs = make(chan jetstream.Msg, rawBatch)
	for range floorLanes {
		s.wg.Go(func() { s.lane(ctx) })
	}
	var err error
	s.cc, err = s.cons.Consume(func(m jetstream.Msg) {
		select {
		case s.msgs <- m:
		case <-ctx.Done():
		}
	},
		jetstream.PullMaxMessages(rawBatch), jetstream.PullExpiry(5*time.Second))
	if err != nil {
		s.cancel()
		s.wg.Wait()
		return fmt.Errorf("consume: %w", err)
	}
	return nil
}

// fail records the round's first error and ends the lanes: the round
// then times out waiting for its acks, and stop returns err.
func (s *floorSession) fail(err error) {
	select {
	case s.errs <- err:
	default:
	}
	s.cancel()
}

// lane takes what is buffered (at least one message, at most floorBatch)
// and settles it as one batch, until ctx ends.
func (s *floorSession) lane(ctx context.Context) {
	batch := make([]jetstream.Msg, 0, floorBatch)
	claims := make([]redisstore.ClaimRequest, 0, floorBatch)
	done := make([]redisstore.CompleteRequest, 0, floorBatch)
	lease, retention := s.guard.LeaseDuration(), s.guard.RetentionDuration()
	for {
		batch = batch[:0]
		select {
		case m := <-s.msgs:
			batch = append(batch, m)
		case <-ctx.Done():
			return
		}
	fill:
		for len(batch) < floorBatch {
			select {
			case m := <-s.msgs:
				batch = append(batch, m)
			default:
				break fill
			}
		}
		claims = claims[:0]
		for _, m := range batch {
			key, fp, err := s.guard.Resolve(dedupe.Input{Header: m.Headers(), Data: m.Data()})
			if err != nil {
				s.fail(fmt.Errorf("resolve: %w", err))
				return
			}
			claims = append(claims, redisstore.ClaimRequest{Key: key, Fingerprint: fp, Lease: lease, Retention: retention})
		}
		res, err := s.store.ClaimMany(ctx, claims)
		if err != nil {
			if ctx.Err() == nil {
				s.fail(fmt.Errorf("claim many: %w", err))
			}
			return
		}
		done = done[:0]
		for i, m := range batch {
			if res[i].Err != nil || res[i].Claim.Status != dedupe.Acquired {
				s.fail(fmt.Errorf("claim %s: %v %v", claims[i].Key, res[i].Claim.Status, res[i].Err))
				return
			}
			if err := s.r.tr.handle(m.Headers().Get(KeyHeader)); err != nil {
				s.fail(err)
				return
			}
			done = append(done, redisstore.CompleteRequest{Key: claims[i].Key, Token: res[i].Claim.Token, Retention: retention})
		}
		errs, err := s.store.CompleteMany(ctx, done)
		if err == nil {
			err = errors.Join(errs...)
		}
		if err != nil {
			if ctx.Err() == nil {
				s.fail(fmt.Errorf("complete many: %w", err))
			}
			return
		}
		for _, m := range batch {
			if err := m.Ack(); err != nil {
				s.fail(fmt.Errorf("ack: %w", err))
			}
		}
	}
}

func (s *floorSession) stop() error {
	if s.cc != nil {
		s.cc.Stop()
		<-s.cc.Closed()
	}
	s.cancel()
	s.wg.Wait()
	var err error
	select {
	case err = <-s.errs:
	default:
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if derr := deleteKeys(ctx, s.redis, s.prefix); err == nil {
		err = derr
	}
	return err
}
