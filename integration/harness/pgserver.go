package harness

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// PostgresBinGlob is where StartPostgres looks for initdb, postgres and
// pg_ctl: the Debian packages' directories, the highest version first; it
// then tries PATH.
const PostgresBinGlob = "/usr/lib/postgresql/*/bin"

// postgresBinGlob is PostgresBinGlob; tests replace it.
var postgresBinGlob = PostgresBinGlob

// PostgresOSUser is the OS user StartPostgres runs initdb, postgres and
// pg_ctl as when the test runs as root (initdb refuses to run as root):
// "postgres". As any other user they run as that user.
const PostgresOSUser = "postgres"

// PostgresReadyTimeout bounds how long StartPostgres and
// PostgresServer.Start wait for the server to accept connections, and
// StartPostgres for initdb: 60s.
const PostgresReadyTimeout = 60 * time.Second

// Shutdown modes of PostgresServer.Stop, as pg_ctl stop -m takes them.
const (
	// PostgresSmart waits for every client to disconnect.
	PostgresSmart = "smart"
	// PostgresFast disconnects clients, rolls back their transactions and
	// shuts down cleanly.
	PostgresFast = "fast"
	// PostgresImmediate aborts every process at once, like a crash: the
	// next start runs crash recovery.
	PostgresImmediate = "immediate"
)

// PostgresServer is a Postgres server of its own for a test that stops,
// crashes and restarts it — never the machine's shared server. Its data
// directory is created with initdb (trust authentication, superuser
// "postgres", UTF8, C locale) under t.TempDir(); it listens on 127.0.0.1
// on a free port and puts its unix socket in its own directory. fsync is
// off: the data survives a crash of the server (Stop(PostgresImmediate), or
// SIGKILL) but not of the machine, which tests do not need.
//
// The postmaster is a child of the test process (it gets SIGKILL if the
// test binary dies). Cleanup stops it with an immediate shutdown (pg_ctl
// stop -m immediate; if pg_ctl fails, SIGQUIT to its pid), SIGKILL if that
// does not end it within ProcessStopTimeout, and logs the server log's tail when the test
// failed. Methods are safe for concurrent use and return errors instead of
// failing the test.
type PostgresServer struct {
	// URL connects to the "postgres" database as the superuser:
	// postgres://postgres@127.0.0.1:PORT/postgres?sslmode=disable. It stays
	// valid across Stop and Start.
	URL string
	// Port is the TCP port on 127.0.0.1.
	Port int
	// DataDir is the data directory (PGDATA).
	DataDir string
	// SocketDir holds the unix socket .s.PGSQL.<Port>.
	SocketDir string

	bin     string
	cred    *syscall.Credential // nil: run as the current user
	logPath string

	mu   sync.Mutex
	proc *process // nil when stopped
}

// StartPostgres runs initdb in a fresh directory and starts postgres on
// it, waiting up to PostgresReadyTimeout until it accepts connections.
// When the Postgres binaries or, under root, the PostgresOSUser user are
// missing, the test is skipped (fails under CI=true) saying so.
func StartPostgres(t testing.TB) *PostgresServer {
	t.Helper()
	bin, err := postgresBinDir()
	if err != nil {
		Unavailable(t, "postgres server: %v", err)
		return nil
	}
	var cred *syscall.Credential
	if os.Geteuid() == 0 {
		u, err := user.Lookup(PostgresOSUser)
		if err != nil {
			Unavailable(t, "postgres server: initdb refuses to run as root and there is no %q user to run it as: %v", PostgresOSUser, err)
			return nil
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}
	}
	ports, err := freePorts(1)
	if err != nil {
		t.Fatalf("harness: postgres server: %v", err)
	}
	root := t.TempDir()
	p := &PostgresServer{
		URL:       fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", ports[0]),
		Port:      ports[0],
		DataDir:   filepath.Join(root, "data"),
		SocketDir: filepath.Join(root, "socket"),
		bin:       bin,
		cred:      cred,
		logPath:   filepath.Join(root, "postgres.log"),
	}
	if cred != nil {
		// t.TempDir's parent is private to root (0700): let the postgres
		// user reach root, which it then owns.
		if err := os.Chmod(filepath.Dir(root), 0o711); err != nil {
			t.Fatalf("harness: postgres server: %v", err)
		}
		if err := os.Chown(root, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatalf("harness: postgres server: %v", err)
		}
	}
	if err := p.run(root, "initdb", "-D", p.DataDir, "-U", "postgres", "-A", "trust",
		"-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		t.Fatalf("harness: postgres server: %v", err)
	}
	if err := os.Mkdir(p.SocketDir, 0o700); err != nil {
		t.Fatalf("harness: postgres server: %v", err)
	}
	if cred != nil {
		if err := os.Chown(p.SocketDir, int(cred.Uid), int(cred.Gid)); err != nil {
			t.Fatalf("harness: postgres server: %v", err)
		}
	}
	t.Cleanup(func() {
		if err := p.Stop(PostgresImmediate); err != nil {
			t.Errorf("harness: postgres server cleanup: %v", err)
		}
		if t.Failed() {
			t.Logf("harness: log of postgres on port %d (%s):\n%s", p.Port, p.logPath, logTail(p.logPath))
		}
	})
	if err := p.Start(context.Background()); err != nil {
		t.Fatalf("harness: postgres server: %v", err)
	}
	return p
}

// postgresBinDir returns the directory holding initdb, postgres and pg_ctl.
func postgresBinDir() (string, error) {
	dirs, _ := filepath.Glob(postgresBinGlob)
	// Highest major version first: "/usr/lib/postgresql/16/bin" > ".../15/bin".
	sort.Slice(dirs, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[i])))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(dirs[j])))
		return vi > vj
	})
	var candidates []string
	for _, d := range dirs {
		candidates = append(candidates, filepath.Join(d, "initdb"))
	}
	initdb, err := findBinary("initdb", candidates...)
	if err != nil {
		return "", err
	}
	dir := filepath.Dir(initdb)
	for _, b := range []string{"postgres", "pg_ctl"} {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return "", fmt.Errorf("%s has initdb but no %s: %w", dir, b, err)
		}
	}
	return dir, nil
}

// run runs a Postgres tool to completion as the Postgres OS user, in dir,
// bounded by PostgresReadyTimeout.
func (p *PostgresServer) run(dir, tool string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), PostgresReadyTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(p.bin, tool), args...)
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %v: %w\n%s", tool, args, err, out)
	}
	return nil
}

// Running reports whether the postmaster is up.
func (p *PostgresServer) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.proc != nil && !p.proc.exited()
}

// Start starts the postmaster on the existing data directory (after Stop)
// and waits until it accepts connections on URL, up to
// PostgresReadyTimeout or ctx, whichever ends first. After an immediate
// stop this includes crash recovery.
func (p *PostgresServer) Start(ctx context.Context) error {
	p.mu.Lock()
	if p.proc != nil && !p.proc.exited() {
		p.mu.Unlock()
		return fmt.Errorf("postgres on port %d is already running", p.Port)
	}
	args := []string{
		"-D", p.DataDir,
		"-p", strconv.Itoa(p.Port),
		"-k", p.SocketDir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=off",
		"-c", "max_connections=50",
		"-c", "shared_buffers=16MB",
	}
	proc, err := startProcess(fmt.Sprintf("postgres on port %d", p.Port), filepath.Join(p.bin, "postgres"), args,
		filepath.Dir(p.DataDir), p.logPath, p.cred)
	if err != nil {
		p.mu.Unlock()
		return err
	}
	p.proc = proc
	p.mu.Unlock()

	ctx, cancel := context.WithTimeout(ctx, PostgresReadyTimeout)
	defer cancel()
	for {
		err := p.ping(ctx)
		if err == nil {
			return nil
		}
		if proc.exited() {
			return proc.exitError()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("postgres on port %d not accepting connections: %w (last: %v)", p.Port, ctx.Err(), err)
		case <-time.After(pollInterval):
		}
	}
}

// ping opens one connection to URL and runs SELECT 1.
func (p *PostgresServer) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, DialTimeout)
	defer cancel()
	conn, err := pgconn.Connect(ctx, p.URL)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, "SELECT 1").ReadAll()
	return err
}

// Stop shuts the server down with pg_ctl stop -m mode (PostgresSmart,
// PostgresFast or PostgresImmediate) and waits until the postmaster has
// exited, up to ProcessStopTimeout; then it is killed. Stopping a stopped
// server does nothing.
func (p *PostgresServer) Stop(mode string) error {
	switch mode {
	case PostgresSmart, PostgresFast, PostgresImmediate:
	default:
		return fmt.Errorf("postgres stop: unknown mode %q (want %q, %q or %q)", mode, PostgresSmart, PostgresFast, PostgresImmediate)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.proc == nil {
		return nil
	}
	proc := p.proc
	p.proc = nil
	if proc.exited() {
		return nil
	}
	err := p.run(filepath.Dir(p.DataDir), "pg_ctl", "stop", "-D", p.DataDir, "-m", mode, "-w",
		"-t", strconv.Itoa(int(ProcessStopTimeout/time.Second)))
	if err != nil {
		// pg_ctl could not do it: signal the postmaster ourselves
		// (SIGQUIT is an immediate shutdown), then SIGKILL.
		return errors.Join(err, proc.stop(syscall.SIGQUIT))
	}
	select {
	case <-proc.done:
		return nil
	case <-time.After(ProcessStopTimeout):
		return errors.Join(fmt.Errorf("postgres on port %d still running after pg_ctl stop", p.Port), proc.kill())
	}
}

// Restart crashes the server (Stop(PostgresImmediate)) and starts it
// again; the start runs crash recovery.
func (p *PostgresServer) Restart(ctx context.Context) error {
	if err := p.Stop(PostgresImmediate); err != nil {
		return err
	}
	return p.Start(ctx)
}
