package harness

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// NodePID returns the process id of node i of a cluster started with
// StartNATSCluster, or 0 when the node is not running or runs in process
// (StartEmbeddedNATSCluster). Tests use it to read a node's CPU time from
// /proc/<pid>/stat, or to name the process they killed.
func (c *NATSCluster) NodePID(i int) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[i]
	if n.proc == nil || n.proc.exited() {
		return 0
	}
	return n.proc.pid()
}

// PID returns the process id of the postmaster, or 0 when the server is
// stopped. The server's backends are its children.
func (p *PostgresServer) PID() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil || p.proc.exited() {
		return 0
	}
	return p.proc.pid()
}

// userHZ is the unit of utime and stime in /proc/<pid>/stat (USER_HZ, 100
// on Linux whatever the kernel's HZ).
const userHZ = 100

// ProcCPU returns utime + stime of /proc/<pid>/stat: the CPU time of every
// thread of the process, exited ones included, at 10 ms resolution. It
// fails where there is no /proc (not Linux) or the process is gone.
func ProcCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	// pid (comm) state ppid ...: comm may hold spaces and parentheses, so
	// fields are counted from the last ')'; utime and stime are fields 14
	// and 15.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no ')'", pid)
	}
	fs := strings.Fields(string(data[i+1:]))
	if len(fs) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields after comm", pid, len(fs))
	}
	ut, err1 := strconv.ParseUint(fs[11], 10, 64)
	st, err2 := strconv.ParseUint(fs[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: utime %q, stime %q", pid, fs[11], fs[12])
	}
	return time.Duration(ut+st) * (time.Second / userHZ), nil
}
