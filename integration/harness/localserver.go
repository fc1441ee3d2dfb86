package harness

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// LocalServer is a server process on this machine, found by the TCP port it
// listens on: the benchmarks report its CPU time per message beside the
// client's (on a 2-core machine the broker, the store and the consumer
// share the CPU).
type LocalServer struct {
	// PID is the process's id.
	PID int
	// Comm is the process's name (/proc/<pid>/comm), e.g. "nats-server".
	Comm string
	// Port is the TCP port it was found listening on.
	Port int
}

// String returns "comm (pid N, port P)".
func (p LocalServer) String() string {
	return fmt.Sprintf("%s (pid %d, port %d)", p.Comm, p.PID, p.Port)
}

// CPU returns the process's CPU time so far (user + system, every thread,
// exited ones included), with /proc's resolution of 10 ms.
func (p LocalServer) CPU() (time.Duration, error) { return ProcCPU(p.PID) }

// ErrNotLocal reports a service URL whose host is not this machine.
var ErrNotLocal = errors.New("not on this machine")

// FindLocalServer finds the process serving rawURL (the first URL of a
// comma-separated list; defPort when it names no port): its host must be
// this machine, and the process is the one holding the socket listening on
// the port. It fails on other systems than Linux, for a remote host
// (ErrNotLocal), and when the listener belongs to no process this one may
// inspect (another user's without privilege, or a container's, whose port
// is forwarded).
func FindLocalServer(rawURL string, defPort int) (LocalServer, error) {
	first, _, _ := strings.Cut(rawURL, ",")
	u, err := url.Parse(strings.TrimSpace(first))
	if err != nil {
		return LocalServer{}, err
	}
	host := u.Hostname()
	port := defPort
	if p := u.Port(); p != "" {
		if port, err = strconv.Atoi(p); err != nil {
			return LocalServer{}, fmt.Errorf("port %q: %w", p, err)
		}
	}
	if !isLocalHost(host) {
		return LocalServer{}, fmt.Errorf("%s: %w", host, ErrNotLocal)
	}
	pid, err := listenerPID(port)
	if err != nil {
		return LocalServer{}, err
	}
	return LocalServer{PID: pid, Comm: procComm(pid), Port: port}, nil
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
