package main

import (
	"os"
	"testing"

	"go.uber.org/goleak"
)

// TestMain runs the payments command instead of the tests when the demo
// re-executes this test binary as a worker or api subprocess (the demo marks
// its children with IDEMQ_PAYMENTS_SUBPROCESS=1), and otherwise runs the
// tests under goleak.
func TestMain(m *testing.M) {
	if os.Getenv(envSubprocess) == "1" {
		os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
	}
	goleak.VerifyTestMain(m)
}
