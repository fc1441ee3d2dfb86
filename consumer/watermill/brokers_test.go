package idemqwm_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wmamqp "github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"
	wmnats "github.com/ThreeDotsLabs/watermill-nats/v2/pkg/nats"
	wmsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/pubsub/gochannel"
	_ "github.com/jackc/pgx/v5/stdlib"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp091 "github.com/rabbitmq/amqp091-go"

	"github.com/idemq/idemq/integration/harness"
)

// EnvAMQPURL names the variable holding the RabbitMQ URL, for example
// amqp://guest:guest@127.0.0.1:5672/. It follows the harness' rule: unset or
// unreachable skips the AMQP tests, and fails them under CI=true.
const EnvAMQPURL = "IDEMQ_AMQP_URL"

// wiring says how to build one broker's publisher and subscriber. It is
// plain data, so that a worker subprocess builds the same thing.
type wiring struct {
	Kind    string // "gochannel", "nats", "amqp", "sql"
	URL     string // NATS, AMQP or Postgres URL
	Stream  string // NATS: the input stream
	Durable string // NATS: the durable push consumer; SQL: the consumer group
	Topic   string // the input topic
	Poison  string // the poison topic
	AckWait time.Duration
}

// bus is an opened wiring: a publisher for both topics, a subscriber for
// the input topic, and a reader of the poison topic.
type bus struct {
	w      wiring
	pub    message.Publisher
	sub    message.Subscriber
	closes []func() error
	// readPoison subscribes to the poison topic (gochannel, AMQP, SQL).
	readPoison func(ctx context.Context) (<-chan *message.Message, error)
}

func (b *bus) close() {
	for i := len(b.closes) - 1; i >= 0; i-- {
		_ = b.closes[i]()
	}
}

// open builds w's publisher and subscriber. For gochannel, in-process, one
// GoChannel is publisher and subscriber.
func open(w wiring) (*bus, error) {
	b := &bus{w: w}
	log := watermill.NopLogger{}
	switch w.Kind {
	case "gochannel":
		gc := gochannel.NewGoChannel(gochannel.Config{Persistent: true}, log)
		b.pub, b.sub = gc, gc
		b.closes = append(b.closes, gc.Close)
		b.readPoison = func(ctx context.Context) (<-chan *message.Message, error) { return gc.Subscribe(ctx, w.Poison) }
	case "nats":
		pub, err := wmnats.NewPublisher(wmnats.PublisherConfig{
			URL:       w.URL,
			Marshaler: &wmnats.NATSMarshaler{},
			JetStream: wmnats.JetStreamConfig{TrackMsgId: true},
		}, log)
		if err != nil {
			return nil, err
		}
		b.pub = pub
		b.closes = append(b.closes, pub.Close)
		sub, err := wmnats.NewSubscriber(wmnats.SubscriberConfig{
			URL:              w.URL,
			QueueGroupPrefix: w.Durable,
			SubscribersCount: 2,
			AckWaitTimeout:   30 * time.Second,
			CloseTimeout:     5 * time.Second,
			Unmarshaler:      &wmnats.NATSMarshaler{},
			JetStream: wmnats.JetStreamConfig{
				DurablePrefix:    w.Durable,
				SubscribeOptions: []nats.SubOpt{nats.Bind(w.Stream, w.Durable), nats.ManualAck()},
			},
		}, log)
		if err != nil {
			b.close()
			return nil, err
		}
		b.sub = sub
		b.closes = append(b.closes, sub.Close)
	case "amqp":
		cfg := amqpConfig(w.URL)
		pub, err := wmamqp.NewPublisher(cfg, log)
		if err != nil {
			return nil, err
		}
		b.pub = pub
		b.closes = append(b.closes, pub.Close)
		sub, err := wmamqp.NewSubscriber(cfg, log)
		if err != nil {
			b.close()
			return nil, err
		}
		b.sub = sub
		b.closes = append(b.closes, sub.Close)
		// The AMQP publisher declares no queue, and RabbitMQ confirms and
		// drops a message no queue is bound for: declare both queues
		// first, the poison queue above all.
		for _, topic := range []string{w.Topic, w.Poison} {
			if err := sub.SubscribeInitialize(topic); err != nil {
				b.close()
				return nil, err
			}
		}
		b.readPoison = func(ctx context.Context) (<-chan *message.Message, error) {
			rs, err := wmamqp.NewSubscriber(cfg, log)
			if err != nil {
				return nil, err
			}
			b.closes = append(b.closes, rs.Close)
			return rs.Subscribe(ctx, w.Poison)
		}
	case "sql":
		db, err := sql.Open("pgx", w.URL)
		if err != nil {
			return nil, err
		}
		b.closes = append(b.closes, db.Close)
		pub, err := wmsql.NewPublisher(wmsql.BeginnerFromStdSQL(db), wmsql.PublisherConfig{
			SchemaAdapter:        sqlSchema,
			AutoInitializeSchema: true,
		}, log)
		if err != nil {
			b.close()
			return nil, err
		}
		b.pub = pub
		b.closes = append(b.closes, pub.Close)
		newSub := func() (*wmsql.Subscriber, error) {
			ackDeadline := 30 * time.Second
			return wmsql.NewSubscriber(wmsql.BeginnerFromStdSQL(db), wmsql.SubscriberConfig{
				SchemaAdapter:    sqlSchema,
				OffsetsAdapter:   wmsql.PostgreSQLQueueOffsetsAdapter{},
				InitializeSchema: true,
				PollInterval:     20 * time.Millisecond,
				ResendInterval:   10 * time.Millisecond,
				AckDeadline:      &ackDeadline,
			}, log)
		}
		sub, err := newSub()
		if err != nil {
			b.close()
			return nil, err
		}
		b.sub = sub
		b.closes = append(b.closes, sub.Close)
		// Create both tables first: the queue schema has no lock around
		// CREATE TABLE IF NOT EXISTS, so the first dead letter racing the
		// poison reader's initialisation could fail (and be retried).
		for _, topic := range []string{w.Topic, w.Poison} {
			if err := sub.SubscribeInitialize(topic); err != nil {
				b.close()
				return nil, err
			}
		}
		b.readPoison = func(ctx context.Context) (<-chan *message.Message, error) {
			rs, err := newSub()
			if err != nil {
				return nil, err
			}
			b.closes = append(b.closes, rs.Close)
			return rs.Subscribe(ctx, w.Poison)
		}
	default:
		return nil, fmt.Errorf("unknown broker %q", w.Kind)
	}
	return b, nil
}

// sqlSchema is watermill-sql's Postgres queue schema (rows locked with
// SELECT … FOR UPDATE, marked acked), not DefaultPostgreSQLSchema: the
// default schema shows a row only once every transaction older than it has
// ended anywhere on the server (pg_snapshot_xmin), so one session idle in a
// transaction — another test on the shared server — stalls delivery.
var sqlSchema = wmsql.PostgreSQLQueueSchema{SubscribeBatchSize: 1}

// amqpConfig is a durable queue per topic (queue name = topic), with
// publisher confirms.
func amqpConfig(u string) wmamqp.Config {
	cfg := wmamqp.NewDurableQueueConfig(u)
	cfg.Publish.ConfirmDelivery = true
	return cfg
}

// broker sets up one test's wiring on a real service, skipping (or failing
// under CI) when the service is not there; cleanup removes what it made.
type broker struct {
	name  string
	setup func(t *testing.T, ackWait time.Duration) wiring
}

func brokers() []broker {
	return []broker{
		{"gochannel", func(t *testing.T, _ time.Duration) wiring {
			id := randomID(t)
			return wiring{Kind: "gochannel", Topic: "in." + id, Poison: "poison." + id}
		}},
		{"nats", setupNATS},
		{"amqp", setupAMQP},
		{"sql", setupSQL},
	}
}

// eachBroker runs fn as a parallel subtest per broker.
func eachBroker(t *testing.T, fn func(t *testing.T, br broker)) {
	t.Helper()
	for _, br := range brokers() {
		t.Run(br.name, func(t *testing.T) {
			t.Parallel()
			fn(t, br)
		})
	}
}

func randomID(t testing.TB) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// setupNATS creates an input stream, a durable push consumer with a
// deliver group for watermill-nats' queue subscriptions, and a dead-letter
// stream capturing the poison topic, all named with the harness prefix.
func setupNATS(t *testing.T, ackWait time.Duration) wiring {
	t.Helper()
	env := harness.NATS(t)
	w := wiring{
		Kind:    "nats",
		URL:     env.URL,
		Stream:  env.Name("IN"),
		Durable: "worker",
		Topic:   env.Subject("in.orders"),
		Poison:  env.Subject("dlq.orders"),
		AckWait: ackWait,
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: w.Stream, Subjects: []string{env.Subject("in.>")}}); err != nil {
		t.Fatalf("create stream: %v", err)
	}
	if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: env.Name("DLQ"), Subjects: []string{env.Subject("dlq.>")}}); err != nil {
		t.Fatalf("create dead-letter stream: %v", err)
	}
	legacy, err := env.Conn.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := legacy.AddConsumer(w.Stream, &nats.ConsumerConfig{
		Durable:        w.Durable,
		DeliverSubject: nats.NewInbox(),
		DeliverGroup:   w.Durable,
		AckPolicy:      nats.AckExplicitPolicy,
		AckWait:        ackWait,
		MaxDeliver:     -1,
		DeliverPolicy:  nats.DeliverAllPolicy,
	}); err != nil {
		t.Fatalf("create push consumer: %v", err)
	}
	natsEnvs.Store(w.Poison, env)
	return w
}

// natsEnvs maps a NATS poison topic to its harness environment, for
// readNATSPoison.
var natsEnvs sync.Map

// amqpURL returns the RabbitMQ URL in IDEMQ_AMQP_URL once it answers an
// AMQP handshake, or ends the test through harness.Unavailable.
func amqpURL(t *testing.T) string {
	t.Helper()
	u := os.Getenv(EnvAMQPURL)
	if u == "" {
		harness.Unavailable(t, "amqp: %s is not set", EnvAMQPURL)
		return ""
	}
	conn, err := amqp091.DialConfig(u, amqp091.Config{Dial: amqp091.DefaultDial(harness.DialTimeout)})
	if err != nil {
		harness.Unavailable(t, "amqp unreachable at %s (%s): %v", redact(u), EnvAMQPURL, err)
		return ""
	}
	_ = conn.Close()
	return u
}

func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "<unparsable URL>"
	}
	return u.Redacted()
}

// setupAMQP names the queues with a fresh prefix and deletes them in
// cleanup.
func setupAMQP(t *testing.T, _ time.Duration) wiring {
	t.Helper()
	u := amqpURL(t)
	id := "idemq-test-" + randomID(t)
	w := wiring{Kind: "amqp", URL: u, Topic: id + ".in", Poison: id + ".poison"}
	t.Cleanup(func() {
		conn, err := amqp091.DialConfig(u, amqp091.Config{Dial: amqp091.DefaultDial(harness.DialTimeout)})
		if err != nil {
			t.Errorf("amqp cleanup: %v", err)
			return
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			t.Errorf("amqp cleanup: %v", err)
			return
		}
		defer ch.Close()
		for _, q := range []string{w.Topic, w.Poison} {
			if _, err := ch.QueueDelete(q, false, false, false); err != nil && !isNotFound(err) {
				t.Errorf("amqp cleanup: delete queue %s: %v", q, err)
			}
		}
	})
	return w
}

func isNotFound(err error) bool {
	var ae *amqp091.Error
	return errors.As(err, &ae) && ae.Code == amqp091.NotFound
}

// setupSQL uses a fresh Postgres schema (harness.Postgres): watermill-sql's
// tables watermill_<topic> land in it and are dropped with it.
func setupSQL(t *testing.T, _ time.Duration) wiring {
	t.Helper()
	pg := harness.Postgres(t)
	return wiring{Kind: "sql", URL: pg.URL, Topic: "in_orders", Poison: "poison_orders"}
}

// openBus opens w for a test and closes it in cleanup.
func openBus(t *testing.T, w wiring) *bus {
	t.Helper()
	b, err := open(w)
	if err != nil {
		t.Fatalf("open %s: %v", w.Kind, err)
	}
	t.Cleanup(b.close)
	return b
}

// poison collects n messages from the poison topic.
func (b *bus) poison(t *testing.T, n int) []*message.Message {
	t.Helper()
	if b.w.Kind == "nats" {
		return readNATSPoison(t, b.w, n)
	}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	ch, err := b.readPoison(ctx)
	if err != nil {
		t.Fatalf("subscribe to the poison topic: %v", err)
	}
	var out []*message.Message
	for len(out) < n {
		select {
		case m, ok := <-ch:
			if !ok {
				t.Fatalf("poison subscription closed after %d of %d messages", len(out), n)
			}
			out = append(out, m)
			m.Ack()
		case <-ctx.Done():
			t.Fatalf("got %d of %d poison messages within %v", len(out), n, waitFor)
		}
	}
	return out
}

// readNATSPoison reads the dead-letter stream with plain JetStream, the way
// `idemq dlq` does, and turns each stored message into a Watermill message
// whose metadata are the NATS headers as stored (first values).
func readNATSPoison(t *testing.T, w wiring, n int) []*message.Message {
	t.Helper()
	v, ok := natsEnvs.Load(w.Poison)
	if !ok {
		t.Fatalf("no NATS environment for %s", w.Poison)
	}
	env := v.(*harness.NATSEnv)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	stream := env.Name("DLQ")
	var out []*message.Message
	for seq := uint64(1); len(out) < n; {
		raw, err := env.JS.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		sm, err := raw.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			select {
			case <-ctx.Done():
				t.Fatalf("got %d of %d dead letters in %s within %v", len(out), n, stream, waitFor)
			case <-time.After(20 * time.Millisecond):
			}
			continue
		}
		if err != nil {
			t.Fatalf("read %s:%d: %v", stream, seq, err)
		}
		m := message.NewMessage(sm.Header.Get(wmnats.WatermillUUIDHdr), sm.Data)
		for k, vs := range sm.Header {
			if len(vs) > 0 && k != wmnats.WatermillUUIDHdr {
				m.Metadata.Set(k, vs[0])
			}
		}
		out = append(out, m)
		seq++
	}
	return out
}

// byUUID finds the message with the given UUID.
func byUUID(msgs []*message.Message, id string) *message.Message {
	for _, m := range msgs {
		if m.UUID == id {
			return m
		}
	}
	return nil
}

// publishKey publishes body to w's input topic with Idempotency-Key key and
// returns the message's UUID.
func publishKey(t *testing.T, pub message.Publisher, topic, key, body string) string {
	t.Helper()
	m := message.NewMessage(watermill.NewUUID(), []byte(body))
	m.Metadata.Set("Idempotency-Key", key)
	m.Metadata.Set("X-Trace", "t-"+key)
	if err := pub.Publish(topic, m); err != nil {
		t.Fatalf("publish %s: %v", key, err)
	}
	return m.UUID
}
