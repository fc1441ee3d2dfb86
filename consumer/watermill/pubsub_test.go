package idemqwm_test

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill/message"

	"github.com/idemq/idemq/consumer"
	idemqwm "github.com/idemq/idemq/consumer/watermill"
	"github.com/idemq/idemq/retry"
)

// The same suite on every broker: gochannel, NATS JetStream
// (watermill-nats), RabbitMQ (watermill-amqp) and Postgres (watermill-sql).

func TestDuplicateSuppressed(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, br broker) {
		b := openBus(t, br.setup(t, 5*time.Second))
		a, err := idemqwm.New(testConfig(b, nil))
		if err != nil {
			t.Fatal(err)
		}
		c := newCounter()
		runRouter(t, b.sub, b.w.Topic, "orders", a.NoPublishHandler(func(m *message.Message) error {
			key := m.Metadata.Get("Idempotency-Key")
			c.run(key)
			c.apply(key)
			return nil
		}))
		// The publisher retries: three messages (three UUIDs), one key.
		for range 3 {
			publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`)
		}
		eventually(t, "three deliveries acked", func() bool { return a.Stats().Acked == 3 })
		runs, applied := c.get("pay-1")
		if runs != 1 || applied != 1 {
			t.Fatalf("handler ran %d times, applied %d times; want 1 and 1", runs, applied)
		}
		if s := a.Stats(); s.Duplicates != 2 || s.DeadLettered != 0 {
			t.Fatalf("stats %+v: want 2 duplicates, no dead letters", s)
		}
	})
}

func TestFailOnceThenSucceedAppliedOnce(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, br broker) {
		b := openBus(t, br.setup(t, 5*time.Second))
		a, err := idemqwm.New(testConfig(b, nil))
		if err != nil {
			t.Fatal(err)
		}
		c := newCounter()
		runRouter(t, b.sub, b.w.Topic, "orders", a.NoPublishHandler(func(m *message.Message) error {
			key := m.Metadata.Get("Idempotency-Key")
			if c.run(key) == 1 {
				return errors.New("bank timed out")
			}
			c.apply(key)
			return nil
		}))
		publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`)
		eventually(t, "applied", func() bool { _, n := c.get("pay-1"); return n == 1 })
		publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`) // a late publisher retry
		eventually(t, "the retry acked as a duplicate", func() bool { return a.Stats().Duplicates == 1 })
		runs, applied := c.get("pay-1")
		if runs != 2 || applied != 1 {
			t.Fatalf("handler ran %d times, applied %d times; want 2 runs (failed, succeeded) and 1 effect", runs, applied)
		}
		if s := a.Stats(); s.Retried < 1 || s.DeadLettered != 0 || s.AckedRetries != 0 {
			t.Fatalf("stats %+v: want a retry, no dead letter, no acked retry", s)
		}
	})
}

// A permanent failure and an exhausted one both reach the poison topic with
// the dead-letter metadata natsjs writes, the original metadata, payload
// and UUID.
func TestPermanentAndExhaustedToPoison(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, br broker) {
		b := openBus(t, br.setup(t, 5*time.Second))
		cfg := testConfig(b, nil)
		cfg.Hostname = "worker-host-1"
		a, err := idemqwm.New(cfg)
		if err != nil {
			t.Fatal(err)
		}
		c := newCounter()
		runRouter(t, b.sub, b.w.Topic, "orders-handler", a.NoPublishHandler(func(m *message.Message) error {
			key := m.Metadata.Get("Idempotency-Key")
			c.run(key)
			if key == "perm" {
				return retry.Permanent(errors.New("card\nrefused"))
			}
			return errors.New("bank down")
		}))
		start := time.Now().UTC().Truncate(time.Second)
		permID := publishKey(t, b.pub, b.w.Topic, "perm", `{"amount":1}`)
		exhID := publishKey(t, b.pub, b.w.Topic, "exh", `{"amount":2}`)
		letters := b.poison(t, 2)

		check := func(id, key, reason, attempts, errPart, body string, runs int) {
			t.Helper()
			m := byUUID(letters, id)
			if m == nil {
				t.Fatalf("no dead letter with UUID %s among %d", id, len(letters))
			}
			md := m.Metadata
			want := map[string]string{
				consumer.HeaderReason:           reason,
				consumer.HeaderOriginalSubject:  b.w.Topic,
				consumer.HeaderOriginalStream:   "",
				consumer.HeaderOriginalSequence: "",
				consumer.HeaderConsumer:         "orders-handler",
				consumer.HeaderAttempts:         attempts,
				consumer.HeaderHost:             "worker-host-1",
				"Idempotency-Key":               key,
				"X-Trace":                       "t-" + key,
			}
			for k, v := range want {
				got, ok := md[k]
				if !ok || got != v {
					t.Errorf("%s: metadata %s = %q (present %v), want %q", key, k, got, ok, v)
				}
			}
			if e := md.Get(consumer.HeaderError); !strings.Contains(e, errPart) || strings.Contains(e, "\n") {
				t.Errorf("%s: %s = %q, want it to contain %q on one line", key, consumer.HeaderError, e, errPart)
			}
			at, err := time.Parse(time.RFC3339, md.Get(consumer.HeaderFailedAt))
			if err != nil || at.Before(start) || at.After(time.Now().Add(time.Second)) || at.Location() != time.UTC {
				t.Errorf("%s: %s = %q (%v), want RFC 3339 UTC between %v and now", key, consumer.HeaderFailedAt, md.Get(consumer.HeaderFailedAt), err, start)
			}
			if string(m.Payload) != body {
				t.Errorf("%s: payload %q, want %q", key, m.Payload, body)
			}
			if r, _ := c.get(key); r != runs {
				t.Errorf("%s: handler ran %d times, want %d", key, r, runs)
			}
		}
		check(permID, "perm", "permanent", "1", "card; refused", `{"amount":1}`, 1)
		check(exhID, "exh", "exhausted", "3", "bank down", `{"amount":2}`, 3)
		eventually(t, "two dead letters counted", func() bool { return a.Stats().DeadLettered == 2 })
	})
}

func TestConflictToPoison(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, br broker) {
		b := openBus(t, br.setup(t, 5*time.Second))
		a, err := idemqwm.New(testConfig(b, nil))
		if err != nil {
			t.Fatal(err)
		}
		c := newCounter()
		runRouter(t, b.sub, b.w.Topic, "orders", a.NoPublishHandler(func(m *message.Message) error {
			c.run(string(m.Payload))
			c.apply(string(m.Payload))
			return nil
		}))
		publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`)
		eventually(t, "first applied", func() bool { _, n := c.get(`{"amount":100}`); return n == 1 })
		id := publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":999}`) // same key, another body
		letters := b.poison(t, 1)
		m := letters[0]
		if m.UUID != id || m.Metadata.Get(consumer.HeaderReason) != "conflict" || m.Metadata.Get(consumer.HeaderAttempts) != "0" {
			t.Fatalf("dead letter %s: reason %q attempts %q; want %s, conflict, 0",
				m.UUID, m.Metadata.Get(consumer.HeaderReason), m.Metadata.Get(consumer.HeaderAttempts), id)
		}
		if !strings.Contains(m.Metadata.Get(consumer.HeaderError), "different fingerprint") {
			t.Fatalf("Idemq-Error %q", m.Metadata.Get(consumer.HeaderError))
		}
		if runs, _ := c.get(`{"amount":999}`); runs != 0 {
			t.Fatalf("the conflicting message ran the handler %d times", runs)
		}
		if _, n := c.get(`{"amount":100}`); n != 1 {
			t.Fatalf("the original applied %d times", n)
		}
	})
}

// The dead letters of the NATS variant are read back as stored NATS
// headers, the way `idemq dlq` reads them: check that nothing is lost on
// the way through watermill-nats' marshaler.
func TestNATSPoisonHeadersAsStored(t *testing.T) {
	t.Parallel()
	b := openBus(t, setupNATS(t, 5*time.Second))
	cfg := testConfig(b, nil)
	cfg.Origin = func(*message.Message) (string, string) { return "IN", "42" }
	a, err := idemqwm.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runRouter(t, b.sub, b.w.Topic, "orders", a.NoPublishHandler(func(*message.Message) error {
		return consumer.Invalid(errors.New("amount is not a number"))
	}))
	id := publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":"x"}`)
	m := readNATSPoison(t, b.w, 1)[0]
	host, _ := os.Hostname()
	for k, v := range map[string]string{
		consumer.HeaderReason:           "invalid",
		consumer.HeaderOriginalStream:   "IN",
		consumer.HeaderOriginalSequence: "42",
		consumer.HeaderHost:             host,
		consumer.HeaderAttempts:         strconv.Itoa(1),
		"Nats-Msg-Id":                   id, // TrackMsgId: the DLQ stream dedupes a re-dead-letter
	} {
		if got := m.Metadata.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	if m.UUID != id {
		t.Errorf("UUID header %q, want %q", m.UUID, id)
	}
}
