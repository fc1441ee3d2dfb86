package idemqotel_test

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/idemq/idemq/idemqotel"
)

// dashboardPath is the Grafana dashboard shipped with the repository.
const dashboardPath = "../docs/grafana/idemq.json"

// dashboardMetrics returns the metric names the dashboard's PromQL queries
// (panels and template variables): label names inside {…} selectors and
// by/without lists are left out.
func dashboardMetrics(t *testing.T) []string {
	t.Helper()
	raw, err := os.ReadFile(dashboardPath)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Targets []struct {
				Expr string `json:"expr"`
			} `json:"targets"`
		} `json:"panels"`
		Templating struct {
			List []struct {
				Query any `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(raw, &d); err != nil {
		t.Fatalf("%s: %v", dashboardPath, err)
	}
	var exprs []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			exprs = append(exprs, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if q, ok := v.Query.(string); ok && strings.Contains(q, "(") {
			exprs = append(exprs, q)
		}
	}
	selector := regexp.MustCompile(`\{[^}]*\}`)
	grouping := regexp.MustCompile(`\b(by|without)\s*\([^)]*\)`)
	labelArg := regexp.MustCompile(`,\s*[a-z_]+\)`) // label_values(metric, label)
	ident := regexp.MustCompile(`\b(idemq|messaging)_[a-z0-9_]+`)
	seen := map[string]bool{}
	for _, e := range exprs {
		e = selector.ReplaceAllString(e, "")
		e = grouping.ReplaceAllString(e, "")
		e = labelArg.ReplaceAllString(e, ")")
		for _, m := range ident.FindAllString(e, -1) {
			seen[m] = true
		}
	}
	var names []string
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// TestDashboardQueriesOnlyEmittedMetrics runs the small payments system
// (API, relay, worker on real NATS and Postgres) through a scenario that
// includes a pause, scrapes the Prometheus exporter, and checks that every
// metric the Grafana dashboard queries is there.
func TestDashboardQueriesOnlyEmittedMetrics(t *testing.T) {
	names := dashboardMetrics(t)
	if len(names) < 15 {
		t.Fatalf("found only %d metric names in the dashboard: %v", len(names), names)
	}

	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		t.Fatal(err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	t.Cleanup(func() {
		_ = mp.Shutdown(context.Background())
		_ = tp.Shutdown(context.Background())
	})
	otel, err := idemqotel.New(idemqotel.Config{MeterProvider: mp, TracerProvider: tp})
	if err != nil {
		t.Fatal(err)
	}
	tel := &telemetry{Telemetry: otel, spans: spans, tp: tp}
	s := newSystemDLQ(t, tel, false)
	reg2, err := tel.ObserveOutbox(s.db, s.ob)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg2.Unregister() })
	run(t, s.relay.Run)
	run(t, s.worker.Run)

	ctx := context.Background()
	for _, req := range []struct{ key, body string }{{"p1", `{"amount":1}`}, {"p1", `{"amount":1}`}, {"p1", `{"amount":2}`}, {"p2", `{"declined":true}`}} {
		s.put(t, ctx, req.key, req.body)
	}
	// p2 is declined: its dead letter cannot be stored (no DLQ stream), so
	// the worker pauses; creating the stream resumes it.
	pauses := func() string { return scrape(t, reg) }
	eventually(t, "the worker paused", func() bool { return strings.Contains(pauses(), "idemq_consumer_pauses_total{") })
	cctx, cancel := context.WithTimeout(ctx, waitFor)
	defer cancel()
	if _, err := s.env.JS.CreateStream(cctx, jetstream.StreamConfig{Name: s.dlq, Subjects: []string{s.env.Subject("dlq.>")}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the dead letter stored", func() bool { return streamCount(s.env.JS, s.dlq) == 1 })
	eventually(t, "payments.completed published", func() bool { return streamCount(s.env.JS, s.stream) >= 3 })
	time.Sleep(100 * time.Millisecond) // let the relay's round commit

	text := scrape(t, reg)
	samples := map[string]bool{}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, _, _ := strings.Cut(line, "{")
		name, _, _ = strings.Cut(name, " ")
		samples[name] = true
	}
	var missing []string
	for _, n := range names {
		if !samples[n] {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		var have []string
		for n := range samples {
			if strings.HasPrefix(n, "idemq_") || strings.HasPrefix(n, "messaging_") {
				have = append(have, n)
			}
		}
		sort.Strings(have)
		t.Fatalf("the dashboard queries metrics that were not emitted: %v\nemitted: %v", missing, have)
	}
	if !strings.Contains(text, `idemq_consumer_paused{`) || !strings.Contains(text, `idemq_dependency="dead_letter"`) {
		t.Errorf("no pause of the dead-letter stream in:\n%s", text)
	}
	t.Logf("the dashboard's %d metrics are all emitted: %v", len(names), names)
}

// scrape returns the Prometheus text of reg.
func scrape(t *testing.T, reg *prometheus.Registry) string {
	t.Helper()
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
