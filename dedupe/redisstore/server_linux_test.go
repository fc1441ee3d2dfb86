//go:build linux

package redisstore_test

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemq/idemq/integration/harness"
)

// redisServer is a redis-server process a test started on a free loopback
// port, persistence off, killed (SIGKILL) at the test's cleanup. Tests
// that need a server of their own (a replica to stop, a CPU count nobody
// else adds to) use it instead of the shared one.
type redisServer struct {
	Addr string
	cmd  *exec.Cmd
	log  string
}

// startRedisServer starts redis-server with extra arguments appended to
// the defaults and waits until it answers PING. It skips the test (fails
// it under CI=true) when redis-server is not installed.
func startRedisServer(t testing.TB, extra ...string) *redisServer {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		harness.Unavailable(t, "redis-server not found in PATH: %v", err)
		return nil
	}
	dir := t.TempDir()
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			t.Fatal(err)
		}
		s := &redisServer{Addr: "127.0.0.1:" + strconv.Itoa(port), log: filepath.Join(dir, fmt.Sprintf("redis-%d.log", port))}
		args := append([]string{
			"--port", strconv.Itoa(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--dir", dir,
			"--daemonize", "no", "--logfile", s.log,
			// A replica's full sync starts at once.
			"--repl-diskless-sync-delay", "0",
		}, extra...)
		s.cmd = exec.Command(bin, args...)
		s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := s.cmd.Start(); err != nil {
			t.Fatalf("start redis-server: %v", err)
		}
		t.Cleanup(func() {
			_ = s.cmd.Process.Kill()
			_ = s.cmd.Wait()
			if t.Failed() {
				b, _ := os.ReadFile(s.log)
				t.Logf("log of redis-server %s:\n%s", s.Addr, tail(b, 2048))
			}
		})
		if err := s.waitPing(); err == nil {
			return s
		} else if attempt == 2 {
			t.Fatalf("redis-server %s: %v", s.Addr, err)
		}
		// The port was taken between freePort and the server's bind: try
		// another.
		_ = s.cmd.Process.Kill()
	}
}

// waitPing waits up to 10s until the server answers PING.
func (s *redisServer) waitPing() error {
	c := s.client(nil)
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// client returns a client of the server (opts may be nil); the caller
// closes it.
func (s *redisServer) client(opts *redis.Options) *redis.Client {
	o := redis.Options{}
	if opts != nil {
		o = *opts
	}
	o.Addr = s.Addr
	return redis.NewClient(&o)
}

// Pid is the server's process id.
func (s *redisServer) Pid() int { return s.cmd.Process.Pid }

// signal sends sig to the server process.
func (s *redisServer) signal(sig syscall.Signal) error { return s.cmd.Process.Signal(sig) }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// procCPU is harness.ProcCPU.
func procCPU(pid int) (time.Duration, error) { return harness.ProcCPU(pid) }

// selfCPU is the user plus system CPU time of this process, every thread.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
