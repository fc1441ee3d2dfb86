package idemqwm_test

import (
	"errors"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/ThreeDotsLabs/watermill/message/router/middleware"

	idemqwm "github.com/idemq/idemq/consumer/watermill"
)

// TestSideBySide runs Watermill's own dedupe stack and idemq in one router
// on one pub/sub, with the same handler: it fails once (a transient error,
// a bank timeout) and succeeds when tried again.
//
// Watermill: middleware.Retry router-wide (as its docs suggest), and
// middleware.Deduplicator on the handler, keyed by Idempotency-Key.
// Deduplicator records the key the first time it sees it, before the
// handler ran, and never forgets it on a failure; so when Retry calls the
// handler chain again after the failure, Deduplicator answers "duplicate",
// the chain returns nil and the router acks. The payment is lost: the
// handler ran once, failed, and nothing retried it. A Nack instead of an
// in-process Retry ends the same way: the redelivery is acked as a
// duplicate.
//
// idemq, in the same router under the same Retry: the first run's failure
// releases the claim, the retry claims it as attempt 2 and runs, the
// effect is applied once; the publisher's duplicate is acked from the
// record.
func TestSideBySide(t *testing.T) {
	t.Parallel()
	b := gochannelBus(t)
	a, err := idemqwm.New(testConfig(b, nil))
	if err != nil {
		t.Fatal(err)
	}
	// One Deduplicator per router: its Middleware writes defaults into the
	// struct, a data race when two routers start with the same one.
	deduplicator := func() *middleware.Deduplicator {
		repo, err := middleware.NewMapExpiringKeyRepository(time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		return &middleware.Deduplicator{
			KeyFactory: func(m *message.Message) (string, error) { return m.Metadata.Get("Idempotency-Key"), nil },
			Repository: repo,
			Timeout:    time.Second,
		}
	}
	r, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	r.AddMiddleware(middleware.Retry{MaxRetries: 3, InitialInterval: 10 * time.Millisecond}.Middleware)

	wm, idemq := newCounter(), newCounter()
	failOnce := func(c *counter) message.NoPublishHandlerFunc {
		return func(m *message.Message) error {
			key := m.Metadata.Get("Idempotency-Key")
			if c.run(key) == 1 {
				return errors.New("bank timed out")
			}
			c.apply(key)
			return nil
		}
	}
	wmTopic, idemqTopic, nackTopic := b.w.Topic+".watermill", b.w.Topic+".idemq", b.w.Topic+".nack"
	r.AddConsumerHandler("watermill", wmTopic, b.sub, failOnce(wm)).AddMiddleware(deduplicator().Middleware)
	r.AddConsumerHandler("idemq", idemqTopic, b.sub, failOnce(idemq)).AddMiddleware(a.Middleware)
	startRouter(t, r)

	// The same Deduplicator without Retry, in a router of its own: the
	// failure is Nacked, and the redelivery is acked as a duplicate.
	nack := newCounter()
	r2, err := message.NewRouter(message.RouterConfig{}, watermill.NopLogger{})
	if err != nil {
		t.Fatal(err)
	}
	r2.AddConsumerHandler("watermill-nack", nackTopic, b.sub, failOnce(nack)).AddMiddleware(deduplicator().Middleware)
	startRouter(t, r2)

	for _, topic := range []string{wmTopic, idemqTopic, nackTopic} {
		publishKey(t, b.pub, topic, "pay-1", `{"amount":100}`) // returns once acked
		publishKey(t, b.pub, topic, "pay-1", `{"amount":100}`) // the publisher's retry
	}

	runs, applied := wm.get("pay-1")
	t.Logf("watermill Deduplicator+Retry: handler ran %d time(s), payment applied %d time(s)", runs, applied)
	if runs != 1 || applied != 0 {
		t.Errorf("Watermill's stack: ran %d, applied %d; the documented loss is 1 run (failed) and 0 effects", runs, applied)
	}
	runs, applied = nack.get("pay-1")
	t.Logf("watermill Deduplicator, redelivery by Nack: handler ran %d time(s), payment applied %d time(s)", runs, applied)
	if runs != 1 || applied != 0 {
		t.Errorf("Watermill's Deduplicator with a Nack: ran %d, applied %d; the documented loss is 1 run and 0 effects", runs, applied)
	}
	runs, applied = idemq.get("pay-1")
	t.Logf("idemq: handler ran %d time(s), payment applied %d time(s)", runs, applied)
	if runs != 2 || applied != 1 {
		t.Errorf("idemq: ran %d, applied %d; want 2 runs (failed, succeeded) and 1 effect", runs, applied)
	}
	if s := a.Stats(); s.Duplicates != 1 || s.AckedRetries != 0 {
		t.Errorf("idemq stats %+v: want the publisher's retry acked as a duplicate, no acked retry", s)
	}
}
