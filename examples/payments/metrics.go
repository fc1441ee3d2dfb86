package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/dedupe/httpdedupe"
	"github.com/idemq/idemq/idemqotel"
	"github.com/idemq/idemq/outbox"
)

// metricsFlagUsage documents -metrics for the worker and the api.
const metricsFlagUsage = "serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464); off when empty"

// telemetry is what -metrics ADDR adds to a command: idemq's OpenTelemetry
// instruments (package idemqotel) on a meter provider whose Prometheus
// exporter an HTTP server serves at /metrics. A nil *telemetry (no -metrics)
// observes nothing: every method returns nil.
type telemetry struct {
	tel  *idemqotel.Telemetry
	mp   *sdkmetric.MeterProvider
	srv  *http.Server
	done chan struct{}
	regs []metric.Registration
}

// startTelemetry serves metrics on addr, or returns nil when addr is empty.
// It logs the address it listens on (event metrics_ready), which tells the
// port of ":0".
func startTelemetry(addr string, log *slog.Logger) (*telemetry, error) {
	if addr == "" {
		return nil, nil
	}
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	tel, err := idemqotel.New(idemqotel.Config{MeterProvider: mp})
	if err != nil {
		_ = mp.Shutdown(context.Background())
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		_ = mp.Shutdown(context.Background())
		return nil, fmt.Errorf("metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	t := &telemetry{tel: tel, mp: mp, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}, done: make(chan struct{})}
	go func() {
		defer close(t.done)
		if err := t.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server stopped", "err", err)
		}
	}()
	log.Info("serving metrics", "event", "metrics_ready", "addr", "http://"+ln.Addr().String()+"/metrics")
	return t, nil
}

// close stops the metrics server and the meter provider.
func (t *telemetry) close() {
	if t == nil {
		return
	}
	for _, r := range t.regs {
		_ = r.Unregister()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = t.srv.Shutdown(ctx)
	<-t.done
	_ = t.mp.Shutdown(ctx)
}

// consumer returns the worker's pipeline observer.
func (t *telemetry) consumer(group string) consumer.Observer {
	if t == nil {
		return nil
	}
	return t.tel.Consumer(idemqotel.ConsumerOptions{Group: group, ProcessDuration: true, HandlerDuration: true, StoreDurationEvery: 1})
}

// relay returns the outbox relay's observer.
func (t *telemetry) relay() outbox.RelayObserver {
	if t == nil {
		return nil
	}
	return t.tel.Relay()
}

// http returns the idempotency middleware's observer.
func (t *telemetry) http() httpdedupe.Observer {
	if t == nil {
		return nil
	}
	return t.tel.HTTP()
}

// observeOutbox registers the outbox backlog gauges.
func (t *telemetry) observeOutbox(db outbox.Querier, ob *outbox.Outbox) error {
	if t == nil {
		return nil
	}
	r, err := t.tel.ObserveOutbox(db, ob)
	if err != nil {
		return err
	}
	t.regs = append(t.regs, r)
	return nil
}
