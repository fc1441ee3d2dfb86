package outage_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/idemq/idemq/integration/harness"
)

// freePort returns a loopback TCP port that was free a moment ago.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// proc is a server process the test started and may kill and restart
// with the same arguments.
type proc struct {
	t    *testing.T
	name string
	args []string
	addr string
	cmd  *exec.Cmd
}

// startProc starts bin with args and waits until addr accepts TCP
// connections. The process is killed at cleanup.
func startProc(t *testing.T, bin, addr string, args ...string) *proc {
	t.Helper()
	path, err := exec.LookPath(bin)
	if err != nil {
		harness.Unavailable(t, "%s not installed: %v", bin, err)
	}
	p := &proc{t: t, name: path, args: args, addr: addr}
	p.start()
	t.Cleanup(p.kill)
	return p
}

func (p *proc) start() {
	p.t.Helper()
	p.cmd = exec.Command(p.name, p.args...)
	p.cmd.Stdout, p.cmd.Stderr = nil, nil
	if err := p.cmd.Start(); err != nil {
		p.t.Fatalf("start %s: %v", p.name, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", p.addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s did not listen on %s: %v", p.name, p.addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// kill SIGKILLs the process (if running) and reaps it.
func (p *proc) kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	_ = p.cmd.Wait()
	p.cmd = nil
}

// startRedis starts a redis-server that persists every write (AOF,
// appendfsync always) in a temporary directory.
func startRedis(t *testing.T) *proc {
	port := freePort(t)
	return startProc(t, "redis-server", fmt.Sprintf("127.0.0.1:%d", port),
		"--port", strconv.Itoa(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
		"--appendfsync", "always", "--dir", t.TempDir(), "--daemonize", "no", "--logfile", "")
}

// startNATS starts a nats-server with JetStream (the machine's binary) in
// a temporary store directory.
func startNATS(t *testing.T) *proc {
	port := freePort(t)
	dir := t.TempDir()
	return startProc(t, "nats-server", fmt.Sprintf("127.0.0.1:%d", port),
		"-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", dir)
}

// scaled returns d, or a short stand-in with -short.
func scaled(d, short time.Duration) time.Duration {
	if testing.Short() {
		return short
	}
	return d
}

// sleepCtx sleeps d or until ctx ends.
func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

func TestMain(m *testing.M) { os.Exit(m.Run()) }
