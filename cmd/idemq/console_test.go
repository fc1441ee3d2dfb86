package main

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"html"
	"io"
	"log/slog"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
)

// syncBuffer is a bytes.Buffer safe for concurrent writers and readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// consoleClient is a browser-like client of a console under test: it keeps
// cookies and knows the CSRF token of the last page it read.
type consoleClient struct {
	t    *testing.T
	srv  *httptest.Server
	c    *console
	log  *syncBuffer
	http *http.Client
	csrf string
	// header is added to every request.
	header http.Header
}

// newTestConsole serves a console on the fixture's streams (or the given
// config) and returns a client for it. The server and the console's jobs
// are stopped in cleanup.
func newTestConsole(t *testing.T, js jetstream.JetStream, cfg consoleConfig, db *sql.DB, ob *outbox.Outbox) *consoleClient {
	t.Helper()
	logs := &syncBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	if cfg.Now == nil {
		cfg.Now = func() time.Time { return t0 }
	}
	c, err := newConsole(cfg, js, db, ob)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(c.Handler())
	t.Cleanup(func() {
		srv.Close()
		c.Close()
	})
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &consoleClient{t: t, srv: srv, c: c, log: logs, http: &http.Client{Jar: jar, Timeout: waitFor}, header: http.Header{}}
}

var csrfField = regexp.MustCompile(`name="csrf" (?:value|content)="([0-9a-f]+)"`)

// do sends a request and returns the final response's status, body and URL
// (redirects are followed).
func (cc *consoleClient) do(method, path string, form url.Values) (int, string, *url.URL) {
	cc.t.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, cc.srv.URL+path, body)
	if err != nil {
		cc.t.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	}
	for k, v := range cc.header {
		req.Header[k] = v
	}
	res, err := cc.http.Do(req)
	if err != nil {
		cc.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		cc.t.Fatal(err)
	}
	if m := csrfField.FindStringSubmatch(string(b)); m != nil {
		cc.csrf = m[1]
	}
	return res.StatusCode, string(b), res.Request.URL
}

// get fetches path and fails the test unless the status is want.
func (cc *consoleClient) get(path string, want int) string {
	cc.t.Helper()
	code, body, _ := cc.do(http.MethodGet, path, nil)
	if code != want {
		cc.t.Fatalf("GET %s: status %d, want %d\n%s", path, code, want, body)
	}
	return body
}

// post submits form with the CSRF token of the last page read.
func (cc *consoleClient) post(path string, form url.Values) (int, string, *url.URL) {
	cc.t.Helper()
	if cc.csrf == "" {
		cc.get("/", http.StatusOK)
	}
	form.Set("csrf", cc.csrf)
	return cc.do(http.MethodPost, path, form)
}

// runJob posts an action, expects to land on its job page, waits for the
// job to finish and returns its final status.
func (cc *consoleClient) runJob(path string, form url.Values) jobStatus {
	cc.t.Helper()
	code, body, u := cc.post(path, form)
	if code != http.StatusOK || !strings.HasPrefix(u.Path, "/jobs/") {
		cc.t.Fatalf("POST %s: status %d at %s\n%s", path, code, u, body)
	}
	id := strings.TrimPrefix(u.Path, "/jobs/")
	deadline := time.Now().Add(waitFor)
	for {
		_, body, _ := cc.do(http.MethodGet, "/jobs/"+id+"/status", nil)
		var st jobStatus
		if err := json.Unmarshal([]byte(body), &st); err != nil {
			cc.t.Fatalf("job status %q: %v", body, err)
		}
		if st.Finished {
			// The job page renders the finished job too.
			if page := cc.get("/jobs/"+id, http.StatusOK); !strings.Contains(page, st.Summary) {
				cc.t.Errorf("job page lacks the summary %q", st.Summary)
			}
			return st
		}
		if time.Now().After(deadline) {
			cc.t.Fatalf("job %s did not finish: %+v", id, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var rowID = regexp.MustCompile(`<tr id="row-([^"]+)"`)

// rows returns the row ids of a list page, in order.
func rows(page string) string {
	var out []string
	for _, m := range rowID.FindAllStringSubmatch(page, -1) {
		out = append(out, m[1])
	}
	return fmt.Sprint(out)
}

func fixtureConsole(t *testing.T, f *dlqFixture, cfg consoleConfig) *consoleClient {
	t.Helper()
	cfg.Streams = []string{f.dlq}
	return newTestConsole(t, f.env.JS, cfg, nil, nil)
}

func TestConsoleOverview(t *testing.T) {
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newDLQFixture(t, env)
		cc := fixtureConsole(t, f, consoleConfig{})
		page := cc.get("/", http.StatusOK)
		for _, want := range []string{
			`id="msgs-` + f.dlq + `">5<`,
			`data-reason="permanent" data-n="2"`, `data-reason="conflict" data-n="1"`, `data-reason="exhausted" data-n="1"`,
			`data-subject="` + env.Subject("orders.created") + `" data-n="3"`, `data-subject="` + env.Subject("orders.shipped") + `" data-n="1"`,
			`id="not-dl-` + f.dlq + `">1 messages`,
			`href="/dlq/` + f.dlq + `?reason=permanent"`,
			"No outbox database", "No metrics source",
		} {
			if !strings.Contains(page, want) {
				t.Errorf("overview lacks %q", want)
			}
		}
		if strings.Contains(page, `data-reason="invalid"`) {
			t.Error("overview counts invalid letters; the fixture has none")
		}
		// The overview's scan consumer is gone afterwards.
		if n := consumers(t, env, f.dlq); n != 0 {
			t.Errorf("%d consumers left on the DLQ", n)
		}

		// A configured stream that does not exist is reported, not fatal.
		cc = newTestConsole(t, env.JS, consoleConfig{Streams: []string{f.dlq, env.Name("MISSING")}}, nil, nil)
		page = cc.get("/", http.StatusOK)
		if !strings.Contains(page, "stream not found") || !strings.Contains(page, `data-reason="permanent" data-n="2"`) {
			t.Errorf("overview with a missing stream:\n%s", page)
		}
	})
}

// href returns the link with the given id on page, unescaped; with an
// empty id the first dead letter's link.
func href(t *testing.T, page, id string) string {
	t.Helper()
	re := regexp.MustCompile(`<a href="([^"]*)" id="` + regexp.QuoteMeta(id) + `"`)
	if id == "" {
		re = regexp.MustCompile(`<a class="seq-link" href="([^"]*)"`)
	}
	m := re.FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no link %q on the page", id)
	}
	return html.UnescapeString(m[1])
}

func consumers(t *testing.T, env *harness.NATSEnv, stream string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	s, err := env.JS.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Consumers
}

func TestConsoleList(t *testing.T) {
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newDLQFixture(t, env)
		cc := fixtureConsole(t, f, consoleConfig{PageSize: 2})
		base := "/dlq/" + f.dlq
		// Messages are stored on the server's clock, not the console's.
		future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
		tests := []struct {
			name, query, want string
			next              string // the next page's from, or ""
		}{
			{"first page", "", "[1 2]", "3"},
			{"second page", "from=3", "[3 4]", "5"},
			{"last page", "from=5", "[5]", ""},
			{"page size", "n=10", "[1 2 3 4 5]", ""},
			{"reason", "reason=permanent&n=10", "[1 4]", ""},
			{"reason paged", "reason=permanent&n=1", "[1]", "2"},
			{"original subject", "subject=" + env.Subject("orders.shipped"), "[3]", ""},
			{"original subject wildcard", "n=10&subject=" + url.QueryEscape(strings.ToLower(env.Prefix)+".orders.*"), "[1 2 3 4]", ""},
			{"original subject and reason", "reason=permanent&subject=" + env.Subject("orders.created"), "[1 4]", "5"},
			{"since in the future", "since=" + url.QueryEscape(future), "[]", ""},
			{"until long ago", "until=2001-01-01", "[]", ""},
			{"since long ago", "n=10&since=2001-01-01T00:00", "[1 2 3 4 5]", ""},
			{"no match", "reason=invalid", "[]", ""},
		}
		for _, tt := range tests {
			page := cc.get(base+"?"+tt.query, http.StatusOK)
			if got := rows(page); got != tt.want {
				t.Errorf("%s: rows %s, want %s", tt.name, got, tt.want)
			}
			next := regexp.MustCompile(`id="next-page">next page » \(from sequence (\d+)\)`).FindStringSubmatch(page)
			switch {
			case tt.next == "" && next != nil:
				t.Errorf("%s: next page from %s, want none", tt.name, next[1])
			case tt.next != "" && (next == nil || next[1] != tt.next):
				t.Errorf("%s: next page %v, want from %s", tt.name, next, tt.next)
			}
		}
		// Following the links keeps the filter.
		page := cc.get(base+"?reason=permanent&n=1", http.StatusOK)
		page = cc.get(href(t, page, "next-page"), http.StatusOK)
		if got := rows(page); got != "[4]" {
			t.Errorf("next page of reason=permanent: %s", got)
		}
		if got := rows(cc.get(href(t, page, "first-page"), http.StatusOK)); got != "[1]" {
			t.Errorf("first page of reason=permanent: %s", got)
		}
		detail := cc.get(href(t, page, ""), http.StatusOK)
		if got := rows(cc.get(href(t, detail, "back"), http.StatusOK)); got != "[1 4]" {
			t.Errorf("back from the detail page: %s, want the filtered list [1 4]", got)
		}
		page = cc.get(base+"?reason=exhausted", http.StatusOK)
		for _, want := range []string{"upstream said no", f.orders + ":13", "exhausted", "Transient failures used up"} {
			if !strings.Contains(page, want) {
				t.Errorf("list lacks %q", want)
			}
		}
		if !strings.Contains(cc.get(base+"?n=10", http.StatusOK), `<tr id="row-5" class="not-dl">`) {
			t.Error("the plain message is not marked as not a dead letter")
		}
		cc.get(base+"?reason=late", http.StatusBadRequest)
		cc.get(base+"?since=yesterday", http.StatusBadRequest)
		cc.get(base+"?n=0", http.StatusBadRequest)
		cc.get("/dlq/"+env.Name("OTHER"), http.StatusNotFound)
		if n := consumers(t, env, f.dlq); n != 0 {
			t.Errorf("%d consumers left on the DLQ", n)
		}
		if n := len(f.seqs(t)); n != 5 {
			t.Errorf("listing changed the DLQ: %d messages", n)
		}
	})
}

func TestConsoleLetter(t *testing.T) {
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newDLQFixture(t, env)
		cc := fixtureConsole(t, f, consoleConfig{})
		page := cc.get("/dlq/"+f.dlq+"/msg/1", http.StatusOK)
		for _, want := range []string{
			"<th>Idemq-Reason</th><td>permanent</td>", "<th>Idemq-Original-Msg-Id</th><td>orig-1</td>",
			"<th>Idempotency-Key</th><td>key-1</td>", "<th>Idemq-Host</th><td>test-host</td>",
			`<pre class="errtext" id="error-text">card declined</pre>`,
			`id="original-subject">` + env.Subject("orders.created") + "<",
			`id="body-hidden"`, "(JSON, 28 bytes)", "Nats-Msg-Id: replay." + f.dlq + ".1",
		} {
			if !strings.Contains(page, want) {
				t.Errorf("detail lacks %q", want)
			}
		}
		if strings.Contains(page, "o-1") {
			t.Error("detail shows the body without -show-bodies")
		}
		page = cc.get("/dlq/"+f.dlq+"/msg/3", http.StatusOK)
		if !strings.Contains(page, `id="error-text">`+consumer.ErrorText(errLong)+"</pre>") {
			t.Error("detail does not show the whole error text")
		}
		if !strings.Contains(cc.get("/dlq/"+f.dlq+"/msg/5", http.StatusOK), "Not an idemq dead letter") {
			t.Error("detail of a plain message does not say it is not a dead letter")
		}
		cc.get("/dlq/"+f.dlq+"/msg/99", http.StatusNotFound)
		cc.get("/dlq/"+f.dlq+"/msg/x", http.StatusBadRequest)

		cc = fixtureConsole(t, f, consoleConfig{ShowBodies: true})
		page = cc.get("/dlq/"+f.dlq+"/msg/1", http.StatusOK)
		if !strings.Contains(page, "{\n  &#34;order&#34;: &#34;o-1&#34;,\n  &#34;amount&#34;: 100\n}") {
			t.Errorf("detail with -show-bodies lacks the indented JSON body:\n%s", page)
		}
		if page = cc.get("/dlq/"+f.dlq+"/msg/3", http.StatusOK); !strings.Contains(page, "00000000  00 01 fe ff 78") {
			t.Error("binary body is not a hex dump")
		}
	})
}

func TestConsoleReplay(t *testing.T) {
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newDLQFixture(t, env)
		cc := fixtureConsole(t, f, consoleConfig{Rate: 0})
		base := "/dlq/" + f.dlq
		cc.get(base+"/msg/1", http.StatusOK)

		// One letter, deleted once replayed (the detail page's default).
		st := cc.runJob(base+"/replay", url.Values{"scope": {"seqs"}, "seq": {"1"}, "delete": {"on"}})
		if st.State != jobDone || st.Replayed != 1 || st.Deleted != 1 || st.Selected != 1 {
			t.Fatalf("replay one: %+v", st)
		}
		msgs := f.orderMsgs(t)
		if len(msgs) != 1 || !bytes.Equal(msgs[0].Data, f.bodies[1]) || msgs[0].Subject != env.Subject("orders.created") ||
			msgs[0].Header.Get("Nats-Msg-Id") != "replay."+f.dlq+".1" || msgs[0].Header.Get("Idemq-Replayed-From") != f.dlq+":1" {
			t.Fatalf("ORDERS after replay: %d messages %+v", len(msgs), msgs)
		}
		if got := fmt.Sprint(f.seqs(t)); got != "[2 3 4 5]" {
			t.Fatalf("DLQ after replay: %s", got)
		}
		if got := rows(cc.get(base+"?n=10", http.StatusOK)); got != "[2 3 4 5]" {
			t.Errorf("list after replay: %s", got)
		}
		cc.get(base+"/msg/1", http.StatusNotFound)

		// A selection without delete: 2 replayed, 5 skipped (not a dead
		// letter), both kept.
		st = cc.runJob(base+"/replay", url.Values{"scope": {"seqs"}, "seq": {"2", "5"}})
		if st.State != jobDone || st.Replayed != 1 || st.Skipped != 1 || st.Deleted != 0 || !strings.Contains(st.Log, "skip") {
			t.Fatalf("replay selection: %+v", st)
		}
		// Replaying 2 again is deduped by ORDERS (same Nats-Msg-Id).
		st = cc.runJob(base+"/replay", url.Values{"scope": {"seqs"}, "seq": {"2"}, "delete": {"on"}})
		if st.Replayed != 1 || st.Deduped != 1 || st.Deleted != 1 {
			t.Fatalf("second replay of 2: %+v", st)
		}
		if n := len(f.orderMsgs(t)); n != 2 {
			t.Fatalf("ORDERS holds %d messages, want 2", n)
		}

		// Everything matching a filter, rate-limited.
		st = cc.runJob(base+"/replay", url.Values{"scope": {"filter"}, "reason": {"exhausted"}, "rate": {"100"}, "delete": {"on"}})
		if st.State != jobDone || st.Selected != 1 || st.Replayed != 1 || st.Deleted != 1 {
			t.Fatalf("replay reason=exhausted: %+v", st)
		}
		if msgs := f.orderMsgs(t); len(msgs) != 3 || msgs[2].Subject != env.Subject("orders.shipped") {
			t.Fatalf("ORDERS after the filtered replay: %d messages", len(msgs))
		}
		if got := fmt.Sprint(f.seqs(t)); got != "[4 5]" {
			t.Fatalf("DLQ after the filtered replay: %s", got)
		}

		// Bad requests start nothing.
		for _, form := range []url.Values{
			{"scope": {"seqs"}},
			{"scope": {"seqs"}, "seq": {"x"}},
			{"scope": {"everything"}},
			{"scope": {"filter"}, "reason": {"late"}},
			{"scope": {"seqs"}, "seq": {"4"}, "rate": {"-1"}},
		} {
			if code, body, _ := cc.post(base+"/replay", form); code != http.StatusBadRequest {
				t.Errorf("replay %v: status %d\n%s", form, code, body)
			}
		}
		if got := fmt.Sprint(f.seqs(t)); got != "[4 5]" {
			t.Fatalf("DLQ after refused replays: %s", got)
		}
		logs := cc.log.String()
		for _, want := range []string{`msg="console action started" action=replay who=local@127.0.0.1`, "selection=\"sequence 1, each deleted from the DLQ once replayed\"",
			`msg="console action done" action=replay`, `result="replayed 1 of 1, deleted 1 from the DLQ"`} {
			if !strings.Contains(logs, want) {
				t.Errorf("action log lacks %q:\n%s", want, logs)
			}
		}
	})
}

func TestConsolePurge(t *testing.T) {
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newDLQFixture(t, env)
		cc := fixtureConsole(t, f, consoleConfig{})
		base := "/dlq/" + f.dlq
		cc.get(base, http.StatusOK)
		for _, confirm := range []string{"", "yes", strings.ToLower(f.dlq)} {
			code, body, _ := cc.post(base+"/purge", url.Values{"scope": {"filter"}, "confirm": {confirm}})
			if code != http.StatusBadRequest || !strings.Contains(body, "purge not confirmed") {
				t.Fatalf("purge confirmed by %q: status %d", confirm, code)
			}
		}
		if n := len(f.seqs(t)); n != 5 {
			t.Fatalf("an unconfirmed purge deleted messages: %d left", n)
		}
		st := cc.runJob(base+"/purge", url.Values{"scope": {"filter"}, "reason": {"permanent"}, "confirm": {f.dlq}})
		if st.State != jobDone || st.Deleted != 2 || st.Selected != 2 {
			t.Fatalf("purge reason=permanent: %+v", st)
		}
		if got := fmt.Sprint(f.seqs(t)); got != "[2 3 5]" {
			t.Fatalf("after purge reason=permanent: %s", got)
		}
		st = cc.runJob(base+"/purge", url.Values{"scope": {"seqs"}, "seq": {"5", "1"}, "confirm": {f.dlq}})
		if st.Deleted != 1 {
			t.Fatalf("purge 5 and (gone) 1: %+v", st)
		}
		st = cc.runJob(base+"/purge", url.Values{"scope": {"filter"}, "confirm": {f.dlq}})
		if st.State != jobDone || st.Deleted != 2 {
			t.Fatalf("purge everything: %+v", st)
		}
		if n := len(f.seqs(t)); n != 0 {
			t.Fatalf("after purging everything: %d left", n)
		}
		if !strings.Contains(cc.get("/", http.StatusOK), `id="msgs-`+f.dlq+`">0<`) {
			t.Error("overview of the purged stream does not say 0 messages")
		}
		if !strings.Contains(cc.log.String(), "action=purge") || !strings.Contains(cc.log.String(), "purge not confirmed") {
			t.Errorf("purges not logged:\n%s", cc.log.String())
		}
	})
}

func TestConsoleCSRF(t *testing.T) {
	env := harness.EmbeddedNATS(t)
	f := newDLQFixture(t, env)
	cc := fixtureConsole(t, f, consoleConfig{})
	path := "/dlq/" + f.dlq + "/replay"
	form := url.Values{"scope": {"seqs"}, "seq": {"1"}, "delete": {"on"}}

	// No token, a wrong token, a token for another session.
	cc.get("/", http.StatusOK)
	if code, _, _ := cc.do(http.MethodPost, path, form); code != http.StatusForbidden {
		t.Errorf("POST without a CSRF token: status %d", code)
	}
	bad := url.Values{"csrf": {strings.Repeat("0", 64)}}
	for k, v := range form {
		bad[k] = v
	}
	if code, _, _ := cc.do(http.MethodPost, path, bad); code != http.StatusForbidden {
		t.Errorf("POST with a wrong CSRF token: status %d", code)
	}
	other := fixtureConsole(t, f, consoleConfig{})
	other.get("/", http.StatusOK)
	bad.Set("csrf", other.csrf)
	if code, _, _ := cc.do(http.MethodPost, path, bad); code != http.StatusForbidden {
		t.Errorf("POST with another console's CSRF token: status %d", code)
	}
	// A cross-site POST is refused even with the right token.
	cc.header.Set("Sec-Fetch-Site", "cross-site")
	if code, _, _ := cc.post(path, form); code != http.StatusForbidden {
		t.Errorf("cross-site POST: status %d", code)
	}
	cc.header.Del("Sec-Fetch-Site")
	// Actions are POST only.
	if code, _, _ := cc.do(http.MethodGet, path+"?scope=seqs&seq=1", nil); code != http.StatusMethodNotAllowed {
		t.Errorf("GET on an action: status %d", code)
	}
	if len(f.orderMsgs(t)) != 0 || len(f.seqs(t)) != 5 {
		t.Fatal("a refused request replayed something")
	}
	if !strings.Contains(cc.log.String(), "bad CSRF token") {
		t.Errorf("refusal not logged:\n%s", cc.log.String())
	}
	// With the token it works.
	if st := cc.runJob(path, form); st.Replayed != 1 {
		t.Fatalf("replay with the token: %+v", st)
	}
}

func TestConsoleAuth(t *testing.T) {
	env := harness.EmbeddedNATS(t)
	f := newDLQFixture(t, env)

	t.Run("token", func(t *testing.T) {
		cc := fixtureConsole(t, f, consoleConfig{Token: "s3cret"})
		if body := cc.get("/", http.StatusUnauthorized); !strings.Contains(body, `name="token"`) {
			t.Errorf("401 page has no login form:\n%s", body)
		}
		cc.get("/?token=wrong", http.StatusUnauthorized)
		cc.get("/static/style.css", http.StatusOK)
		// ?token= sets a cookie and redirects to the page without it.
		code, _, u := cc.do(http.MethodGet, "/dlq/"+f.dlq+"?reason=permanent&token=s3cret", nil)
		if code != http.StatusOK || u.Query().Has("token") || u.Query().Get("reason") != "permanent" {
			t.Fatalf("token login: %d at %s", code, u)
		}
		cc.get("/", http.StatusOK)
		if st := cc.runJob("/dlq/"+f.dlq+"/replay", url.Values{"scope": {"seqs"}, "seq": {"2"}}); st.Replayed != 1 {
			t.Errorf("replay with the token cookie: %+v", st)
		}
		if !strings.Contains(cc.log.String(), "who=token@127.0.0.1") {
			t.Errorf("who is not logged:\n%s", cc.log.String())
		}

		// Bearer token, and the login form.
		bearer := fixtureConsole(t, f, consoleConfig{Token: "s3cret"})
		bearer.header.Set("Authorization", "Bearer s3cret")
		bearer.get("/", http.StatusOK)
		bearer.header.Set("Authorization", "Bearer nope")
		bearer.get("/", http.StatusUnauthorized)
		form := fixtureConsole(t, f, consoleConfig{Token: "s3cret"})
		if code, _, _ := form.do(http.MethodPost, "/login", url.Values{"token": {"nope"}}); code != http.StatusUnauthorized {
			t.Errorf("login with a wrong token: %d", code)
		}
		if code, body, _ := form.do(http.MethodPost, "/login", url.Values{"token": {"s3cret"}}); code != http.StatusOK || !strings.Contains(body, "Overview") {
			t.Errorf("login: %d", code)
		}
	})

	t.Run("basic", func(t *testing.T) {
		cc := fixtureConsole(t, f, consoleConfig{BasicUser: "ops", BasicPassword: "pw"})
		code, _, _ := cc.do(http.MethodGet, "/", nil)
		if code != http.StatusUnauthorized {
			t.Fatalf("without credentials: %d", code)
		}
		cc.header.Set("Authorization", "Basic "+basic("ops", "wrong"))
		cc.get("/", http.StatusUnauthorized)
		cc.header.Set("Authorization", "Basic "+basic("ops", "pw"))
		cc.get("/", http.StatusOK)
		if st := cc.runJob("/dlq/"+f.dlq+"/replay", url.Values{"scope": {"seqs"}, "seq": {"4"}}); st.Replayed != 1 {
			t.Errorf("replay with basic auth: %+v", st)
		}
		if !strings.Contains(cc.log.String(), "who=ops@127.0.0.1") {
			t.Errorf("the basic-auth user is not logged:\n%s", cc.log.String())
		}
	})

	t.Run("host", func(t *testing.T) {
		// Without authentication only loopback host names are served: a
		// DNS-rebinding page cannot reach the console.
		cc := fixtureConsole(t, f, consoleConfig{})
		req, _ := http.NewRequest(http.MethodGet, cc.srv.URL+"/", nil)
		req.Host = "evil.example:8089"
		res, err := cc.http.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusForbidden {
			t.Errorf("foreign Host: %d", res.StatusCode)
		}
		req.Host = "localhost:8089"
		if res, err = cc.http.Do(req); err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusOK {
			t.Errorf("Host localhost: %d", res.StatusCode)
		}
	})
}

func basic(u, p string) string {
	req, _ := http.NewRequest(http.MethodGet, "/", nil)
	req.SetBasicAuth(u, p)
	return strings.TrimPrefix(req.Header.Get("Authorization"), "Basic ")
}

func TestCheckExposure(t *testing.T) {
	tests := []struct {
		addr string
		auth bool
		ok   bool
	}{
		{"127.0.0.1:8089", false, true},
		{"[::1]:8089", false, true},
		{"localhost:8089", false, true},
		{"127.0.0.2:0", false, true},
		{":8089", false, false},
		{"0.0.0.0:8089", false, false},
		{"192.168.1.10:8089", false, false},
		{"console.internal:8089", false, false},
		{":8089", true, true},
		{"0.0.0.0:8089", true, true},
		{"nonsense", true, false},
	}
	for _, tt := range tests {
		err := checkExposure(tt.addr, tt.auth)
		if (err == nil) != tt.ok {
			t.Errorf("checkExposure(%q, %v) = %v", tt.addr, tt.auth, err)
		}
	}
}

func TestConsoleCommand(t *testing.T) {
	for _, args := range [][]string{
		{"console", "-addr", "0.0.0.0:0"},
		{"console", "-addr", ":8089"},
		{"console", "-basic-auth", "nopassword", "-addr", "0.0.0.0:0"},
		{"console", "-rate", "-1"},
		{"console", "-page-size", "0"},
		{"console", "-db", "mysql://x"},
		{"console", "extra"},
	} {
		code, _, errOut := runCLI(t, args...)
		if code != exitUsage {
			t.Errorf("%v: exit %d, want %d: %s", args, code, exitUsage, errOut)
		}
		if len(args) == 3 && args[2] == "0.0.0.0:0" && !strings.Contains(errOut, errExposed.Error()) {
			t.Errorf("%v: stderr %q", args, errOut)
		}
	}
	if code, out, _ := runCLI(t, "console", "-h"); code != exitOK || !strings.Contains(out, "-show-bodies") {
		t.Errorf("console -h: exit %d %q", code, out)
	}

	// The command serves until its context ends.
	env := harness.EmbeddedNATS(t)
	f := newDLQFixture(t, env)
	stderr := &syncBuffer{}
	a := &app{stdout: io.Discard, stderr: stderr, width: 200, now: time.Now}
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	done := make(chan int, 1)
	go func() {
		done <- a.run(ctx, []string{"console", "-nats", env.URL, "-stream", f.dlq, "-addr", "127.0.0.1:0"})
	}()
	listening := regexp.MustCompile(`url=(http://127\.0\.0\.1:\d+/)`)
	var base string
	for base == "" {
		select {
		case code := <-done:
			t.Fatalf("console exited %d: %s", code, stderr)
		case <-time.After(10 * time.Millisecond):
		}
		if m := listening.FindStringSubmatch(stderr.String()); m != nil {
			base = m[1]
		}
	}
	res, err := http.Get(base)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || !strings.Contains(string(b), `data-reason="permanent" data-n="2"`) {
		t.Fatalf("GET %s: %d\n%s", base, res.StatusCode, b)
	}
	http.DefaultClient.CloseIdleConnections()
	cancel()
	if code := <-done; code != exitOK {
		t.Fatalf("console exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr.String(), "console stopped") {
		t.Errorf("stderr: %s", stderr)
	}
}

func TestConsoleOutbox(t *testing.T) {
	eachDB(t, func(t *testing.T, db *sql.DB, dbURL string) {
		ctx, cancel := context.WithTimeout(context.Background(), waitFor)
		defer cancel()
		fillOutbox(t, ctx, db)
		ob, err := outbox.New(ctx, db, outbox.Config{SkipCreate: true})
		if err != nil {
			t.Fatal(err)
		}
		env := harness.EmbeddedNATS(t)
		dlqName := env.Name("DLQ")
		if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: dlqName, Subjects: []string{env.Subject("dlq.>")}}); err != nil {
			t.Fatal(err)
		}
		cc := newTestConsole(t, env.JS, consoleConfig{Streams: []string{dlqName}}, db, ob)
		page := cc.get("/", http.StatusOK)
		for _, want := range []string{`id="outbox-pending">1<`, `id="outbox-failed"><a href="/outbox">2<`, `id="outbox-oldest">1m30s old<`, "No metrics source"} {
			if !strings.Contains(page, want) {
				t.Errorf("overview lacks %q", want)
			}
		}
		page = cc.get("/outbox", http.StatusOK)
		if got := rows(page); got != "[bad-1 bad-2]" {
			t.Fatalf("failed rows %s", got)
		}
		if !strings.Contains(page, "no response") {
			t.Error("failed rows lack their last error")
		}

		code, page, u := cc.post("/outbox/retry", url.Values{"scope": {"ids"}, "id": {"bad-1"}})
		if code != http.StatusOK || u.Query().Get("requeued") != "1" || rows(page) != "[bad-2]" || !strings.Contains(page, `id="outbox-pending">2<`) {
			t.Fatalf("retry bad-1: %d at %s, rows %s", code, u, rows(page))
		}
		if code, _, _ := cc.post("/outbox/retry", url.Values{"scope": {"ids"}, "id": {"bad-1", "nope"}}); code != http.StatusConflict {
			t.Errorf("retry of rows that are not failed: %d", code)
		}
		if code, _, _ := cc.post("/outbox/retry", url.Values{"scope": {"ids"}}); code != http.StatusBadRequest {
			t.Errorf("retry of nothing: %d", code)
		}
		code, page, u = cc.post("/outbox/retry", url.Values{"scope": {"all-failed"}})
		if code != http.StatusOK || u.Query().Get("requeued") != "1" || !strings.Contains(page, `id="no-failed"`) {
			t.Fatalf("retry all: %d at %s", code, u)
		}
		counts, err := ob.Counts(ctx, db)
		if err != nil || counts[outbox.StateFailed] != 0 || counts[outbox.StatePending] != 3 {
			t.Fatalf("counts after retry: %v %v", counts, err)
		}
		if logs := cc.log.String(); !strings.Contains(logs, "action=outbox-retry who=local@127.0.0.1") || !strings.Contains(logs, "requeued=1") {
			t.Errorf("retries not logged:\n%s", logs)
		}

		// Without -db the outbox page says how to get one.
		plain := newTestConsole(t, env.JS, consoleConfig{Streams: []string{dlqName}}, nil, nil)
		if body := plain.get("/outbox", http.StatusNotFound); !strings.Contains(body, "-db URL") {
			t.Errorf("outbox page without -db:\n%s", body)
		}
	})
}

func TestParseWhen(t *testing.T) {
	for in, want := range map[string]time.Time{
		"":                     {},
		"90m":                  t0.Add(-90 * time.Minute),
		"2d":                   t0.Add(-48 * time.Hour),
		"2025-10-01":           time.Date(2025, 10, 1, 0, 0, 0, 0, time.UTC),
		"2025-10-01T08:30":     time.Date(2025, 10, 1, 8, 30, 0, 0, time.UTC),
		"2025-10-01T08:30:05Z": time.Date(2025, 10, 1, 8, 30, 5, 0, time.UTC),
	} {
		got, err := parseWhen(in, t0)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseWhen(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"yesterday", "-5m", "2025-13-01"} {
		if _, err := parseWhen(in, t0); err == nil {
			t.Errorf("parseWhen(%q) succeeded", in)
		}
	}
}

func TestSubjectMatches(t *testing.T) {
	for _, tt := range []struct {
		pattern, subject string
		want             bool
	}{
		{"a.b", "a.b", true},
		{"a.*", "a.b", true},
		{"a.*", "a.b.c", false},
		{"a.>", "a.b.c", true},
		{"a.>", "a", false},
		{">", "a", true},
		{"a.b", "a.c", false},
		{"*.b", "a.b", true},
		{"a", "", false},
	} {
		if got := subjectMatches(tt.pattern, tt.subject); got != tt.want {
			t.Errorf("subjectMatches(%q, %q) = %v", tt.pattern, tt.subject, got)
		}
	}
}
