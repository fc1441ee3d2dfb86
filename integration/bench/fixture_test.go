package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/integration/harness"
)

// KeyHeader is the header carrying each message's idempotency key.
const KeyHeader = "Idempotency-Key"

// keyPrefix starts every idempotency key; the message index follows.
const keyPrefix = "pay-"

// Timeouts of one round.
const (
	// roundTimeout bounds one consumption of the whole stream.
	roundTimeout = 5 * time.Minute
	// setupTimeout bounds stream filling, consumer creation and checks.
	setupTimeout = 2 * time.Minute
	// ackPoll is how often the end of a round polls the consumer's state
	// until the server has processed every ack.
	ackPoll = 2 * time.Millisecond
)

// fixture is one stream filled with n payment messages, shared by every
// variant: each round reads it through its own fresh durable consumer.
type fixture struct {
	env     *harness.NATSEnv
	stream  string
	subject string
	n       int
	lastSeq uint64
	// legacy is the fixture connection's nats.JetStreamContext: unlike the
	// jetstream package it reads and deletes push consumers too.
	legacy nats.JetStreamContext
	// dlqStream and dlqSubject receive dead letters (none in a healthy
	// run; the stream exists so that every variant's setup is valid).
	dlqStream  string
	dlqSubject string

	redisMu   sync.Mutex
	redisEnvs map[testing.TB]*harness.RedisEnv
	rounds    atomic.Int64

	// natsProc and redisProc are the server processes behind the NATS and
	// Redis URLs, when they run on this machine and can be inspected (nil
	// otherwise, with the reason in natsWhy and redisWhy). Guarded by
	// redisMu.
	natsProc, redisProc *harness.LocalServer
	natsWhy, redisWhy   string
}

// servers returns the server processes found so far and why a missing one
// is missing.
func (fx *fixture) servers() (nats, redis *harness.LocalServer, natsWhy, redisWhy string) {
	fx.redisMu.Lock()
	defer fx.redisMu.Unlock()
	return fx.natsProc, fx.redisProc, fx.natsWhy, fx.redisWhy
}

// serverCPU reads the CPU time of the server processes found so far.
func (fx *fixture) serverCPU() serverCPU {
	nats, redis, _, _ := fx.servers()
	return serverCPU{nats: readCPU(nats), redis: readCPU(redis)}
}

// payment is the body of every message (the payments example's shape, plus
// a reference that brings the body to about 200 bytes).
const paymentFormat = `{"payment_id":"%s","from":"acc-%d","to":"acc-%d","amount":%d,"currency":"GBP","timestamp":%d,"reference":"invoice %08d for services rendered in the bench"}`

// newFixture creates the stream and publishes n messages into it.
func newFixture(tb testing.TB, n int) *fixture {
	tb.Helper()
	env := harness.NATS(tb)
	fx := &fixture{
		env:     env,
		stream:  env.Name("BENCH"),
		subject: env.Subject("payments.requested"),
		n:       n,

		dlqStream:  env.Name("DLQ"),
		dlqSubject: env.Subject("dlq.payments"),
		redisEnvs:  map[testing.TB]*harness.RedisEnv{},
	}
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	_, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{
		Name:     fx.stream,
		Subjects: []string{env.Subject("payments.>")},
		Storage:  jetstream.FileStorage,
	})
	if err != nil {
		tb.Fatalf("create stream: %v", err)
	}
	_, err = env.JS.CreateStream(ctx, jetstream.StreamConfig{
		Name:     fx.dlqStream,
		Subjects: []string{env.Subject("dlq.>")},
		Storage:  jetstream.FileStorage,
	})
	if err != nil {
		tb.Fatalf("create dead-letter stream: %v", err)
	}
	js, err := jetstream.New(env.Conn, jetstream.WithPublishAsyncMaxPending(4096))
	if err != nil {
		tb.Fatalf("jetstream: %v", err)
	}
	for i := range n {
		key := keyPrefix + fmt.Sprintf("%08d", i)
		msg := &nats.Msg{
			Subject: fx.subject,
			Header:  nats.Header{KeyHeader: []string{key}},
			Data:    fmt.Appendf(nil, paymentFormat, key, i%100, (i+1)%100, 100+i%900, 1728468810+i, i),
		}
		if _, err := js.PublishMsgAsync(msg); err != nil {
			tb.Fatalf("publish %d: %v", i, err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-ctx.Done():
		tb.Fatalf("publish: %d acks still pending: %v", js.PublishAsyncPending(), ctx.Err())
	}
	info, err := env.JS.Stream(ctx, fx.stream)
	if err != nil {
		tb.Fatalf("stream info: %v", err)
	}
	st := info.CachedInfo().State
	if st.Msgs != uint64(n) {
		tb.Fatalf("stream holds %d messages, want %d", st.Msgs, n)
	}
	fx.lastSeq = st.LastSeq
	if fx.legacy, err = env.Conn.JetStream(); err != nil {
		tb.Fatalf("jetstream context: %v", err)
	}
	if p, err := harness.FindLocalServer(env.URL, 4222); err != nil {
		fx.natsWhy = err.Error()
	} else {
		fx.natsProc = &p
	}
	// Redis is looked up now when its URL is set, so that its CPU is read
	// in every round, the rounds without Redis too (showing its background
	// load); otherwise with the first Redis environment.
	fx.redisWhy = "no Redis environment yet"
	if u := os.Getenv(harness.EnvRedisURL); u != "" {
		if p, err := harness.FindLocalServer(u, 6379); err != nil {
			fx.redisWhy = err.Error()
		} else {
			fx.redisProc, fx.redisWhy = &p, ""
		}
	}
	return fx
}

// redis returns the Redis environment of tb (a benchmark or test), created
// on first use so that a missing Redis skips only the variants needing it.
func (fx *fixture) redis(tb testing.TB) *harness.RedisEnv {
	tb.Helper()
	fx.redisMu.Lock()
	defer fx.redisMu.Unlock()
	if env, ok := fx.redisEnvs[tb]; ok {
		return env
	}
	env := harness.Redis(tb)
	fx.redisEnvs[tb] = env
	if fx.redisProc == nil {
		if p, err := harness.FindLocalServer(env.URL, 6379); err != nil {
			fx.redisWhy = err.Error()
		} else {
			fx.redisProc, fx.redisWhy = &p, ""
		}
	}
	tb.Cleanup(func() {
		fx.redisMu.Lock()
		delete(fx.redisEnvs, tb)
		fx.redisMu.Unlock()
	})
	return env
}

// consumerConfig is the durable pull consumer every variant reads through
// (the idemq adapter is handed the same settings). MaxAckPending bounds the
// messages in flight; it is generous enough for every variant's batch and
// worker count.
func (fx *fixture) consumerConfig(name string) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       name,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       30 * time.Second,
		MaxDeliver:    10,
		MaxAckPending: 1000,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		FilterSubject: fx.subject,
	}
}

// round is one consumption of the fixture's stream by one variant.
type round struct {
	fx *fixture
	// id distinguishes rounds, for consumer names and dedupe namespaces.
	id string
	// consumer is the durable consumer name for this round.
	consumer string
	// nc is a fresh connection for this round, closed by finish.
	nc *nats.Conn
	js jetstream.JetStream
	tr *tracker
}

// newRound opens a connection and names a fresh durable consumer. The
// variant creates the consumer (or has it created) in its prepare step.
func (fx *fixture) newRound(tb testing.TB, variant string) *round {
	tb.Helper()
	id := "R" + strconv.FormatInt(fx.rounds.Add(1), 10)
	nc, err := nats.Connect(fx.env.URL, nats.Name("idemq-bench-"+variant+"-"+id), nats.NoReconnect())
	if err != nil {
		tb.Fatalf("connect: %v", err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		tb.Fatalf("jetstream: %v", err)
	}
	return &round{
		fx:       fx,
		id:       id,
		consumer: fx.env.Name(strings.ReplaceAll(variant, "-", "_") + "_" + id),
		nc:       nc,
		js:       js,
		tr:       newTracker(fx.n),
	}
}

// createConsumer creates the round's durable pull consumer.
func (r *round) createConsumer(ctx context.Context) (jetstream.Consumer, error) {
	return r.js.CreateConsumer(ctx, r.fx.stream, r.fx.consumerConfig(r.consumer))
}

// mustCreateConsumer is createConsumer within setupTimeout, failing tb on
// an error.
func (r *round) mustCreateConsumer(tb testing.TB) jetstream.Consumer {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	cons, err := r.createConsumer(ctx)
	if err != nil {
		tb.Fatalf("create consumer: %v", err)
	}
	return cons
}

// waitAcked blocks until the handler saw every message and the server has
// processed every ack: ack floor at the stream's last message, nothing
// pending, nothing redelivered. It polls over the fixture's own connection,
// since some variants drain theirs when they stop.
func (r *round) waitAcked(ctx context.Context) error {
	select {
	case <-r.tr.done:
	case <-ctx.Done():
		return fmt.Errorf("handled %d of %d messages: %w", r.tr.handled.Load(), r.fx.n, ctx.Err())
	}
	t := time.NewTicker(ackPoll)
	defer t.Stop()
	for {
		ci, err := r.fx.legacy.ConsumerInfo(r.fx.stream, r.consumer, nats.Context(ctx))
		if err != nil {
			return fmt.Errorf("consumer info: %w", err)
		}
		if ci.NumRedelivered > 0 {
			return fmt.Errorf("%d messages redelivered", ci.NumRedelivered)
		}
		if ci.AckFloor.Stream == r.fx.lastSeq && ci.NumAckPending == 0 && ci.NumPending == 0 {
			return nil
		}
		select {
		case <-t.C:
		case <-ctx.Done():
			return fmt.Errorf("acks: floor %d of %d, %d pending: %w", ci.AckFloor.Stream, r.fx.lastSeq, ci.NumAckPending, ctx.Err())
		}
	}
}

// finish checks exactly-once handling, deletes the consumer and closes the
// connection.
func (r *round) finish(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()
	if err := r.fx.legacy.DeleteConsumer(r.fx.stream, r.consumer, nats.Context(ctx)); err != nil && !errors.Is(err, nats.ErrConsumerNotFound) {
		tb.Errorf("delete consumer %s: %v", r.consumer, err)
	}
	r.nc.Close()
	if err := r.tr.verify(); err != nil {
		tb.Fatal(err)
	}
}

// tracker counts handler invocations per message, to prove that every
// message was handled exactly once.
type tracker struct {
	counts  []atomic.Int32
	handled atomic.Int64
	bad     atomic.Int64
	done    chan struct{}
	once    sync.Once
}

func newTracker(n int) *tracker {
	return &tracker{counts: make([]atomic.Int32, n), done: make(chan struct{})}
}

// handle is the handler body shared by every variant: find the message by
// its idempotency key and count it. It returns an error for a key it does
// not know.
func (t *tracker) handle(key string) error {
	i, err := strconv.Atoi(strings.TrimPrefix(key, keyPrefix))
	if err != nil || i < 0 || i >= len(t.counts) || !strings.HasPrefix(key, keyPrefix) {
		t.bad.Add(1)
		return fmt.Errorf("bench: unexpected key %q", key)
	}
	if t.counts[i].Add(1) == 1 {
		if t.handled.Add(1) == int64(len(t.counts)) {
			t.once.Do(func() { close(t.done) })
		}
	}
	return nil
}

// verify reports messages handled zero times or more than once.
func (t *tracker) verify() error {
	var missing, dup int
	first := -1
	for i := range t.counts {
		switch c := t.counts[i].Load(); {
		case c == 0:
			missing++
		case c > 1:
			dup++
		default:
			continue
		}
		if first < 0 {
			first = i
		}
	}
	if missing > 0 || dup > 0 || t.bad.Load() > 0 {
		return fmt.Errorf("exactly-once violated: %d of %d messages never handled, %d handled more than once, %d unknown keys (first bad index %d)",
			missing, len(t.counts), dup, t.bad.Load(), first)
	}
	return nil
}
