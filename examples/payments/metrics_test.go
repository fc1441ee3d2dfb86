package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	_ "modernc.org/sqlite"

	"github.com/idemq/idemq/integration/harness"
)

// syncBuffer is a log destination safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// event returns the attribute attr of the first JSON log line with event.
func (s *syncBuffer) event(event, attr string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	sc := bufio.NewScanner(bytes.NewReader(s.b.Bytes()))
	for sc.Scan() {
		var line map[string]any
		if json.Unmarshal(sc.Bytes(), &line) == nil && line["event"] == event {
			v, _ := line[attr].(string)
			return v
		}
	}
	return ""
}

// command runs a payments command in process until the test ends.
func command(t *testing.T, fn func(ctx context.Context, args []string, stderr io.Writer) error, args ...string) *syncBuffer {
	t.Helper()
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- fn(ctx, append(args, "-log-format", "json"), logs) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("%v: %v", args, err)
		}
	})
	return logs
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", url, resp.StatusCode, b)
	}
	return string(b)
}

// TestMetricsFlag runs "payments api -metrics" and "payments worker
// -metrics" in process, sends a payment, its retry, a conflicting reuse and
// a duplicate straight to JetStream, and reads both /metrics pages.
func TestMetricsFlag(t *testing.T) {
	ns := harness.EmbeddedNATS(t)
	dir := t.TempDir()
	dbURL := "sqlite:" + filepath.Join(dir, "payments.db")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	wlogs := command(t, workerCommand, "-nats", ns.URL, "-db", dbURL, "-metrics", "127.0.0.1:0", "-ack-wait", "2s")
	waitFor(t, ctx, "the worker ready", func() bool { return wlogs.event("worker_ready", "msg") != "" })
	// The demo's own way of opening the file (busy timeout, WAL): the
	// worker's relay may hold the write lock when the accounts go in.
	db, err := openDB(ctx, dbURL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `INSERT INTO accounts (id, balance) VALUES ('acc-1', 1000), ('acc-2', 0)`); err != nil {
		t.Fatal(err)
	}
	alogs := command(t, apiCommand, "-addr", "127.0.0.1:0", "-nats", ns.URL, "-db", dbURL, "-metrics", "127.0.0.1:0")
	waitFor(t, ctx, "the api ready", func() bool { return alogs.event("api_ready", "addr") != "" })
	api := "http://" + alogs.event("api_ready", "addr")

	body := `{"payment_id":"p1","from":"acc-1","to":"acc-2","amount":100,"currency":"GBP","timestamp":1}`
	for _, c := range []struct {
		body string
		want int
	}{{body, http.StatusAccepted}, {body, http.StatusAccepted}, {strings.Replace(body, "100", "200", 1), http.StatusConflict}} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPut, api+"/payments", strings.NewReader(c.body))
		req.Header.Set(headerKey, "k1")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Fatalf("PUT: %d, want %d", resp.StatusCode, c.want)
		}
	}
	msg := nats.NewMsg(subjRequested)
	msg.Header.Set(headerKey, "k1")
	msg.Data = []byte(strings.Replace(body, `"timestamp":1`, `"timestamp":2`, 1))
	waitFor(t, ctx, "the payment applied", func() bool {
		var n int
		return db.QueryRowContext(ctx, `SELECT COUNT(*) FROM transfers`).Scan(&n) == nil && n == 1
	})
	if _, err := ns.JS.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}

	worker := wlogs.event("metrics_ready", "addr")
	waitFor(t, ctx, "the duplicate counted", func() bool {
		return strings.Contains(get(t, worker), `idemq_dedupe_claims_total{idemq_component="consumer",idemq_dedupe_outcome="duplicate",messaging_consumer_group_name="payments-worker",messaging_system="nats",otel_scope_name="github.com/idemq/idemq/idemqotel",otel_scope_schema_url="",otel_scope_version=""} 1`)
	})
	w := get(t, worker)
	for _, want := range []string{
		`idemq_consumer_messages_total{idemq_outcome="ack",messaging_consumer_group_name="payments-worker",messaging_destination_name="payments.requested"`,
		`idemq_consumer_messages_total{idemq_outcome="retry",`,
		`idemq_dedupe_claims_total{idemq_component="consumer",idemq_dedupe_outcome="acquired"`,
		`idemq_dedupe_claims_total{idemq_component="consumer",idemq_dedupe_outcome="conflict"`,
		`idemq_dead_letters_total{idemq_dead_letter_reason="conflict"`,
		`idemq_dead_letters_total{idemq_dead_letter_reason="invalid"`,
		`messaging_process_duration_seconds_bucket{`,
		`idemq_handler_duration_seconds_count{`,
		`idemq_outbox_lag_seconds_count{`,
		`idemq_outbox_backlog{`,
	} {
		if !strings.Contains(w, want) {
			t.Errorf("worker /metrics lacks %s", want)
		}
	}
	a := get(t, alogs.event("metrics_ready", "addr"))
	for _, want := range []string{
		`idemq_http_requests_total{http_request_method="PUT",http_response_status_code="202",idemq_dedupe_outcome="acquired"`,
		`idemq_http_requests_total{http_request_method="PUT",http_response_status_code="202",idemq_dedupe_outcome="duplicate"`,
		`idemq_http_requests_total{http_request_method="PUT",http_response_status_code="409",idemq_dedupe_outcome="conflict"`,
		`idemq_dedupe_store_duration_seconds_bucket{idemq_component="http",idemq_dedupe_operation="claim"`,
		`idemq_dedupe_store_duration_seconds_bucket{idemq_component="http",idemq_dedupe_operation="complete"`,
	} {
		if !strings.Contains(a, want) {
			t.Errorf("api /metrics lacks %s", want)
		}
	}
	// Both relays relay the one outbox table; either may have sent it.
	if want := `messaging_client_sent_messages_total{messaging_destination_name="payments.requested"`; !strings.Contains(a+w, want) {
		t.Errorf("neither /metrics has %s", want)
	}
	if t.Failed() {
		t.Logf("worker:\n%s\napi:\n%s", w, a)
	}
}
