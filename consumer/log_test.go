package consumer_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/retry"
)

// A suppressed duplicate is logged at Debug with its key, a dead letter at
// Warn with its reason and the message's sequence, and no line carries the
// payload.
func TestLogLines(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p := newPipeline(t, consumer.Config{Guard: guard(memstore.New(memstore.Config{})), Logger: log},
		func(ctx context.Context, m *consumer.Message) error {
			if m.Header["Idempotency-Key"][0] == "bad" {
				return retry.Permanent(errBoom)
			}
			return nil
		})
	secret := `{"order":"o-1","amount":100,"card":"4111-1111-1111-1111"}`
	for _, key := range []string{"k", "k", "bad"} {
		m := msg(key, 1)
		m.Data = []byte(secret)
		m.Sequence = 42
		p.Process(context.Background(), m)
	}
	out := buf.String()
	var dup, dead string
	for _, line := range strings.Split(out, "\n") {
		switch {
		case strings.Contains(line, "duplicate suppressed"):
			dup = line
		case strings.Contains(line, "dead-letter"):
			dead = line
		}
	}
	if !strings.Contains(dup, "level=DEBUG") || !strings.Contains(dup, "key=k") {
		t.Errorf("duplicate line %q, want Debug with the key", dup)
	}
	if !strings.Contains(dead, "level=WARN") || !strings.Contains(dead, "reason=permanent") || !strings.Contains(dead, "sequence=42") {
		t.Errorf("dead-letter line %q, want Warn with the reason and the sequence", dead)
	}
	if strings.Contains(out, "4111") {
		t.Errorf("a log line carries the payload:\n%s", out)
	}
}
