package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// waitFor bounds how long a test waits for something that must happen; a
// safety net for failing tests, not a speed assertion.
const waitFor = 30 * time.Second

// t0 is the fixed clock of the tests.
var t0 = time.Date(2025, 10, 9, 10, 0, 0, 0, time.UTC)

// testApp returns an app writing into buffers, 200 columns wide, without a
// progress bar.
func testApp() (*app, *bytes.Buffer, *bytes.Buffer) {
	var out, errb bytes.Buffer
	return &app{stdout: &out, stderr: &errb, width: 200, now: func() time.Time { return t0 }}, &out, &errb
}

// runCLI runs the command line and returns the exit status and outputs.
func runCLI(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	a, out, errb := testApp()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	code := a.run(ctx, args)
	return code, out.String(), errb.String()
}

func TestUsage(t *testing.T) {
	tests := []struct {
		name string
		args []string
		code int
	}{
		{"no args", nil, exitUsage},
		{"unknown group", []string{"nope"}, exitUsage},
		{"group only", []string{"dlq"}, exitUsage},
		{"unknown command", []string{"dlq", "nope"}, exitUsage},
		{"unknown flag", []string{"dlq", "list", "-bogus"}, exitUsage},
		{"list extra arg", []string{"dlq", "list", "x"}, exitUsage},
		{"list bad reason", []string{"dlq", "list", "-reason", "late"}, exitUsage},
		{"list negative limit", []string{"dlq", "list", "-limit", "-1"}, exitUsage},
		{"show without seq", []string{"dlq", "show"}, exitUsage},
		{"show bad seq", []string{"dlq", "show", "abc"}, exitUsage},
		{"show zero seq", []string{"dlq", "show", "0"}, exitUsage},
		{"show two seqs", []string{"dlq", "show", "1", "2"}, exitUsage},
		{"replay no selection", []string{"dlq", "replay"}, exitUsage},
		{"replay reason only", []string{"dlq", "replay", "-reason", "permanent"}, exitUsage},
		{"replay seq and all", []string{"dlq", "replay", "-seq", "1", "-all"}, exitUsage},
		{"replay negative rate", []string{"dlq", "replay", "-all", "-rate", "-1"}, exitUsage},
		{"replay bad reason", []string{"dlq", "replay", "-all", "-reason", "x"}, exitUsage},
		{"purge no selection", []string{"dlq", "purge", "-yes"}, exitUsage},
		{"purge both", []string{"dlq", "purge", "-all", "-reason", "invalid", "-yes"}, exitUsage},
		{"outbox stats without db", []string{"outbox", "stats"}, exitUsage},
		{"outbox stats bad db", []string{"outbox", "stats", "-db", "mysql://x"}, exitUsage},
		{"outbox failed negative limit", []string{"outbox", "failed", "-db", "sqlite:x.db", "-limit", "-2"}, exitUsage},
		{"outbox retry no selection", []string{"outbox", "retry", "-db", "sqlite:x.db"}, exitUsage},
		{"outbox retry both", []string{"outbox", "retry", "-db", "sqlite:x.db", "-id", "a", "-all-failed"}, exitUsage},
		{"dedupe get no key", []string{"dedupe", "get", "-db", "sqlite:x.db"}, exitUsage},
		{"dedupe get two keys", []string{"dedupe", "get", "-db", "sqlite:x.db", "a", "b"}, exitUsage},
		{"dedupe get no db", []string{"dedupe", "get", "k"}, exitUsage},
		{"dedupe get two stores", []string{"dedupe", "get", "-db", "sqlite:x.db", "-redis", "redis://127.0.0.1:1", "k"}, exitUsage},
		{"dedupe get bad redis url", []string{"dedupe", "get", "-redis", "http://x", "k"}, exitUsage},
		{"dedupe list no store", []string{"dedupe", "list"}, exitUsage},
		{"dedupe list bad state", []string{"dedupe", "list", "-db", "sqlite:x.db", "-state", "gone"}, exitUsage},
		{"dedupe list namespace and prefix", []string{"dedupe", "list", "-db", "sqlite:x.db", "-namespace", "a", "-prefix", "b"}, exitUsage},
		{"dedupe list negative limit", []string{"dedupe", "list", "-db", "sqlite:x.db", "-limit", "-1"}, exitUsage},
		{"dedupe count extra arg", []string{"dedupe", "count", "-db", "sqlite:x.db", "x"}, exitUsage},
		{"help", []string{"help"}, exitOK},
		{"-h", []string{"-h"}, exitOK},
		{"group -h", []string{"outbox", "-h"}, exitOK},
		{"list -h", []string{"dlq", "list", "-h"}, exitOK},
		{"replay -h", []string{"dlq", "replay", "-h"}, exitOK},
		{"purge -h", []string{"dlq", "purge", "-h"}, exitOK},
		{"show -h", []string{"dlq", "show", "-h"}, exitOK},
		{"outbox stats -h", []string{"outbox", "stats", "-h"}, exitOK},
		{"outbox failed -h", []string{"outbox", "failed", "-h"}, exitOK},
		{"outbox retry -h", []string{"outbox", "retry", "-h"}, exitOK},
		{"dedupe get -h", []string{"dedupe", "get", "-h"}, exitOK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, tt.args...)
			if code != tt.code {
				t.Fatalf("exit %d, want %d\nstdout: %s\nstderr: %s", code, tt.code, out, errOut)
			}
			if tt.code == exitUsage && !strings.Contains(errOut, "usage") {
				t.Errorf("stderr has no usage text: %q", errOut)
			}
			if tt.code == exitOK && !strings.Contains(out, "usage") && !strings.Contains(out, "Usage") {
				t.Errorf("stdout has no usage text: %q", out)
			}
		})
	}
}

func TestUnreachableNATSIsAnError(t *testing.T) {
	code, _, errOut := runCLI(t, "dlq", "list", "-nats", "nats://127.0.0.1:1")
	if code != exitError {
		t.Fatalf("exit %d, want %d (stderr %q)", code, exitError, errOut)
	}
}

func TestCut(t *testing.T) {
	tests := []struct {
		in   string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exactly10!", 10, "exactly10!"},
		{"this is longer", 8, "this is…"},
		{"ünïcödé text", 5, "ünïc…"},
	}
	for _, tt := range tests {
		if got := cut(tt.in, tt.n); got != tt.want {
			t.Errorf("cut(%q, %d) = %q, want %q", tt.in, tt.n, got, tt.want)
		}
	}
}

func TestStringList(t *testing.T) {
	var l stringList
	_ = l.Set("a, b")
	_ = l.Set("c")
	_ = l.Set("")
	if got := l.String(); got != "a,b,c" {
		t.Fatalf("got %q", got)
	}
}
