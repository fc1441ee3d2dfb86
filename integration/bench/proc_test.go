package bench

import (
	"fmt"
	"time"

	"github.com/idemq/idemq/integration/harness"
)

// localProc is a server process on this machine, found by the TCP port it
// listens on, whose CPU time the side-by-side table reports.
type localProc struct {
	pid  int
	comm string // the process name, e.g. "nats-server"
	port int
}

func (p localProc) String() string {
	return fmt.Sprintf("%s (pid %d, port %d)", p.comm, p.pid, p.port)
}

// cpu is the process's CPU time so far (user + system, every thread,
// including exited ones), with /proc's resolution of 10ms.
func (p localProc) cpu() (time.Duration, error) { return procCPU(p.pid) }

// findLocalServer finds the process serving rawURL on this machine (see
// harness.FindLocalServer).
func findLocalServer(rawURL string, defPort int) (localProc, error) {
	p, err := harness.FindLocalServer(rawURL, defPort)
	if err != nil {
		return localProc{}, err
	}
	return localProc{pid: p.PID, comm: p.Comm, port: p.Port}, nil
}

// serverCPU is the CPU time of the servers of one fixture at one moment;
// -1 for a server not found or not readable.
type serverCPU struct {
	nats, redis time.Duration
}

// readCPU returns p's CPU time, -1 when p is nil or unreadable.
func readCPU(p *localProc) time.Duration {
	if p == nil {
		return -1
	}
	d, err := p.cpu()
	if err != nil {
		return -1
	}
	return d
}

// cpuDelta is b - a, -1 when either is unknown.
func cpuDelta(a, b time.Duration) time.Duration {
	if a < 0 || b < 0 {
		return -1
	}
	return b - a
}
