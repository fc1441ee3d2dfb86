package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe/httpdedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/integration/harness"
	"github.com/nats-io/nats.go/jetstream"
)

// apiEnv is an api on SQLite and an embedded NATS server, served by
// httptest, with its outbox relay running.
type apiEnv struct {
	a   *api
	srv *httptest.Server
	js  jetstream.JetStream
}

func newAPIEnv(t *testing.T) *apiEnv {
	t.Helper()
	ns := harness.EmbeddedNATS(t)
	ctx, cancel := context.WithCancel(context.Background())
	a, err := newAPI(ctx, "sqlite:"+filepath.Join(t.TempDir(), "api.db"), ns.URL, names{}, time.Minute, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	wg.Go(func() { _ = a.relay.Run(ctx) })
	srv := httptest.NewServer(a.h)
	t.Cleanup(func() {
		srv.Close()
		cancel()
		wg.Wait()
		a.close()
	})
	return &apiEnv{a: a, srv: srv, js: ns.JS}
}

func (e *apiEnv) put(t *testing.T, key, body string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, e.srv.URL+"/payments", bytes.NewReader([]byte(body)))
	if err != nil {
		t.Fatal(err)
	}
	if key != "" {
		req.Header.Set(headerKey, key)
	}
	resp, err := e.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, b
}

func TestAPIContract(t *testing.T) {
	e := newAPIEnv(t)
	const body = `{"payment_id":"p-456","from":"acc-1","to":"acc-2","amount":100,"currency":"GBP","timestamp":1728468810}`

	resp, first := e.put(t, "456", body)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("first PUT: %d %s, want 202", resp.StatusCode, first)
	}
	var got acceptedBody
	if err := json.Unmarshal(first, &got); err != nil || got.PaymentID != "p-456" {
		t.Fatalf("first PUT body %s: want payment_id p-456 (%v)", first, err)
	}

	// A retry, and a retry with a fresh timestamp: the identical answer.
	for _, b := range []string{body, `{"payment_id":"p-456","from":"acc-1","to":"acc-2","amount":100,"currency":"GBP","timestamp":1728469999}`} {
		resp, again := e.put(t, "456", b)
		if resp.StatusCode != http.StatusAccepted || !bytes.Equal(again, first) {
			t.Fatalf("retry: %d %s, want 202 %s", resp.StatusCode, again, first)
		}
		if resp.Header.Get(httpdedupe.ReplayedHeader) != "true" {
			t.Fatalf("retry not marked %s", httpdedupe.ReplayedHeader)
		}
	}

	// The key reused with another amount: 409 without Retry-After.
	resp, b := e.put(t, "456", `{"payment_id":"p-456","from":"acc-1","to":"acc-2","amount":101,"currency":"GBP","timestamp":1728468810}`)
	if resp.StatusCode != http.StatusConflict || resp.Header.Get("Retry-After") != "" {
		t.Fatalf("reused key: %d (Retry-After %q) %s, want 409 without Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}

	// No payment_id: the API derives one from the key, the same every time.
	resp, b = e.put(t, "789", `{"from":"acc-1","to":"acc-2","amount":5,"currency":"GBP"}`)
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("PUT without payment_id: %d %s", resp.StatusCode, b)
	}
	if err := json.Unmarshal(b, &got); err != nil || got.PaymentID != paymentIDFor("789") {
		t.Fatalf("PUT without payment_id answered %s, want payment_id %s", b, paymentIDFor("789"))
	}

	// Not a payment: 400. No key: 400.
	if resp, b := e.put(t, "bad", `{"from":"acc-1","to":"acc-1","amount":5,"currency":"GBP"}`); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("invalid body: %d %s, want 400", resp.StatusCode, b)
	}
	if resp, b := e.put(t, "", body); resp.StatusCode != http.StatusBadRequest {
		t.Fatalf("no key: %d %s, want 400", resp.StatusCode, b)
	}

	// Exactly one payments.requested per accepted key, with the outbox id.
	waitRequested(t, e.js, map[string]bool{"requested.456": true, "requested.789": true})
}

func TestAPIInFlightConflict(t *testing.T) {
	e := newAPIEnv(t)
	// Another request holds the key: claim it as the middleware would.
	store, err := sqlstore.New(context.Background(), e.a.db.DB, sqlstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Claim(context.Background(), apiNamespace+":busy", "", time.Minute, time.Hour); err != nil {
		t.Fatal(err)
	}
	resp, b := e.put(t, "busy", `{"from":"acc-1","to":"acc-2","amount":5,"currency":"GBP"}`)
	if resp.StatusCode != http.StatusConflict || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("in flight: %d (Retry-After %q) %s, want 409 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"), b)
	}
}

// waitRequested waits until PAYMENTS holds exactly the wanted
// payments.requested messages (by Nats-Msg-Id), each once.
func waitRequested(t *testing.T, js jetstream.JetStream, want map[string]bool) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		s, err := js.Stream(ctx, streamPayments)
		if err != nil {
			t.Fatal(err)
		}
		if s.CachedInfo().State.Msgs >= uint64(len(want)) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("payments.requested: %d messages, want %d", s.CachedInfo().State.Msgs, len(want))
		case <-time.After(20 * time.Millisecond):
		}
	}
	d := &demo{js: js, startSeq: map[string]uint64{streamPayments: 1}}
	seen := map[string]int{}
	if err := d.readStream(ctx, streamPayments, func(m jetstream.Msg) {
		if m.Subject() == subjRequested {
			seen[m.Headers().Get(headerNatsMsgID)]++
		}
	}); err != nil {
		t.Fatal(err)
	}
	for id := range want {
		if seen[id] != 1 {
			t.Errorf("%s published %d times, want once", id, seen[id])
		}
	}
	if len(seen) != len(want) {
		t.Errorf("published %v, want %v", seen, want)
	}
}
