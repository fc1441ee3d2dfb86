package bench

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmjs "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/jetstream"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Tuning of the Watermill variants, chosen by an interleaved sweep over 4,
// 16 and 64 on the project's 2-core machine (the best of each; pkg/jetstream
// was flat between 4 and 16). Both watermill-nats subscribers hand one
// message at a time to the router per subscription and block until it is
// acked, so parallelism comes from the number of subscriptions.
const (
	// wmSubscriptions is the number of router handlers (each one Consume
	// on the shared pull consumer) of the pkg/jetstream variant.
	wmSubscriptions = 16
	// wmSubscribersCount is SubscribersCount of the pkg/nats variant (push
	// queue subscriptions on one durable).
	wmSubscribersCount = 4
	// wmBatch is the pull batch of the pkg/jetstream variant.
	wmBatch = 500
)

// watermillBaseline names the one Watermill configuration idemq is compared
// with (x_watermill, and the side-by-side table): watermill-nats, that is
// Watermill's router over watermill-nats/v2 pkg/nats in JetStream mode —
// the subscriber its authors recommend for production (they call
// pkg/jetstream experimental) — with wmSubscribersCount (4) queue
// subscriptions on one durable push consumer, AckAsync, and the middleware
// stack of newWatermillSession (Deduplicator on the in-memory repository,
// PoisonQueue, Retry, Recoverer). It is fixed in advance rather than the
// faster of the Watermill variants in each cycle, which would pick whichever
// the noise favoured and bias the baseline upwards. watermill-js is still
// measured by BenchmarkRatios and BenchmarkConsume, for information.
const watermillBaseline = "watermill-nats"

// wmDedupeWindow is the Deduplicator's memory, like idemq's retention.
const wmDedupeWindow = 24 * time.Hour

// watermillJetStream is Watermill's router over watermill-nats/v2's
// pkg/jetstream subscriber (nats.go jetstream pull consumer) with the
// middleware stack equivalent to idemq's pipeline.
func watermillJetStream(name string, subscriptions int) variant {
	return variant{
		name:      name,
		watermill: true,
		dedupe:    true,
		prepare: func(tb testing.TB, r *round) session {
			tb.Helper()
			r.mustCreateConsumer(tb)
			sub, err := wmjs.NewSubscriber(wmjs.SubscriberConfig{
				Conn:   r.nc,
				Logger: watermill.NopLogger{},
				ResourceInitializer: wmjs.ExistingConsumer(func(string, string) jetstream.ConsumerConfig {
					return jetstream.ConsumerConfig{Name: r.consumer}
				}, ""),
				AckAsync:       !idemqDoubleAck,
				AckWaitTimeout: 30 * time.Second,
				ConsumeOptions: []jetstream.PullConsumeOpt{jetstream.PullMaxMessages(wmBatch)},
			})
			if err != nil {
				tb.Fatalf("watermill subscriber: %v", err)
			}
			pub, err := wmjs.NewPublisher(wmjs.PublisherConfig{Conn: r.nc, Logger: watermill.NopLogger{}})
			if err != nil {
				tb.Fatalf("watermill publisher: %v", err)
			}
			return newWatermillSession(tb, r, sub, pub, r.fx.stream, subscriptions)
		},
	}
}

// watermillNATS is Watermill's router over watermill-nats/v2's pkg/nats
// subscriber in JetStream mode (the package its authors recommend for
// production): SubscribersCount queue subscriptions on a durable push
// consumer, with the same middleware stack.
func watermillNATS(name string, subscribers int) variant {
	return variant{
		name:      name,
		watermill: true,
		dedupe:    true,
		prepare: func(tb testing.TB, r *round) session {
			tb.Helper()
			legacy, err := r.nc.JetStream()
			if err != nil {
				tb.Fatalf("jetstream context: %v", err)
			}
			cfg := r.fx.consumerConfig(r.consumer)
			_, err = legacy.AddConsumer(r.fx.stream, &nats.ConsumerConfig{
				Durable:        cfg.Durable,
				DeliverSubject: nats.NewInbox(),
				DeliverGroup:   r.consumer,
				AckPolicy:      nats.AckExplicitPolicy,
				AckWait:        cfg.AckWait,
				MaxDeliver:     cfg.MaxDeliver,
				MaxAckPending:  cfg.MaxAckPending,
				DeliverPolicy:  nats.DeliverAllPolicy,
				FilterSubject:  cfg.FilterSubject,
			})
			if err != nil {
				tb.Fatalf("create push consumer: %v", err)
			}
			sub, err := wmnats.NewSubscriberWithNatsConn(r.nc, wmnats.SubscriberSubscriptionConfig{
				SubscribersCount: subscribers,
				QueueGroupPrefix: r.consumer,
				AckWaitTimeout:   30 * time.Second,
				CloseTimeout:     30 * time.Second,
				JetStream: wmnats.JetStreamConfig{
					AckAsync:         !idemqDoubleAck,
					DurablePrefix:    r.consumer,
					SubscribeOptions: []nats.SubOpt{nats.Bind(r.fx.stream, r.consumer), nats.ManualAck()},
				},
			}, watermill.NopLogger{})
			if err != nil {
				tb.Fatalf("watermill subscriber: %v", err)
			}
			pub, err := wmnats.NewPublisherWithNatsConn(r.nc, wmnats.PublisherPublishConfig{
				Marshaler:         &wmnats.NATSMarshaler{},
				SubjectCalculator: wmnats.DefaultSubjectCalculator,
			}, watermill.NopLogger{})
			if err != nil {
				tb.Fatalf("watermill publisher: %v", err)
			}
			return newWatermillSession(tb, r, sub, pub, r.fx.subject, 1)
		},
	}
}

// watermillSession runs a Watermill router with the middleware stack that
// matches idemq's pipeline, outermost first:
//
//	Deduplicator (in-memory repository, key = Idempotency-Key; Watermill
//	  v1.5.1 ships no Redis repository) → PoisonQueue → Retry → Recoverer
//
// Retry mirrors retry.Policy{}: 5 attempts, 100ms doubling to 30s. Note
// that Watermill's Retry sleeps in-process while holding the message.
type watermillSession struct {
	r      *round
	router *message.Router
	pub    message.Publisher
	done   chan error
	cancel context.CancelFunc
}

func newWatermillSession(tb testing.TB, r *round, sub message.Subscriber, pub message.Publisher, topic string, handlers int) *watermillSession {
	tb.Helper()
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 30 * time.Second}, watermill.NopLogger{})
	if err != nil {
		tb.Fatalf("watermill router: %v", err)
	}
	repo, err := middleware.NewMapExpiringKeyRepository(wmDedupeWindow)
	if err != nil {
		tb.Fatalf("watermill dedupe repository: %v", err)
	}
	dedup := &middleware.Deduplicator{
		KeyFactory: func(m *message.Message) (string, error) {
			k := m.Metadata.Get(KeyHeader)
			if k == "" {
				return "", errors.New("bench: message without " + KeyHeader)
			}
			return k, nil
		},
		Repository: repo,
		Timeout:    5 * time.Second,
	}
	poison, err := middleware.PoisonQueue(pub, r.fx.dlqSubject)
	if err != nil {
		tb.Fatalf("watermill poison queue: %v", err)
	}
	router.AddMiddleware(
		dedup.Middleware,
		poison,
		middleware.Retry{
			MaxRetries:      4,
			InitialInterval: 100 * time.Millisecond,
			MaxInterval:     30 * time.Second,
			Multiplier:      2,
		}.Middleware,
		middleware.Recoverer,
	)
	for i := range handlers {
		router.AddConsumerHandler(fmt.Sprintf("payments-%d", i), topic, sub, func(m *message.Message) error {
			return r.tr.handle(m.Metadata.Get(KeyHeader))
		})
	}
	return &watermillSession{r: r, router: router, pub: pub}
}

func (s *watermillSession) start(ctx context.Context) error {
	ctx, s.cancel = context.WithCancel(ctx)
	s.done = make(chan error, 1)
	go func() { s.done <- s.router.Run(ctx) }()
	select {
	case <-s.router.Running():
		return nil
	case err := <-s.done:
		s.done <- err
		return fmt.Errorf("watermill router stopped at start: %w", err)
	}
}

func (s *watermillSession) stop() error {
	err := s.router.Close()
	s.cancel()
	if rerr := <-s.done; err == nil {
		err = rerr
	}
	if perr := s.pub.Close(); err == nil {
		err = perr
	}
	return err
}
