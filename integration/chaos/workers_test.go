package chaos

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// workerStopTimeout bounds a worker's graceful stop (SIGTERM) before it
// is killed.
const workerStopTimeout = 20 * time.Second

// workerReadyTimeout bounds how long a started worker may take to log that
// it is running (longer while a NATS node or Postgres is down).
const workerReadyTimeout = 90 * time.Second

// workerSet runs payments worker processes: started, SIGKILLed and
// restarted by the test, restarted by the set itself when one exits on
// its own. Every line they write goes to one log file, prefixed with the
// worker's name; their JSON log events are counted.
type workerSet struct {
	t     *testing.T
	bin   string
	args  []string
	start time.Time

	logMu sync.Mutex
	logf  *os.File

	evMu   sync.Mutex
	events map[string]int

	exitMu sync.Mutex
	exits  []workerExit // exits the test did not cause

	stopping atomic.Bool
	wg       sync.WaitGroup
	workers  []*worker
}

// workerExit is an exit of a worker that the test did not cause.
type workerExit struct {
	at    time.Duration // since the set started
	name  string
	ready bool // the incarnation had logged worker_ready
	err   string
	last  []string // its last log lines
}

// worker is one slot of a workerSet; each start is a new process.
type worker struct {
	set  *workerSet
	name string

	mu          sync.Mutex
	cmd         *exec.Cmd
	done        chan struct{} // closed when the current process has exited
	ready       chan struct{} // closed when it has logged worker_ready
	intentional bool          // the test is killing or stopping it
	starts      int
}

// newWorkerSet prepares n workers running bin with args; none is started.
// The log file is kept, and its path logged, when the test fails.
func newWorkerSet(t *testing.T, bin string, n int, args ...string) *workerSet {
	t.Helper()
	dir, err := os.MkdirTemp("", "idemq-chaos-logs-")
	if err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "workers.log"))
	if err != nil {
		t.Fatal(err)
	}
	s := &workerSet{t: t, bin: bin, args: args, start: time.Now(), logf: logf, events: map[string]int{}}
	for i := range n {
		s.workers = append(s.workers, &worker{set: s, name: fmt.Sprintf("worker-%d", i+1)})
	}
	t.Cleanup(func() {
		s.stop()
		_ = logf.Close()
		if t.Failed() {
			t.Logf("worker logs kept in %s", logf.Name())
			return
		}
		_ = os.RemoveAll(dir)
	})
	return s
}

// startAll starts every worker and waits until each is ready.
func (s *workerSet) startAll(ctx context.Context) error {
	for _, w := range s.workers {
		if err := w.start(); err != nil {
			return err
		}
	}
	for _, w := range s.workers {
		if err := w.waitReady(ctx); err != nil {
			return err
		}
	}
	return nil
}

// stop stops every worker gracefully (SIGTERM, then SIGKILL after
// workerStopTimeout) and waits for the set's goroutines.
func (s *workerSet) stop() {
	s.stopping.Store(true)
	var wg sync.WaitGroup
	for _, w := range s.workers {
		wg.Go(func() { w.signal(syscall.SIGTERM, workerStopTimeout) })
	}
	wg.Wait()
	s.wg.Wait()
}

// event counts a JSON log event.
func (s *workerSet) event(name string) {
	s.evMu.Lock()
	s.events[name]++
	s.evMu.Unlock()
}

// eventSummary renders the event counts, for the report.
func (s *workerSet) eventSummary() string {
	s.evMu.Lock()
	defer s.evMu.Unlock()
	names := make([]string, 0, len(s.events))
	for n := range s.events {
		names = append(names, n)
	}
	sort.Strings(names)
	parts := make([]string, 0, len(names))
	for _, n := range names {
		parts = append(parts, fmt.Sprintf("%s %d", n, s.events[n]))
	}
	return strings.Join(parts, ", ")
}

// unexpectedExits returns the exits the test did not cause.
func (s *workerSet) unexpectedExits() []workerExit {
	s.exitMu.Lock()
	defer s.exitMu.Unlock()
	return append([]workerExit(nil), s.exits...)
}

// pids returns the process ids of the running workers.
func (s *workerSet) pids() []int {
	var pids []int
	for _, w := range s.workers {
		if p := w.pid(); p != 0 {
			pids = append(pids, p)
		}
	}
	return pids
}

// start starts a new process for w; w must not be running.
func (w *worker) start() error {
	s := w.set
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cmd != nil {
		return fmt.Errorf("%s is running", w.name)
	}
	if s.stopping.Load() {
		return fmt.Errorf("%s: the workers are stopping", w.name)
	}
	ready, done := make(chan struct{}), make(chan struct{})
	out := &workerOutput{w: w, ready: ready}
	cmd := exec.Command(s.bin, s.args...)
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, and SIGKILL if the test binary dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", w.name, err)
	}
	w.cmd, w.ready, w.done, w.intentional = cmd, ready, done, false
	w.starts++
	s.wg.Go(func() {
		err := cmd.Wait()
		close(done)
		w.exited(cmd, out, err)
	})
	return nil
}

// exited records an exit the test did not cause and starts the worker
// again, as a supervisor would.
func (w *worker) exited(cmd *exec.Cmd, out *workerOutput, err error) {
	s := w.set
	w.mu.Lock()
	intentional := w.intentional
	if w.cmd == cmd {
		w.cmd = nil
	}
	w.mu.Unlock()
	if intentional || s.stopping.Load() {
		return
	}
	s.exitMu.Lock()
	s.exits = append(s.exits, workerExit{at: time.Since(s.start), name: w.name, ready: out.isReady(), err: fmt.Sprint(err), last: out.tail()})
	s.exitMu.Unlock()
	for !s.stopping.Load() {
		time.Sleep(500 * time.Millisecond)
		if s.stopping.Load() {
			return
		}
		if err := w.start(); err == nil {
			return
		}
	}
}

// kill SIGKILLs w's process and waits until it is gone; it returns the
// pid killed (0 when w was not running). The caller restarts it.
func (w *worker) kill() int {
	return w.signal(syscall.SIGKILL, 0)
}

// signal sends sig to w's process and waits for it to exit, for up to
// grace (0: as long as it takes) before SIGKILL.
func (w *worker) signal(sig syscall.Signal, grace time.Duration) int {
	w.mu.Lock()
	cmd, done := w.cmd, w.done
	if cmd == nil {
		w.mu.Unlock()
		return 0
	}
	w.intentional = true
	w.mu.Unlock()
	pid := cmd.Process.Pid
	if err := cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		w.set.t.Errorf("%s (pid %d): %v: %v", w.name, pid, sig, err)
	}
	if grace > 0 {
		select {
		case <-done:
			return pid
		case <-time.After(grace):
			w.set.t.Errorf("%s (pid %d) did not stop within %v of %v; killed", w.name, pid, grace, sig)
			_ = cmd.Process.Kill()
		}
	}
	<-done
	return pid
}

// waitReady waits until w's current process has logged worker_ready, up
// to workerReadyTimeout. A process that exits first is restarted by the
// set; waitReady then waits for the new one.
func (w *worker) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, workerReadyTimeout)
	defer cancel()
	for {
		w.mu.Lock()
		ready, done, running := w.ready, w.done, w.cmd != nil
		w.mu.Unlock()
		if running {
			select {
			case <-ready:
				return nil
			case <-done:
			case <-ctx.Done():
				return fmt.Errorf("%s not ready: %w", w.name, ctx.Err())
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not ready: %w", w.name, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// pid returns the running process's id, or 0.
func (w *worker) pid() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.cmd == nil {
		return 0
	}
	return w.cmd.Process.Pid
}

// workerOutput receives one process's stdout and stderr: it copies each
// line to the set's log, counts JSON events, closes ready at worker_ready
// and keeps the last lines for an exit report.
type workerOutput struct {
	w     *worker
	ready chan struct{}

	mu       sync.Mutex
	buf      []byte
	last     []string
	gotReady bool
}

func (o *workerOutput) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf = append(o.buf, b...)
	for {
		i := bytes.IndexByte(o.buf, '\n')
		if i < 0 {
			break
		}
		o.line(string(o.buf[:i]))
		o.buf = o.buf[i+1:]
	}
	return len(b), nil
}

// line handles one line; o.mu is held.
func (o *workerOutput) line(l string) {
	s := o.w.set
	s.logMu.Lock()
	fmt.Fprintf(s.logf, "%7.2fs %s: %s\n", time.Since(s.start).Seconds(), o.w.name, l)
	s.logMu.Unlock()
	var ev struct {
		Event string `json:"event"`
	}
	if json.Unmarshal([]byte(l), &ev) == nil && ev.Event != "" {
		s.event(ev.Event)
		if ev.Event == "worker_ready" && !o.gotReady {
			o.gotReady = true
			close(o.ready)
		}
	}
	if o.last = append(o.last, l); len(o.last) > 4 {
		o.last = o.last[1:]
	}
}

func (o *workerOutput) isReady() bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.gotReady
}

func (o *workerOutput) tail() []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(o.buf) > 0 {
		o.line(string(o.buf))
		o.buf = nil
	}
	return append([]string(nil), o.last...)
}
