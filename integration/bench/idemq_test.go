package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strconv"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/dedupe/redisstore"
	"github.com/idemq/idemq/integration/harness"
)

// idemqDoubleAck reports whether the idemq adapter, as benchmarked, waits
// for the server to confirm each ack. natsjs.Config.DoubleAck defaults to
// false, and the benchmark keeps the default, so the like-for-like baseline
// is raw-ack and the Watermill variants use AckAsync.
const idemqDoubleAck = false

// idemqBaseline is the raw variant the idemq variants are compared with.
const idemqBaseline = "raw-ack"

// storeKind selects the dedupe store of an idemq variant.
type storeKind int

const (
	noStore storeKind = iota
	memStore
	redisStore
	// unbatchedRedisStore is redisstore with Options.MaxBatch 1: one round
	// trip per operation, to show what redisstore's batching (on by
	// default, used by redisStore) is worth.
	unbatchedRedisStore
)

// idemqConcurrency is natsjs.Config.Concurrency in the idemq variants, the
// adapter's default (natsjs.DefaultConcurrency); FetchBatch is left to its
// default (natsjs.DefaultFetchBatchFactor × Concurrency, at most natsjs.MaxDefaultFetchBatch). EnvConcurrency
// overrides it.
const idemqConcurrency = 64

// EnvConcurrency names the variable that overrides idemqConcurrency.
const EnvConcurrency = "IDEMQ_BENCH_CONCURRENCY"

// idemqVariant is consumer/natsjs with its defaults except the names and
// Concurrency (idemqConcurrency), and a dedupe.Guard keyed by the
// Idempotency-Key header on the given store, with the Guard's default
// fingerprint: the payload in canonical JSON form, hashed and stored for
// conflict detection. That is work Watermill's Deduplicator (key only) does
// not do; with NoFingerprint the idemq-mem client used about 4-5 µs less
// CPU per message (about a fifth) on the 2-core machine.
func idemqVariant(name string, kind storeKind) variant {
	return idemqVariantConc(name, kind, 0)
}

// idemqVariantConc is idemqVariant with natsjs.Config.Concurrency set to
// conc (FetchBatch its default multiple); 0 means idemqConcurrency (or
// EnvConcurrency).
func idemqVariantConc(name string, kind storeKind, conc int) variant {
	return variant{
		name:     name,
		baseline: idemqBaseline,
		dedupe:   kind != noStore,
		prepare: func(tb testing.TB, r *round) session {
			tb.Helper()
			s := &idemqSession{r: r}
			conc := conc
			if conc == 0 {
				conc = envInt(tb, EnvConcurrency, idemqConcurrency)
			}
			var guard *dedupe.Guard
			switch kind {
			case memStore:
				guard = &dedupe.Guard{Store: memstore.New(memstore.Config{})}
			case redisStore, unbatchedRedisStore:
				env := r.fx.redis(tb)
				s.redis = env
				s.redisPrefix = env.Prefix + r.id + ":"
				opts := redisstore.Config{Prefix: s.redisPrefix}
				if kind == unbatchedRedisStore {
					opts.MaxBatch = 1
				}
				guard = &dedupe.Guard{Store: redisstore.New(env.Client, opts)}
			}
			if guard != nil {
				guard.Key = dedupe.HeaderKey(KeyHeader)
				guard.Namespace = r.consumer
			}
			c, err := natsjs.New(r.js, natsjs.Config{
				Stream:         r.fx.stream,
				Durable:        r.consumer,
				FilterSubjects: []string{r.fx.subject},
				DoubleAck:      idemqDoubleAck,
				Concurrency:    conc, // FetchBatch: the default
				DeadLetter: natsjs.DeadLetterConfig{
					Subject: r.fx.dlqSubject,
					Stream:  r.fx.dlqStream,
				},
				Pipeline: consumer.Config{
					Guard:  guard,
					Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
				},
			}, func(_ context.Context, m *consumer.Message) error {
				var key string
				if v := m.Header[KeyHeader]; len(v) > 0 {
					key = v[0]
				}
				return r.tr.handle(key)
			})
			if err != nil {
				tb.Fatalf("natsjs.New: %v", err)
			}
			s.c = c
			// Create the durable exactly as Run will, so that Run's
			// CreateOrUpdateConsumer is a no-op update and consumer
			// creation stays outside the timed region, as for every
			// other variant.
			rc := c.Config()
			ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
			defer cancel()
			if _, err := r.js.CreateConsumer(ctx, r.fx.stream, jetstream.ConsumerConfig{
				Durable:       rc.Durable,
				AckPolicy:     jetstream.AckExplicitPolicy,
				AckWait:       rc.AckWait,
				MaxDeliver:    rc.MaxDeliver,
				DeliverPolicy: jetstream.DeliverAllPolicy,
				FilterSubject: r.fx.subject,
			}); err != nil {
				tb.Fatalf("create consumer: %v", err)
			}
			return s
		},
	}
}

// idemqSession runs a natsjs.Consumer for one round.
type idemqSession struct {
	r           *round
	c           *natsjs.Consumer
	redis       *harness.RedisEnv
	redisPrefix string
	cancel      context.CancelFunc
	done        chan error
}

func (s *idemqSession) start(ctx context.Context) error {
	ctx, s.cancel = context.WithCancel(ctx)
	s.done = make(chan error, 1)
	go func() { s.done <- s.c.Run(ctx) }()
	return nil
}

func (s *idemqSession) stop() error {
	s.cancel()
	err := <-s.done
	if s.redis != nil {
		ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
		defer cancel()
		if derr := deleteKeys(ctx, s.redis, s.redisPrefix); err == nil {
			err = derr
		}
	}
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// deleteKeys removes a round's dedupe records, so Redis holds one round's
// keys at a time.
func deleteKeys(ctx context.Context, env *harness.RedisEnv, prefix string) error {
	iter := env.Client.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	batch := make([]string, 0, 1000)
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == cap(batch) {
			if err := env.Client.Unlink(ctx, batch...).Err(); err != nil {
				return fmt.Errorf("unlink: %w", err)
			}
			batch = batch[:0]
		}
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("scan: %w", err)
	}
	if len(batch) > 0 {
		if err := env.Client.Unlink(ctx, batch...).Err(); err != nil {
			return fmt.Errorf("unlink: %w", err)
		}
	}
	return nil
}

// envInt reads a positive integer from the environment, def when unset.
func envInt(tb testing.TB, name string, def int) int {
	tb.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < 1 {
		tb.Fatalf("%s=%q: want a positive integer", name, s)
	}
	return v
}
