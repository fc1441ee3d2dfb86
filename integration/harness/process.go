package harness

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// ProcessStopTimeout bounds how long the harness waits for a server process
// it signalled to exit: 30s. A process still running after a graceful stop
// request and this long is killed with SIGKILL.
const ProcessStopTimeout = 30 * time.Second

// pollInterval is how often the cluster and server helpers re-check a
// condition they wait for: 100ms.
const pollInterval = 100 * time.Millisecond

// logTailBytes is how much of a server's log a failing test prints.
const logTailBytes = 4096

// process is a server the harness started as its own child. Its stdout and
// stderr go to a log file; the child gets SIGKILL if the test binary dies
// (Pdeathsig), so a crashed test does not leave servers behind.
type process struct {
	name string // human label, e.g. "nats-server n1"
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed once the process has exited and been reaped
	err  error         // exit status, valid after done is closed
}

// startProcess starts path with args as a child writing to logPath
// (appended to, so restarts keep the earlier output). dir is the working
// directory (empty: the current one). cred, when non-nil, runs the child as
// another OS user.
func startProcess(name, path string, args []string, dir, logPath string, cred *syscall.Credential) (*process, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("%s: open log: %w", name, err)
	}
	defer logFile.Close() // the child has its own descriptor
	if cred != nil {
		if err := os.Chown(logPath, int(cred.Uid), int(cred.Gid)); err != nil {
			return nil, fmt.Errorf("%s: chown log: %w", name, err)
		}
	}
	cmd := exec.Command(path, args...)
	cmd.Dir = dir
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Credential: cred}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%s: start %s: %w", name, path, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// pid is the child's process id.
func (p *process) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL and waits until the process is reaped.
func (p *process) kill() error {
	if p.exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s (pid %d): SIGKILL: %w", p.name, p.pid(), err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(ProcessStopTimeout):
		return fmt.Errorf("%s (pid %d) still running %s after SIGKILL", p.name, p.pid(), ProcessStopTimeout)
	}
}

// stop sends sig and waits up to ProcessStopTimeout for the process to
// exit, then kills it.
func (p *process) stop(sig syscall.Signal) error {
	if p.exited() {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("%s (pid %d): signal %v: %w", p.name, p.pid(), sig, err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(ProcessStopTimeout):
		err := p.kill()
		return errors.Join(fmt.Errorf("%s (pid %d) ignored %v for %s; killed", p.name, p.pid(), sig, ProcessStopTimeout), err)
	}
}

// exitError describes how a process that was expected to keep running
// ended, with the tail of its log.
func (p *process) exitError() error {
	return fmt.Errorf("%s (pid %d) exited: %v; log tail:\n%s", p.name, p.pid(), p.err, logTail(p.log))
}

// logTail returns the last logTailBytes of the file at path.
func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(no log: %v)", err)
	}
	if len(b) > logTailBytes {
		b = b[len(b)-logTailBytes:]
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			b = b[i+1:]
		}
	}
	return strings.TrimRight(string(b), "\n")
}

// freePorts returns n distinct TCP ports that were free on 127.0.0.1: it
// holds n listeners on port 0 at once, then closes them. Another process may
// still take a port before the server binds it; the server then fails to
// start and says so.
func freePorts(n int) ([]int, error) {
	ports := make([]int, 0, n)
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			_ = l.Close()
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// findBinary returns the first of candidates that is an executable file,
// or looks name up in PATH when none is. The error names every place
// looked at.
func findBinary(name string, candidates ...string) (string, error) {
	for _, c := range candidates {
		if fi, err := os.Stat(c); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return c, nil
		}
	}
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("%s not found at %s nor in PATH", name, strings.Join(candidates, ", "))
	}
	return p, nil
}
