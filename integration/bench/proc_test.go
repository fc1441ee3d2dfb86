package bench

import (
	"time"

	"github.com/idemq/idemq/integration/harness"
)

// serverCPU is the CPU time of the servers of one fixture at one moment;
// -1 for a server not found or not readable.
type serverCPU struct {
	nats, redis time.Duration
}

// readCPU returns p's CPU time, -1 when p is nil or unreadable.
func readCPU(p *harness.LocalServer) time.Duration {
	if p == nil {
		return -1
	}
	d, err := p.CPU()
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
