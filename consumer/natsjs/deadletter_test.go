package natsjs_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/integration/harness"
)

func TestErrorText(t *testing.T) {
	long := strings.Repeat("é", 2000) // 4000 bytes
	tests := []struct{ in, want string }{
		{"plain", "plain"},
		{"a\nb\r\nc\rd", "a; b; c; d"},
		{strings.Repeat("x", consumer.MaxErrorLen), strings.Repeat("x", consumer.MaxErrorLen)},
	}
	for _, tc := range tests {
		if got := consumer.ErrorText(errors.New(tc.in)); got != tc.want {
			t.Errorf("ErrorText(%.20q) = %.20q, want %.20q", tc.in, got, tc.want)
		}
	}
	got := consumer.ErrorText(errors.New(long))
	if len(got) > consumer.MaxErrorLen || !utf8.ValidString(got) || !strings.HasSuffix(got, "...") || len(got) < consumer.MaxErrorLen-4 {
		t.Errorf("capped text: %d bytes, valid=%v, suffix %q", len(got), utf8.ValidString(got), got[len(got)-3:])
	}
}

func TestDeadLetterMsg(t *testing.T) {
	at := time.Date(2026, 5, 4, 3, 2, 1, 999, time.FixedZone("X", 3600))
	d := &natsjs.DeadLetterer{Subject: "dlq.payments", Host: "h1", Now: func() time.Time { return at }}
	m := d.Msg(natsjs.Letter{
		Subject: "payments.requested",
		Header: nats.Header{
			"Idempotency-Key":             {"k"},
			"Nats-Msg-Id":                 {"orig"},
			"Nats-Expected-Last-Sequence": {"7"},
			"Nats-Rollup":                 {"all"},
			"Idemq-Reason":                {"conflict"}, // from an earlier dead-lettering
		},
		Data:     []byte("body"),
		Stream:   "PAYMENTS",
		Sequence: 42,
		Consumer: "worker",
		Attempts: 3,
		Reason:   consumer.ReasonExhausted,
		Err:      errors.New("line1\nline2"),
	})
	want := map[string]string{
		"Idemq-Reason":            "exhausted",
		"Idemq-Error":             "line1; line2",
		"Idemq-Original-Subject":  "payments.requested",
		"Idemq-Original-Stream":   "PAYMENTS",
		"Idemq-Original-Sequence": "42",
		"Idemq-Consumer":          "worker",
		"Idemq-Attempts":          "3",
		"Idemq-Failed-At":         "2026-05-04T02:02:01Z",
		"Idemq-Host":              "h1",
		"Nats-Msg-Id":             "PAYMENTS:42",
		"Idemq-Original-Msg-Id":   "orig",
		"Idempotency-Key":         "k",
	}
	for k, v := range want {
		if got := m.Header.Values(k); len(got) != 1 || got[0] != v {
			t.Errorf("%s = %q, want [%q]", k, got, v)
		}
	}
	for _, k := range []string{"Nats-Expected-Last-Sequence", "Nats-Rollup"} {
		if _, ok := m.Header[k]; ok {
			t.Errorf("server directive %s copied onto the dead letter", k)
		}
	}
	if m.Subject != "dlq.payments" || string(m.Data) != "body" || len(m.Header) != len(want) {
		t.Errorf("msg %q %q with %d headers", m.Subject, m.Data, len(m.Header))
	}
}

func TestDeadLettererPublish(t *testing.T) {
	env := harness.EmbeddedNATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	if err := (&natsjs.DeadLetterer{JS: env.JS}).PublishLetter(ctx, natsjs.Letter{}); !errors.Is(err, natsjs.ErrNoSubject) {
		t.Fatalf("no subject: %v", err)
	}
	d := &natsjs.DeadLetterer{JS: env.JS, Subject: env.Subject("dlq.x"), Stream: env.Name("DLQ")}
	l := natsjs.Letter{Subject: "a", Stream: "S", Sequence: 1, Reason: consumer.ReasonPermanent}
	if err := d.PublishLetter(ctx, l); !errors.Is(err, jetstream.ErrNoStreamResponse) {
		t.Fatalf("missing stream: %v, want ErrNoStreamResponse", err)
	}
	s, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: env.Name("DLQ"), Subjects: []string{env.Subject("dlq.>")}})
	if err != nil {
		t.Fatal(err)
	}
	for range 2 { // the second is a duplicate by Nats-Msg-Id
		if err := d.PublishLetter(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	if info, err := s.Info(ctx); err != nil || info.State.Msgs != 1 {
		t.Fatalf("dead-letter stream holds %v messages (%v), want 1", info.State.Msgs, err)
	}
	// A stream other than the expected one refuses.
	wrong := &natsjs.DeadLetterer{JS: env.JS, Subject: env.Subject("dlq.x"), Stream: "OTHER"}
	if err := wrong.PublishLetter(ctx, l); err == nil {
		t.Fatal("publish to an unexpected stream succeeded")
	}
}

func TestConvert(t *testing.T) {
	env := harness.EmbeddedNATS(t)
	f := newFixture(t, env)
	f.publish(t, "k1", "one", nats.Header{"Nats-Msg-Id": {"m-1"}})
	ack := f.publish(t, "k2", "two", nil)
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	c, err := env.JS.CreateOrUpdateConsumer(ctx, f.stream, jetstream.ConsumerConfig{Durable: "conv", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	b, err := c.Fetch(2, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var got []*consumer.Message
	for msg := range b.Messages() {
		m, err := natsjs.Convert(msg)
		if err != nil {
			t.Fatal(err)
		}
		if m.Native != msg {
			t.Error("Native is not the jetstream.Msg")
		}
		got = append(got, m)
	}
	if len(got) != 2 {
		t.Fatalf("fetched %d", len(got))
	}
	if got[0].ID != "m-1" || got[0].Subject != f.subject || string(got[0].Data) != "one" || got[0].Attempt != 1 || got[0].Received.IsZero() {
		t.Errorf("first: %+v", got[0])
	}
	if want := f.stream + ":" + "2"; got[1].ID != want || ack.Sequence != 2 || got[1].Header["Idempotency-Key"][0] != "k2" {
		t.Errorf("second ID %q, want %q", got[1].ID, want)
	}
}
