package chaos

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// clockTick is the unit of the CPU times in /proc/<pid>/stat: USER_HZ,
// 100 per second on Linux whatever the kernel's HZ.
const clockTick = 10 * time.Millisecond

// procStat is the CPU time of one process from /proc/<pid>/stat.
type procStat struct {
	ppid     int
	self     time.Duration // utime + stime
	children time.Duration // cutime + cstime: children it has waited for
}

// readProcStat reads /proc/<pid>/stat.
func readProcStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	// The command name (field 2) is in parentheses and may hold spaces;
	// the fields after it start with the state (field 3).
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	num := func(k int) int64 { v, _ := strconv.ParseInt(f[k], 10, 64); return v }
	return procStat{
		ppid:     int(num(1)),
		self:     time.Duration(num(11)+num(12)) * clockTick,
		children: time.Duration(num(13)+num(14)) * clockTick,
	}, nil
}

// processCPU returns the CPU time pids have used (0 for a pid that is
// gone).
func processCPU(pids ...int) time.Duration {
	var d time.Duration
	for _, p := range pids {
		if st, err := readProcStat(p); err == nil {
			d += st.self
		}
	}
	return d
}

// treeCPU returns the CPU time of pid, of its live children, and of the
// children it has reaped: for the postmaster, all of Postgres, backends
// that have exited included.
func treeCPU(pid int) time.Duration {
	root, err := readProcStat(pid)
	if err != nil {
		return 0
	}
	d := root.self + root.children
	dirs, _ := filepath.Glob("/proc/[0-9]*")
	for _, dir := range dirs {
		child, err := strconv.Atoi(filepath.Base(dir))
		if err != nil || child == pid {
			continue
		}
		if st, err := readProcStat(child); err == nil && st.ppid == pid {
			d += st.self
		}
	}
	return d
}

// machineBusy returns the CPU time all processors spent busy since boot
// (the first line of /proc/stat: everything but idle and iowait), or 0.
func machineBusy() time.Duration {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range f[1:] {
		n, _ := strconv.ParseInt(v, 10, 64)
		if i != 3 && i != 4 { // idle, iowait
			busy += n
		}
	}
	return time.Duration(busy) * clockTick
}
