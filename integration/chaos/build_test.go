package chaos

import (
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/idemq/idemq/integration/harness"
)

// paymentsPackage is the program the chaos and scale-out tests run as
// worker processes.
const paymentsPackage = "github.com/idemq/idemq/examples/payments"

// build is the payments binary, built once per test binary.
var build struct {
	once    sync.Once
	dir     string
	path    string
	missing string // why go could not be found
	err     error
}

// paymentsBinary builds examples/payments once (go build, without -race)
// into a temporary directory removed by TestMain, and returns its path.
// Without a go command the test is skipped, or fails under CI=true.
func paymentsBinary(t testing.TB) string {
	t.Helper()
	build.once.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			build.missing = "go command not found in PATH: " + err.Error()
			return
		}
		build.dir, build.err = os.MkdirTemp("", "idemq-chaos-")
		if build.err != nil {
			return
		}
		build.path = filepath.Join(build.dir, "payments")
		out, err := exec.Command(goBin, "build", "-o", build.path, paymentsPackage).CombinedOutput()
		if err != nil {
			build.err = &buildError{err: err, out: string(out)}
		}
	})
	if build.missing != "" {
		harness.Unavailable(t, "build %s: %s", paymentsPackage, build.missing)
	}
	if build.err != nil {
		t.Fatalf("build %s: %v", paymentsPackage, build.err)
	}
	return build.path
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

// removeBuild deletes the built binary's directory.
func removeBuild() {
	if build.dir != "" {
		_ = os.RemoveAll(build.dir)
	}
}
