package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const usageText = `payments — the idemq flagship example.

Usage:
  payments [demo flags]                           run the self-contained demo (default)
  payments worker -nats URL -db URL [-concurrency N] [-metrics ADDR]
  payments api -addr :8080 -nats URL -db URL [-metrics ADDR]

With no arguments the demo starts an embedded NATS server and a SQLite
database in a temporary directory, runs an API and two workers as
subprocesses, sends a few thousand payments through a client that loses
responses and retries, kills the workers (and once the API) with SIGKILL,
and checks that no money was lost or doubled.

-db accepts postgres://… and sqlite:PATH; -metrics ADDR serves Prometheus
metrics at http://ADDR/metrics. Run "payments <command> -h" for the
flags of a command.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run executes the command line args and returns the process exit status:
// 0 on success, 1 on a failure (for the demo: an invariant did not hold),
// 2 on a usage error.
func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	cmd := "demo"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "demo":
		err = demoCommand(ctx, args, stdout, stderr)
	case "worker":
		err = workerCommand(ctx, args, stderr)
	case "api":
		err = apiCommand(ctx, args, stderr)
	case "help":
		fmt.Fprint(stdout, usageText)
		return 0
	default:
		fmt.Fprintf(stderr, "payments: unknown command %q\n\n%s", cmd, usageText)
		return 2
	}
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	case errors.Is(err, errInvariants):
		return 1
	}
	fmt.Fprintf(stderr, "payments %s: %v\n", cmd, err)
	return 1
}

// errUsage reports a bad command line; the flag package has already printed
// the reason and the usage.
var errUsage = errors.New("usage error")

// parseFlags parses args with fs, turning flag errors into errUsage (and -h
// into flag.ErrHelp) and refusing positional arguments.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "unexpected argument %q\n", fs.Arg(0))
		fs.Usage()
		return errUsage
	}
	return nil
}

// defaultNATSURL is the -nats default of the worker and api commands.
const defaultNATSURL = "nats://127.0.0.1:4222"

// shutdownTimeout bounds a graceful stop on SIGTERM or SIGINT.
const shutdownTimeout = 10 * time.Second
