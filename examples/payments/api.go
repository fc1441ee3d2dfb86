package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/httpdedupe"
	"github.com/idemq/idemq/outbox"
)

// API defaults.
const (
	// defaultAPILease is how long an accepted request holds its key before a
	// retry may take it over (after an API crash): 5s. A running request
	// extends it every third of it.
	defaultAPILease = 5 * time.Second
	// apiRetention is how long the API remembers a key and its response.
	apiRetention = 24 * time.Hour
	// apiNamespace prefixes the API's dedupe keys, apart from the worker's.
	apiNamespace = "payments-api"
)

func apiCommand(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("payments api", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", ":8080", "HTTP listen address")
	natsURL := fs.String("nats", defaultNATSURL, "NATS server URL (JetStream enabled)")
	dbURL := fs.String("db", "", "database: postgres://… or sqlite:PATH (required)")
	lease := fs.Duration("lease", defaultAPILease, "how long a request holds its idempotency key before a retry may take over after a crash")
	logFormat := fs.String("log-format", "text", "log format on stderr: text or json")
	prefix := fs.String("prefix", "", "put PREFIX in front of every stream, subject and table name, for a shared server (default: the contract's names)")
	metricsAddr := fs.String("metrics", "", metricsFlagUsage)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `Usage: payments api -addr :8080 -nats URL -db URL [-metrics ADDR]

Serves PUT /payments. A request carries an Idempotency-Key header and a JSON
body {"payment_id","from","to","amount","currency","timestamp"} (payment_id
and timestamp may be left out). The first request with a key is answered
202 with the payment id and publishes payments.requested through the
transactional outbox; a retry gets the identical response; the key reused
with a different body (timestamp excluded) gets 409, and so does a retry
while the first request is still running (with Retry-After). A body that is
not a payment gets 400.

Flags:
`)
		fs.PrintDefaults()
	}
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := firstError(
		required("-addr", *addr), required("-nats", *natsURL), checkNATSURL(*natsURL),
		required("-db", *dbURL), checkFlag("-db", checkDBURL(*dbURL)),
		positive("-lease", *lease), checkFlag("-log-format", checkLogFormat(*logFormat)),
	); err != nil {
		return usageError(fs, "payments api", err)
	}
	nm, err := namesFor(*prefix)
	if err != nil {
		return usageError(fs, "payments api", err)
	}
	log, err := newLogger(stderr, *logFormat)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return err
	}
	tel, err := startTelemetry(*metricsAddr, log)
	if err != nil {
		return err
	}
	a, err := newAPI(ctx, *dbURL, *natsURL, nm, *lease, log, tel)
	if err != nil {
		tel.close()
		return err
	}
	defer a.close()
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	return a.serve(ctx, ln)
}

// api is the payments HTTP API and its outbox relay.
type api struct {
	*node
	h http.Handler
}

func newAPI(ctx context.Context, dbURL, natsURL string, nm names, lease time.Duration, log *slog.Logger, tel *telemetry) (*api, error) {
	n, err := openNode(ctx, "payments-api", dbURL, natsURL, nm, log, tel)
	if err != nil {
		return nil, err
	}
	a := &api{node: n}
	guard := &dedupe.Guard{
		Store:       n.store,
		Fingerprint: &dedupe.Fingerprinter{Exclude: []string{"timestamp"}},
		Namespace:   apiNamespace,
		Lease:       lease,
		Retention:   apiRetention,
	}
	mux := http.NewServeMux()
	mux.Handle("PUT /payments", httpdedupe.New(guard, httpdedupe.Config{Logger: log, Observer: tel.http()})(http.HandlerFunc(a.putPayment)))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) })
	a.h = mux
	return a, nil
}

// serve runs the HTTP server on ln and the outbox relay until ctx is done,
// then shuts both down.
func (a *api) serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{Handler: a.h, ReadHeaderTimeout: 5 * time.Second}
	rctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	relayErr := make(chan error, 1)
	wg.Go(func() { relayErr <- a.relay.Run(rctx) })
	serveErr := make(chan error, 1)
	wg.Go(func() { serveErr <- srv.Serve(ln) })
	a.log.Info("payments api listening", "event", "api_ready", "addr", ln.Addr().String())

	var err error
	select {
	case <-ctx.Done():
	case err = <-relayErr:
		err = fmt.Errorf("outbox relay: %w", err)
	case err = <-serveErr:
	}
	sctx, scancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer scancel()
	if serr := srv.Shutdown(sctx); serr != nil && err == nil {
		err = serr
	}
	cancel()
	wg.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

// acceptedBody is the 202 answer to PUT /payments.
type acceptedBody struct {
	PaymentID string `json:"payment_id"`
	Status    string `json:"status"`
}

// putPayment runs behind the idempotency middleware, once per key: it
// validates the payment and writes payments.requested into the outbox, with
// outbox id "requested.<key>" so that a second run after a crash adds
// nothing and the broker drops a republished copy.
func (a *api) putPayment(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		writeProblem(w, http.StatusBadRequest, "Unreadable body", err.Error())
		return
	}
	key := r.Header.Get(headerKey)
	p, err := decodeRequest(body)
	if err != nil {
		writeProblem(w, http.StatusBadRequest, "Not a valid payment", err.Error())
		return
	}
	if p.PaymentID == "" {
		p.PaymentID = paymentIDFor(key)
	}
	if p.Timestamp == 0 {
		p.Timestamp = time.Now().Unix()
	}
	msg := outbox.Message{
		ID:      outboxRequestedPfx + key,
		Subject: a.nm.requested(),
		Header:  map[string][]string{headerKey: {key}},
		Data:    mustJSON(p),
	}
	if err := a.db.inTx(r.Context(), func(tx *sql.Tx) error { return a.ob.AddTx(r.Context(), tx, msg) }); err != nil {
		a.log.Error("payments api: write outbox", "key", key, "err", err)
		// 503 releases the key: the client's retry runs the handler again.
		writeProblem(w, http.StatusServiceUnavailable, "Try again", "the payment could not be recorded")
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_ = json.NewEncoder(w).Encode(acceptedBody{PaymentID: p.PaymentID, Status: "accepted"})
}

// writeProblem answers with an RFC 9457 problem document.
func writeProblem(w http.ResponseWriter, status int, title, detail string) {
	w.Header().Set("Content-Type", "application/problem+json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(map[string]any{"title": title, "status": status, "detail": detail})
}
