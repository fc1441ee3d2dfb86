package bench

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
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

// errNotLocal reports a service URL whose host is not this machine.
var errNotLocal = errors.New("not on this machine")

// findLocalServer finds the process serving rawURL (the first URL of a
// comma-separated list; defPort when it names no port): its host must be
// this machine, and the process is the one holding the socket listening on
// the port. It fails on other systems than Linux, for a remote host, and
// when the listener belongs to no process this one may inspect (another
// user's without privilege, or a container's, whose port is forwarded).
func findLocalServer(rawURL string, defPort int) (localProc, error) {
	first, _, _ := strings.Cut(rawURL, ",")
	u, err := url.Parse(strings.TrimSpace(first))
	if err != nil {
		return localProc{}, err
	}
	host := u.Hostname()
	port := defPort
	if p := u.Port(); p != "" {
		if port, err = strconv.Atoi(p); err != nil {
			return localProc{}, fmt.Errorf("port %q: %w", p, err)
		}
	}
	if !isLocalHost(host) {
		return localProc{}, fmt.Errorf("%s: %w", host, errNotLocal)
	}
	pid, err := listenerPID(port)
	if err != nil {
		return localProc{}, err
	}
	return localProc{pid: pid, comm: procComm(pid), port: port}, nil
}

// isLocalHost reports whether host names this machine: a loopback or
// unspecified address, or one of its interfaces' addresses.
func isLocalHost(host string) bool {
	if host == "" || host == "localhost" {
		return true
	}
	ips := []net.IP{net.ParseIP(host)}
	if ips[0] == nil {
		addrs, err := net.LookupHost(host)
		if err != nil {
			return false
		}
		ips = ips[:0]
		for _, a := range addrs {
			ips = append(ips, net.ParseIP(a))
		}
	}
	ifaces, _ := net.InterfaceAddrs()
	for _, ip := range ips {
		if ip == nil {
			continue
		}
		if ip.IsLoopback() || ip.IsUnspecified() {
			return true
		}
		for _, a := range ifaces {
			if n, ok := a.(*net.IPNet); ok && n.IP.Equal(ip) {
				return true
			}
		}
	}
	return false
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
