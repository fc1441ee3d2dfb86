package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// Exit statuses.
const (
	exitOK    = 0 // the command did what was asked
	exitError = 1 // it failed (connection, server, not found, refused work)
	exitUsage = 2 // the command line is wrong
)

// Defaults shared by the subcommands.
const (
	defaultNATSURL   = "nats://127.0.0.1:4222"
	defaultDLQStream = "DLQ"
	defaultRate      = 50.0 // messages per second
)

const usageText = `idemq — operator tool for idemq dead letters, outbox and dedupe records.

Usage:
  idemq dlq list    [-nats URL] [-stream DLQ] [-subject S] [-reason R] [-limit N] [-json]
  idemq dlq show    [-nats URL] [-stream DLQ] SEQ
  idemq dlq replay  [-nats URL] [-stream DLQ] [-reason R] (-seq N | -all) [-rate 50] [-dry-run] [-delete] [-keep-msg-id]
  idemq dlq purge   [-nats URL] [-stream DLQ] (-reason R | -all) -yes
  idemq outbox stats  -db URL [-table idemq_outbox]
  idemq outbox failed -db URL [-table idemq_outbox] [-limit N]
  idemq outbox retry  -db URL [-table idemq_outbox] (-id ID ... | -all-failed)
  idemq dedupe get    STORE [-namespace NS] [-max-key-len 200] [-json] KEY
  idemq dedupe list   STORE [-namespace NS | -prefix P] [-state S] [-limit 50] [-json]
  idemq dedupe count  STORE [-namespace NS | -prefix P] [-state S] [-json]
  idemq console -nats URL [-stream DLQ ...] [-db URL] [-addr 127.0.0.1:8089] [-token T | -basic-auth U:P] [-show-bodies]

The dlq commands take -nats URL (default nats://127.0.0.1:4222) and -stream
NAME (default DLQ). -db is postgres://… or sqlite:PATH. STORE is one of
-db URL [-table idemq_dedupe], -redis URL [-redis-prefix idemq:] or
-nats URL [-bucket idemq_dedupe]. A Guard with a Namespace stores keys as
NS:KEY: give dedupe get the same -namespace. Run "idemq <group> <command> -h"
for details. Exit status: 0 ok, 1 error, 2 usage.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := newApp(os.Stdout, os.Stderr).run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

// app holds what every command writes to and the facts about the terminal;
// tests build one around buffers.
type app struct {
	stdout, stderr io.Writer
	// width is the output width list truncates errors to, in columns.
	width int
	// progress makes replay draw a progress bar on stderr instead of
	// printing one summary line.
	progress bool
	// now is the clock for ages and remaining leases.
	now func() time.Time
}

// newApp returns an app writing to stdout and stderr, sized to the terminal
// when they are one.
func newApp(stdout, stderr io.Writer) *app {
	return &app{
		stdout:   stdout,
		stderr:   stderr,
		width:    outputWidth(stdout),
		progress: isTerminal(stderr),
		now:      time.Now,
	}
}

// errUsage marks a command-line error; the message has been printed.
var errUsage = errors.New("usage error")

// usageErrorf prints a usage error for fs and returns errUsage.
func usageErrorf(fs *flag.FlagSet, format string, args ...any) error {
	fmt.Fprintf(fs.Output(), "%s: %s\n", fs.Name(), fmt.Sprintf(format, args...))
	fs.Usage()
	return errUsage
}

// command is one leaf of the command tree.
type command struct {
	name string
	run  func(a *app, ctx context.Context, args []string) error
}

// groups is the command tree: group → commands.
func groups() map[string][]command {
	return map[string][]command{
		"dlq": {
			{"list", (*app).dlqList},
			{"show", (*app).dlqShow},
			{"replay", (*app).dlqReplay},
			{"purge", (*app).dlqPurge},
		},
		"outbox": {
			{"stats", (*app).outboxStats},
			{"failed", (*app).outboxFailed},
			{"retry", (*app).outboxRetry},
		},
		"dedupe": {
			{"get", (*app).dedupeGet},
			{"list", (*app).dedupeList},
			{"count", (*app).dedupeCount},
		},
	}
}

// run executes args (without the program name) and returns the exit status.
func (a *app) run(ctx context.Context, args []string) int {
	if len(args) == 0 {
		fmt.Fprint(a.stderr, usageText)
		return exitUsage
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		fmt.Fprint(a.stdout, usageText)
		return exitOK
	}
	if args[0] == "console" {
		return a.exit("console", a.console(ctx, args[1:]))
	}
	cmds, ok := groups()[args[0]]
	if !ok {
		fmt.Fprintf(a.stderr, "idemq: unknown command %q\n\n%s", args[0], usageText)
		return exitUsage
	}
	var names []string
	for _, c := range cmds {
		names = append(names, c.name)
	}
	if len(args) < 2 || args[1] == "-h" || args[1] == "-help" || args[1] == "--help" || args[1] == "help" {
		w, code := a.stderr, exitUsage
		if len(args) >= 2 {
			w, code = a.stdout, exitOK
		}
		fmt.Fprintf(w, "usage: idemq %s <%s> [flags]\n\n%s", args[0], strings.Join(names, "|"), usageText)
		return code
	}
	for _, c := range cmds {
		if c.name != args[1] {
			continue
		}
		return a.exit(args[0]+" "+args[1], c.run(a, ctx, args[2:]))
	}
	fmt.Fprintf(a.stderr, "idemq %s: unknown command %q\n\nusage: idemq %s <%s> [flags]\n", args[0], args[1], args[0], strings.Join(names, "|"))
	return exitUsage
}

// exit reports err of the command name and returns the exit status.
func (a *app) exit(name string, err error) int {
	switch {
	case err == nil:
		return exitOK
	case errors.Is(err, flag.ErrHelp):
		return exitOK
	case errors.Is(err, errUsage):
		return exitUsage
	}
	fmt.Fprintf(a.stderr, "idemq %s: %v\n", name, err)
	return exitError
}

// flagSet returns a flag set for "idemq group cmd" that prints its usage,
// synopsis first, to the app's stderr (stdout for -h).
func (a *app) flagSet(name, synopsis, about string) *flag.FlagSet {
	fs := flag.NewFlagSet("idemq "+name, flag.ContinueOnError)
	fs.SetOutput(a.stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: idemq %s %s\n\n%s\n\nFlags:\n", name, synopsis, about)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses args with fs, allowing flags after positional arguments
// ("show 42 -stream X"). It returns the positional arguments, errUsage on a
// bad flag (already reported) and flag.ErrHelp for -h (usage printed to
// stdout).
func (a *app) parse(fs *flag.FlagSet, args []string) ([]string, error) {
	for _, arg := range args {
		if arg == "-h" || arg == "-help" || arg == "--help" {
			fs.SetOutput(a.stdout)
			fs.Usage()
			return nil, flag.ErrHelp
		}
	}
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, errUsage
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
