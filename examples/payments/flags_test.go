package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestFlagsNamedOneByOne checks that each command refuses a wrong flag
// before it starts anything, naming that flag alone.
func TestFlagsNamedOneByOne(t *testing.T) {
	others := []string{"-payments", "-workers", "-concurrency", "-clients", "-drop", "-drain", "-nats", "-db", "-prefix", "-addr", "-lease", "-ack-wait", "-log-format"}
	tests := []struct {
		args []string
		flag string // the flag the error must name
		want string // and what it must say about it
	}{
		{[]string{"-payments", "-5"}, "-payments", "at least 100, got -5"},
		{[]string{"-workers", "0"}, "-workers", "at least 1"},
		{[]string{"-concurrency", "0"}, "-concurrency", "at least 1"},
		{[]string{"-clients", "-1"}, "-clients", "at least 1"},
		{[]string{"-drop", "0.95"}, "-drop", "within 0-0.9"},
		{[]string{"-drain", "0s"}, "-drain", "positive duration"},
		{[]string{"-nats", "localhost:4222"}, "-nats", "nats://"},
		{[]string{"-db", "mysql://x"}, "-db", "postgres://… or sqlite:PATH"},
		{[]string{"-db", "sqlite:"}, "-db", "empty sqlite path"},
		{[]string{"-prefix", "my-team"}, "-prefix", "letters, digits or underscores"},
		{[]string{"-prefix", "9lives"}, "-prefix", "a letter"},
		// Two wrong flags: only the first is named.
		{[]string{"-payments", "-5", "-workers", "0"}, "-payments", "at least 100"},
		{[]string{"worker", "-db", "mysql://x"}, "-db", "postgres://"},
		{[]string{"worker", "-db", "sqlite:x.db", "-concurrency", "0"}, "-concurrency", "at least 1"},
		{[]string{"worker", "-db", "sqlite:x.db", "-ack-wait", "-1s"}, "-ack-wait", "positive"},
		{[]string{"worker", "-db", "sqlite:x.db", "-log-format", "xml"}, "-log-format", "text or json"},
		{[]string{"worker", "-db", "sqlite:x.db", "-prefix", "a.b"}, "-prefix", "letters"},
		{[]string{"worker"}, "-db", "required"},
		{[]string{"api", "-db", "sqlite:x.db", "-lease", "0s"}, "-lease", "positive"},
		{[]string{"api", "-db", "redis://x"}, "-db", "postgres://"},
		{[]string{"api", "-db", "sqlite:x.db", "-nats", "http://x"}, "-nats", "nats://"},
	}
	for _, tt := range tests {
		var out, errb bytes.Buffer
		code := run(tt.args, &out, &errb)
		msg := errb.String()
		first, _, _ := strings.Cut(msg, "\n")
		if code != 2 || !strings.Contains(first, tt.flag) || !strings.Contains(first, tt.want) {
			t.Errorf("%v: exit %d, first line %q; want exit 2 naming %s: %q", tt.args, code, first, tt.flag, tt.want)
			continue
		}
		for _, o := range others {
			if o != tt.flag && strings.Contains(first, o+" ") {
				t.Errorf("%v: %q names %s too; want %s alone", tt.args, first, o, tt.flag)
			}
		}
		if out.Len() > 0 || strings.Contains(msg, "embedded nats-server") {
			t.Errorf("%v: something started before the flags were checked: %q %q", tt.args, out.String(), msg)
		}
	}
}

func TestNames(t *testing.T) {
	var zero names
	if zero.paymentsStream() != "PAYMENTS" || zero.paymentsSubjects() != "payments.>" || zero.requested() != "payments.requested" ||
		zero.completed() != "payments.completed" || zero.rejected() != "payments.rejected" || zero.dlqStream() != "DLQ" ||
		zero.dlqSubjects() != "dlq.>" || zero.dlqSubject() != "dlq.payments" || zero.durable() != "payments-worker" ||
		zero.table("accounts") != "accounts" {
		t.Fatalf("the zero names are not the contract's: %s", zero.describe())
	}
	q := `UPDATE accounts SET balance = balance - ? WHERE id = ?; SELECT * FROM transfers JOIN accounts_x`
	if zero.tables(q) != q {
		t.Fatalf("the zero names rewrite queries: %q", zero.tables(q))
	}
	n, err := namesFor("team_a")
	if err != nil {
		t.Fatal(err)
	}
	if n.paymentsStream() != "team_a_PAYMENTS" || n.paymentsSubjects() != "team_a.payments.>" || n.requested() != "team_a.payments.requested" ||
		n.dlqStream() != "team_a_DLQ" || n.dlqSubject() != "team_a.dlq.payments" || n.durable() != "team_a_payments-worker" ||
		n.table("idemq_dedupe") != "team_a_idemq_dedupe" {
		t.Fatalf("prefixed names: %s", n.describe())
	}
	want := `UPDATE team_a_accounts SET balance = balance - ? WHERE id = ?; SELECT * FROM team_a_transfers JOIN accounts_x`
	if got := n.tables(q); got != want {
		t.Fatalf("tables(%q) = %q, want %q", q, got, want)
	}
	if got := n.tables(`CREATE INDEX IF NOT EXISTS transfers_idempotency_key ON transfers (idempotency_key)`); got !=
		`CREATE INDEX IF NOT EXISTS team_a_transfers_idempotency_key ON team_a_transfers (idempotency_key)` {
		t.Fatalf("index: %q", got)
	}
	for _, bad := range []string{"a-b", "a.b", "_a", "1a", "a b", strings.Repeat("a", 33)} {
		if _, err := namesFor(bad); err == nil || !strings.Contains(err.Error(), "-prefix") {
			t.Errorf("namesFor(%q): %v, want an error naming -prefix", bad, err)
		}
	}
}
