package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
)

// updateScreenshots rewrites the README's console screenshots from the
// browser test: go test ./cmd/idemq/ -run TestConsoleBrowser -update-screenshots
var updateScreenshots = flag.Bool("update-screenshots", false, "rewrite docs/console/*.png from TestConsoleBrowser")

// screenshotDir is where the README's screenshots live, from this package.
const screenshotDir = "../../docs/console"

// chromiumPath returns the Chromium to drive: $IDEMQ_CHROMIUM, else
// chromium on PATH (Debian's package installs /usr/bin/chromium).
func chromiumPath() (string, error) {
	if p := os.Getenv("IDEMQ_CHROMIUM"); p != "" {
		return p, nil
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("chromium not found on PATH (Debian: apt-get install -y chromium; or set IDEMQ_CHROMIUM)")
}

// demoLetter is one dead letter of the browser test's DLQ.
type demoLetter struct {
	dlqSubject string
	subject    string
	reason     consumer.Reason
	attempts   int
	err        string
	body       string
}

// demoLetters look like a day of a shop's failures. The first is the one
// the test replays.
var demoLetters = []demoLetter{
	{"dlq.orders", "orders.created", consumer.ReasonPermanent, 1, "payment provider: card declined (code 05, do not honour)", `{"order":"o-1041","customer":"c-77","amount":{"value":12900,"currency":"EUR"},"items":[{"sku":"desk-oak","qty":1}]}`},
	{"dlq.orders", "orders.created", consumer.ReasonConflict, 1, "idempotency key o-1042 already completed with a different body (fingerprint 7f3a9c… ≠ 91c0d2…)", `{"order":"o-1042","customer":"c-12","amount":{"value":4500,"currency":"EUR"}}`},
	{"dlq.payments", "payments.capture", consumer.ReasonExhausted, 8, "capture: dial tcp 10.0.3.7:5432: connect: connection refused", `{"payment":"p-881","order":"o-1039","amount":{"value":2300,"currency":"EUR"}}`},
	{"dlq.payments", "payments.capture", consumer.ReasonExhausted, 8, "capture: context deadline exceeded (upstream 10s)", `{"payment":"p-882","order":"o-1040","amount":{"value":990,"currency":"EUR"}}`},
	{"dlq.orders", "orders.created", consumer.ReasonInvalid, 1, "no usable idempotency key: Idempotency-Key header is empty", `{"order":"o-1043"}`},
	{"dlq.orders", "orders.created", consumer.ReasonPermanent, 1, "payment provider: card expired", `{"order":"o-1044","customer":"c-31","amount":{"value":7800,"currency":"EUR"}}`},
	{"dlq.payments", "payments.refund", consumer.ReasonPermanent, 1, "refund exceeds the captured amount (2300 > 2000)", `{"payment":"p-871","refund":{"value":2300,"currency":"EUR"}}`},
	{"dlq.payments", "payments.capture", consumer.ReasonExhausted, 8, "capture: 503 Service Unavailable", `{"payment":"p-883","order":"o-1045","amount":{"value":15000,"currency":"EUR"}}`},
	{"dlq.orders", "orders.shipped", consumer.ReasonInvalid, 1, "body is not JSON: invalid character 'o' in literal null (expecting 'u')", `not json`},
	{"dlq.orders", "orders.created", consumer.ReasonPermanent, 1, "customer c-9 is blocked", `{"order":"o-1046","customer":"c-9","amount":{"value":100,"currency":"EUR"}}`},
}

// TestConsoleBrowser drives the console in headless Chromium: it opens the
// overview, filters the list by reason, opens a dead letter, replays it,
// sees it republished on its original subject and gone from the list (the
// console replays with "delete once replayed" on by default, the CLI's
// -delete: the letter is deleted from the DLQ after the replay's PubAck).
// With -update-screenshots it rewrites the README's screenshots.
func TestConsoleBrowser(t *testing.T) {
	chromium, err := chromiumPath()
	if err != nil {
		harness.Unavailable(t, "browser test: %v", err)
		return
	}
	// A private server, so that the streams can have the plain names the
	// screenshots show.
	env := harness.EmbeddedNATS(t)
	pg := harness.Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitFor)
	defer cancel()
	for name, subjects := range map[string][]string{"ORDERS": {"orders.>"}, "PAYMENTS": {"payments.>"}, "DLQ": {"dlq.>"}} {
		if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: name, Subjects: subjects, Duplicates: time.Hour}); err != nil {
			t.Fatal(err)
		}
	}
	for i, x := range demoLetters {
		dl := &natsjs.DeadLetterer{JS: env.JS, Subject: x.dlqSubject, Stream: "DLQ", Host: "worker-2"}
		stream := "ORDERS"
		if strings.HasPrefix(x.subject, "payments.") {
			stream = "PAYMENTS"
		}
		err := dl.PublishLetter(ctx, natsjs.Letter{Subject: x.subject, Stream: stream, Consumer: "shop-worker",
			Sequence: uint64(100 + i), Attempts: x.attempts, Reason: x.reason, Err: errors.New(x.err), Data: []byte(x.body),
			Header: nats.Header{"Idempotency-Key": {fmt.Sprintf("k-%d", 1041+i)}}})
		if err != nil {
			t.Fatal(err)
		}
	}
	fillOutboxAt(t, ctx, pg.DB, time.Now().Add(-90*time.Second))
	ob, err := outbox.New(ctx, pg.DB, outbox.Config{SkipCreate: true})
	if err != nil {
		t.Fatal(err)
	}
	replayed, err := env.Conn.SubscribeSync("orders.created")
	if err != nil {
		t.Fatal(err)
	}
	defer replayed.Unsubscribe()

	cc := newTestConsole(t, env.JS, consoleConfig{Streams: []string{"DLQ"}, ShowBodies: true, Rate: defaultRate,
		Now: time.Now}, pg.DB, ob)
	base := cc.srv.URL

	allocCtx, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chromium),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("hide-scrollbars", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(1280, 900),
	)
	defer cancelAlloc()
	browser, cancelBrowser := chromedp.NewContext(allocCtx)
	defer cancelBrowser()
	// The first Do starts the browser; it must not carry a timeout.
	if err := chromedp.Do(browser); err != nil {
		t.Fatalf("start chromium %s: %v", chromium, err)
	}
	defer func() {
		if err := chromedp.Cancel(browser); err != nil {
			t.Errorf("stop chromium: %v", err)
		}
	}()
	bctx, cancelSteps := context.WithTimeout(browser, 2*waitFor)
	defer cancelSteps()

	step := func(what string, steps ...chromedp.Action[chromedp.Void]) {
		t.Helper()
		if err := chromedp.Do(bctx, steps...); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	shot := func(name string) {
		t.Helper()
		if !*updateScreenshots {
			return
		}
		png, err := chromedp.Run(bctx, chromedp.FullScreenshot(100))
		if err != nil {
			t.Fatalf("screenshot %s: %v", name, err)
		}
		if err := os.MkdirAll(screenshotDir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(screenshotDir, name), png, 0o644); err != nil {
			t.Fatal(err)
		}
		t.Logf("wrote %s (%d bytes)", filepath.Join(screenshotDir, name), len(png))
	}
	rowIDs := func() string {
		t.Helper()
		ids, err := chromedp.Run(bctx, chromedp.Evaluate[[]string](
			`Array.from(document.querySelectorAll("#letters tbody tr[id^=row-]")).map(r => r.id.slice(4))`))
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprint(ids)
	}
	text := func(sel string) string {
		t.Helper()
		s, err := chromedp.Run(bctx, chromedp.Text(chromedp.CSS(sel)))
		if err != nil {
			t.Fatalf("text of %s: %v", sel, err)
		}
		return strings.TrimSpace(s)
	}

	// Overview.
	step("overview", chromedp.Navigate(base+"/"), chromedp.WaitVisible(chromedp.ID("stream-DLQ")))
	if got := text("#msgs-DLQ"); got != fmt.Sprint(len(demoLetters)) {
		t.Errorf("overview: %s messages, want %d", got, len(demoLetters))
	}
	if got := text(`tr[data-reason="permanent"] td.num`); got != "4" {
		t.Errorf("overview: %s permanent letters, want 4", got)
	}
	if got := text("#outbox-failed"); got != "2" {
		t.Errorf("overview: %s failed outbox rows, want 2", got)
	}
	shot("overview.png")

	// Filter the list by reason with the filter form.
	step("list", chromedp.Click(chromedp.CSS(`header nav a[href="/dlq/DLQ"]`)), chromedp.WaitVisible(chromedp.ID("filter-form")))
	if got := rowIDs(); got != "[1 2 3 4 5 6 7 8 9 10]" {
		t.Fatalf("unfiltered list: %s", got)
	}
	step("filter by reason",
		chromedp.SetValue(chromedp.ID("f-reason"), "permanent"),
		chromedp.Click(chromedp.ID("f-apply")),
		chromedp.WaitVisible(chromedp.CSS("p.reason-help")),
	)
	if got := rowIDs(); got != "[1 6 7 10]" {
		t.Fatalf("list filtered by permanent: %s", got)
	}
	shot("list.png")

	// Open the first one.
	step("open letter 1", chromedp.Click(chromedp.CSS(`#row-1 a.seq-link`)), chromedp.WaitVisible(chromedp.ID("replay-one")))
	if got := text("#reason"); got != "permanent" {
		t.Errorf("detail: reason %q", got)
	}
	if got := text("#error-text"); got != demoLetters[0].err {
		t.Errorf("detail: error %q", got)
	}
	if got := text("#body"); !strings.Contains(got, `"order": "o-1041"`) {
		t.Errorf("detail: body %q", got)
	}
	shot("letter.png")

	// Replay it; the job page follows it live.
	step("replay", chromedp.Click(chromedp.ID("replay-one")), chromedp.WaitVisible(chromedp.ID("job")))
	if _, err := chromedp.Run(bctx, chromedp.Poll[bool](`document.getElementById("job-state").textContent === "done"`,
		chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
		t.Fatalf("job did not finish: %v (state %q, summary %q)", err, text("#job-state"), text("#job-summary"))
	}
	if got := text("#job-summary"); got != "replayed 1 of 1, deleted 1 from the DLQ" {
		t.Errorf("job summary %q", got)
	}
	shot("job.png")

	// Republished on the original subject with the CLI's message id.
	m, err := replayed.NextMsg(waitFor)
	if err != nil {
		t.Fatalf("no replay on orders.created: %v", err)
	}
	if string(m.Data) != demoLetters[0].body || m.Header.Get("Nats-Msg-Id") != "replay.DLQ.1" ||
		m.Header.Get("Idemq-Replayed-From") != "DLQ:1" || m.Header.Get(consumer.HeaderReason) != "" {
		t.Errorf("replayed message %q, headers %v", m.Data, m.Header)
	}

	// Back on the filtered list, it is gone.
	step("back to the list", chromedp.Click(chromedp.ID("back-to-list")), chromedp.WaitVisible(chromedp.ID("filter-form")))
	if got := rowIDs(); got != "[6 7 10]" {
		t.Errorf("list after the replay: %s, want [6 7 10]", got)
	}
	loc, err := chromedp.Run(bctx, chromedp.Location())
	if err != nil || !strings.Contains(loc, "reason=permanent") {
		t.Errorf("back link lost the filter: %q %v", loc, err)
	}
	if !strings.Contains(cc.log.String(), `msg="console action done" action=replay who=local@127.0.0.1`) {
		t.Errorf("replay not logged:\n%s", cc.log.String())
	}
}
