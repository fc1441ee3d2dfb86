package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"
)

// envSubprocess marks a process started by the demo. main does not need it,
// but a test binary's TestMain uses it to run the payments command instead of
// the tests when the demo re-executes it.
const envSubprocess = "IDEMQ_PAYMENTS_SUBPROCESS"

// proc is a worker or api subprocess of the demo: the demo's own executable
// re-executed with a subcommand. Its JSON log lines are counted by event.
type proc struct {
	name   string
	exe    string
	args   []string
	events *eventCounter
	logw   io.Writer // every log line is copied here (a file in the demo's directory)

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
	started int
	last    []string // the last lines the process wrote to stderr, for errors
}

// lastLines is how many of its stderr lines a proc keeps for lastWords.
const lastLines = 5

// lastWords returns the last lines the process wrote to stderr, joined, or
// "" when it wrote none.
func (p *proc) lastWords() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.last, "\n  ")
}

// start runs the process. It is an error to start a running process.
func (p *proc) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd != nil {
		return fmt.Errorf("%s is already running", p.name)
	}
	cmd := exec.Command(p.exe, p.args...)
	cmd.Env = append(os.Environ(), envSubprocess+"=1")
	cmd.Stdout = p.logw
	cmd.Stderr = &lineWriter{fn: p.line}
	cmd.SysProcAttr = childAttr()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait() // the exit status of a killed process is expected
		close(exited)
	}()
	p.cmd, p.exited = cmd, exited
	p.started++
	p.last = nil
	return nil
}

// line receives each line the process writes to stderr.
func (p *proc) line(b []byte) {
	var ev struct {
		Msg   string `json:"msg"`
		Event string `json:"event"`
	}
	if json.Unmarshal(b, &ev) == nil && ev.Event != "" {
		p.events.add(ev.Event)
	}
	_, _ = fmt.Fprintf(p.logw, "%s: %s\n", p.name, b)
	p.mu.Lock()
	p.last = append(p.last, string(b))
	if len(p.last) > lastLines {
		p.last = p.last[len(p.last)-lastLines:]
	}
	p.mu.Unlock()
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() error {
	return p.signal(syscall.SIGKILL, 0)
}

// stop sends SIGTERM and waits up to grace for a clean exit, then SIGKILL.
func (p *proc) stop(grace time.Duration) error {
	return p.signal(syscall.SIGTERM, grace)
}

func (p *proc) signal(sig syscall.Signal, grace time.Duration) error {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.cmd = nil
	p.mu.Unlock()
	if cmd == nil {
		return nil
	}
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("signal %s: %w", p.name, err)
	}
	if grace > 0 {
		select {
		case <-exited:
			return nil
		case <-time.After(grace):
			_ = cmd.Process.Kill()
		}
	}
	<-exited
	return nil
}

// running reports whether the process was started and has not exited.
func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// lineWriter calls fn with every complete line written to it.
type lineWriter struct {
	mu  sync.Mutex
	buf []byte
	fn  func([]byte)
}

func (w *lineWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.fn(w.buf[:i])
		w.buf = w.buf[i+1:]
	}
	return len(b), nil
}

// eventCounter counts named events reported by the subprocesses.
type eventCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func newEventCounter() *eventCounter { return &eventCounter{n: map[string]int{}} }

func (c *eventCounter) add(ev string) {
	c.mu.Lock()
	c.n[ev]++
	c.mu.Unlock()
}

func (c *eventCounter) get(ev string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[ev]
}
