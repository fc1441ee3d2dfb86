package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/integration/harness"
)

// envConsoleScale names the variable that turns TestConsoleScale on: the
// number of dead letters to publish.
const envConsoleScale = "IDEMQ_CONSOLE_SCALE"

// TestConsoleScale measures the console on a large DLQ: it publishes
// $IDEMQ_CONSOLE_SCALE dead letters into a stream of its own on the real
// server (deleted afterwards) and logs how long the pages take. It reports
// times and asserts none; it checks only that the pages are right.
//
//	IDEMQ_CONSOLE_SCALE=100000 go test ./cmd/idemq/ -run TestConsoleScale -v
func TestConsoleScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv(envConsoleScale))
	if n <= 0 {
		t.Skipf("set %s=N to measure the console on a DLQ of N dead letters", envConsoleScale)
	}
	env := harness.NATS(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	dlqName := env.Name("SCALE_DLQ")
	if _, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: dlqName, Subjects: []string{env.Subject("dlq.>")}}); err != nil {
		t.Fatal(err)
	}
	// 60% permanent, 30% exhausted, 9% conflict, 1% invalid; 50 original
	// subjects, one of them rare (every 1000th letter).
	reasonOf := func(i int) consumer.Reason {
		switch m := i % 100; {
		case m == 99:
			return consumer.ReasonInvalid
		case m >= 90:
			return consumer.ReasonConflict
		case m >= 60:
			return consumer.ReasonExhausted
		}
		return consumer.ReasonPermanent
	}
	subjectOf := func(i int) string {
		if i%1000 == 999 {
			return env.Subject("rare.subject")
		}
		return env.Subject(fmt.Sprintf("orders.s%02d", i%49))
	}
	dl := &natsjs.DeadLetterer{JS: env.JS, Subject: env.Subject("dlq.orders"), Stream: dlqName, Host: "scale"}
	start := time.Now()
	for i := range n {
		m := dl.Msg(natsjs.Letter{Subject: subjectOf(i), Stream: "ORDERS", Consumer: "worker", Sequence: uint64(i + 1),
			Attempts: 3, Reason: reasonOf(i), Err: errors.New("handler failed: upstream said no"),
			Data: fmt.Appendf(nil, `{"order":"o-%d","customer":"c-%d","amount":{"value":%d,"currency":"EUR"},"note":"%s"}`,
				i, i%977, i%10000, strings.Repeat("x", 80))})
		if _, err := env.JS.PublishMsgAsync(m); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
	}
	select {
	case <-env.JS.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("publishes not acknowledged")
	}
	t.Logf("published %d dead letters in %s", n, time.Since(start).Round(time.Millisecond))

	cc := newTestConsole(t, env.JS, consoleConfig{Streams: []string{dlqName}, Now: time.Now}, nil, nil)
	timed := func(what, path, want string) {
		t.Helper()
		start := time.Now()
		code, body, _ := cc.do(http.MethodGet, path, nil)
		took := time.Since(start)
		if code != http.StatusOK || !strings.Contains(body, want) {
			t.Fatalf("%s: GET %s: status %d, lacks %q", what, path, code, want)
		}
		t.Logf("%-42s %10s  %6d bytes", what, took.Round(time.Millisecond), len(body))
	}
	base := "/dlq/" + dlqName
	invalid := n / 100
	for i := range 3 {
		timed(fmt.Sprintf("overview (%d)", i+1), "/", fmt.Sprintf(`data-reason="invalid" data-n="%d"`, invalid))
	}
	timed("list, first page (50)", base, `id="row-50"`)
	timed("list, page 1000 (from=50000)", base+"?from=50000", `id="row-50049"`)
	timed("list, last page", base+fmt.Sprintf("?from=%d", n-49), fmt.Sprintf(`id="row-%d"`, n))
	timed("list, reason=invalid (1%), first page", base+"?reason=invalid", `id="row-100"`)
	timed("list, reason=invalid, 500 per page", base+"?reason=invalid&n=500", `id="row-100"`)
	timed("list, rare subject (0.1%), first page", base+"?subject="+env.Subject("rare.subject"), `id="row-1000"`)
	timed("list, since 1h ago (all match)", base+"?since=1h", `<tr id="row-`)
	timed("detail, middle", fmt.Sprintf("%s/msg/%d", base, n/2), "Idemq-Reason")

	// What "replay all matching" and "purge all matching" do first: select
	// with the CLI's scan (one message get per message).
	d, err := openDLQ(ctx, env.JS, dlqName)
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	seqs, err := d.seqs(ctx, selector{Reason: "invalid"})
	if err != nil || len(seqs) != invalid {
		t.Fatalf("select reason=invalid: %d, %v", len(seqs), err)
	}
	t.Logf("%-42s %10s", "select reason=invalid (replay/purge all)", time.Since(start).Round(time.Millisecond))
	if c := consumers(t, env, dlqName); c != 0 {
		t.Errorf("%d scan consumers left behind", c)
	}
}
