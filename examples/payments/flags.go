package main

import (
	"flag"
	"fmt"
	"math"
	"time"
)

// Flag checks. Each returns nil when the flag's value is acceptable, or an
// error that starts with the flag's name and says what it accepts, so that
// the first wrong flag is named alone before anything starts.

// firstError returns the first non-nil error: commands check their flags in
// the order they are listed and report the first that is wrong.
func firstError(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

func required(name, v string) error {
	if v == "" {
		return fmt.Errorf("%s is required", name)
	}
	return nil
}

// checkFlag prefixes err with the flag's name (nil stays nil).
func checkFlag(name string, err error) error {
	if err == nil {
		return nil
	}
	return fmt.Errorf("%s: %w", name, err)
}

func atLeast(name string, v, least int) error {
	if v < least {
		return fmt.Errorf("%s must be at least %d, got %d", name, least, v)
	}
	return nil
}

func positive(name string, d time.Duration) error {
	if d <= 0 {
		return fmt.Errorf("%s must be a positive duration, got %v", name, d)
	}
	return nil
}

func within(name string, v, lo, hi float64) error {
	if math.IsNaN(v) || v < lo || v > hi {
		return fmt.Errorf("%s must be within %g-%g, got %g", name, lo, hi, v)
	}
	return nil
}

// checkLogFormat validates -log-format.
func checkLogFormat(f string) error {
	if f != "text" && f != "json" {
		return fmt.Errorf("must be text or json, got %q", f)
	}
	return nil
}

// usageError prints err for the command and where to find its flags, and
// returns errUsage (exit status 2).
func usageError(fs *flag.FlagSet, cmd string, err error) error {
	fmt.Fprintf(fs.Output(), "%s: %v\n(run \"%s -h\" for every flag)\n", cmd, err, cmd)
	return errUsage
}

// checkNATSURL validates the demo's -nats: empty (embedded server) or a
// nats:// (tls://, ws://, wss://) URL.
func checkNATSURL(raw string) error {
	if raw == "" {
		return nil
	}
	for _, scheme := range []string{"nats://", "tls://", "ws://", "wss://"} {
		if len(raw) > len(scheme) && raw[:len(scheme)] == scheme {
			return nil
		}
	}
	return fmt.Errorf("-nats must be a nats://HOST:PORT URL, or empty for an embedded server; got %q", raw)
}

// demoDBURL validates the demo's -db: empty (SQLite in a temporary
// directory) or what checkDBURL accepts.
func demoDBURL(raw string) error {
	if raw == "" {
		return nil
	}
	return checkFlag("-db", checkDBURL(raw))
}

// prefixError is namesFor's error, without the flag name it adds.
func prefixError(prefix string) error {
	if prefix != "" && !prefixRE.MatchString(prefix) {
		return fmt.Errorf("want a letter followed by at most 31 letters, digits or underscores (it goes into stream, subject and table names), got %q", prefix)
	}
	return nil
}
