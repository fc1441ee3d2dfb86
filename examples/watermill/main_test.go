package main

import (
	"bytes"
	"strings"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	// Watermill's NewMapExpiringKeyRepository starts a clean-up loop that
	// nothing stops.
	goleak.VerifyTestMain(m,
		goleak.IgnoreTopFunction("github.com/ThreeDotsLabs/watermill/message/router/middleware.(*mapExpiringKeyRepository).cleanOutLoop"))
}

// The demo exits 0 and prints both outcomes and the dead letter.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	if code := run(&out); code != 0 {
		t.Fatalf("exit status %d; output:\n%s", code, out.String())
	}
	for _, want := range []string{
		"Watermill Retry + Deduplicator: handler ran",
		"idemq middleware:               handler ran 2 time(s), payment applied 1 time(s) — applied once",
		"Idemq-Reason:           permanent",
		"Idemq-Original-Subject: payments.idemq",
		"Idemq-Consumer:         idemq",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q:\n%s", want, out.String())
		}
	}
	t.Log("\n" + out.String())
}
