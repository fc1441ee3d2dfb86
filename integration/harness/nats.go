package harness

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	tcnats "github.com/testcontainers/testcontainers-go/modules/nats"
)

// NATSImage is the image the testcontainers fallback runs when
// IDEMQ_NATS_URL is unset and Docker answers. JetStream is enabled by the
// module's default command.
const NATSImage = "nats:2.11.7"

// EmbeddedReadyTimeout bounds how long EmbeddedNATS and EmbeddedNATSServer
// wait for the in-process server to accept connections: 10s.
const EmbeddedReadyTimeout = 10 * time.Second

// NATSEnv is one test's view of a NATS server with JetStream. Everything the
// test creates must be named through Name and Subject so that tests sharing a
// server do not see each other and cleanup can find what to delete.
type NATSEnv struct {
	// URL is the server URL, for subprocesses and second connections.
	URL string
	// Conn is a connection owned by the harness; it is closed in cleanup.
	Conn *nats.Conn
	// JS is the JetStream API on Conn.
	JS jetstream.JetStream
	// Prefix is unique per test, for example "T3F9A1C2", and valid in
	// stream, consumer and KV bucket names.
	Prefix string
}

// Name returns a unique stream, consumer or KV bucket name: Prefix + "_" + s.
// Cleanup deletes streams whose name starts with Prefix, and KV buckets and
// object stores whose bucket name does.
func (e *NATSEnv) Name(s string) string { return e.Prefix + "_" + s }

// Subject returns a unique subject: strings.ToLower(Prefix) + "." + s, so
// e.Subject("payments.>") is a wildcard over this test's subjects only.
func (e *NATSEnv) Subject(s string) string { return strings.ToLower(e.Prefix) + "." + s }

// NATS returns a NATS JetStream environment on a real server: the one in
// IDEMQ_NATS_URL, else a testcontainers NATS container when a Docker engine
// answers, else it skips the test (fails it under CI=true) saying why.
// Cleanup deletes the test's streams, KV buckets and object stores, then
// closes the connection.
func NATS(t testing.TB) *NATSEnv {
	t.Helper()
	url := os.Getenv(EnvNATSURL)
	if url == "" {
		url = container(t, "nats", EnvNATSURL,
			func(ctx context.Context) (*tcnats.NATSContainer, error) { return tcnats.Run(ctx, NATSImage) },
			func(ctx context.Context, c *tcnats.NATSContainer) (string, error) { return c.ConnectionString(ctx) })
	}
	env := connectNATS(t, url, true)
	t.Cleanup(func() { deletePrefixed(t, env) })
	return env
}

// EmbeddedNATS starts nats-server in this process with JetStream on, its
// store in t.TempDir() and a random loopback port, and connects to it.
// Cleanup closes the connection, shuts the server down and waits for it, so
// no server goroutine outlives the test.
func EmbeddedNATS(t testing.TB) *NATSEnv {
	t.Helper()
	srv := EmbeddedNATSServer(t, t.TempDir(), -1)
	return connectNATS(t, srv.ClientURL(), false)
}

// EmbeddedNATSServer starts nats-server in this process with JetStream on,
// storing in storeDir and listening on 127.0.0.1:port (port -1 picks a free
// port; read it back with srv.Addr().(*net.TCPAddr).Port or srv.ClientURL()
// before shutting the server down — Addr is nil afterwards). It is for tests
// that stop a server and start another on the same store directory and port.
// The caller shuts it down (Shutdown then WaitForShutdown); as a safety net a
// cleanup shuts it down too if the test ends first.
func EmbeddedNATSServer(t testing.TB, storeDir string, port int) *server.Server {
	t.Helper()
	opts := &server.Options{
		ServerName: "idemq-test-" + newPrefix(t),
		Host:       "127.0.0.1",
		Port:       port,
		JetStream:  true,
		StoreDir:   storeDir,
		NoLog:      true,
		NoSigs:     true,
		// No HTTP monitoring, cluster, gateway or leaf listeners.
		HTTPPort: 0,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("harness: embedded nats-server: %v", err)
	}
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	srv.Start()
	if !srv.ReadyForConnections(EmbeddedReadyTimeout) {
		t.Fatalf("harness: embedded nats-server on port %d not ready within %s", port, EmbeddedReadyTimeout)
	}
	if !srv.JetStreamEnabled() {
		t.Fatalf("harness: embedded nats-server started without JetStream")
	}
	return srv
}

// connectNATS connects to url and builds the environment. For a real server
// (external) an unreachable URL goes through Unavailable; for an embedded one
// it is a plain failure.
func connectNATS(t testing.TB, url string, external bool) *NATSEnv {
	t.Helper()
	prefix := newPrefix(t)
	nc, err := nats.Connect(url,
		nats.Name("idemq-test-"+prefix),
		nats.Timeout(DialTimeout),
		nats.NoReconnect(),
	)
	if err != nil {
		if external {
			Unavailable(t, "nats unreachable at %s (%s): %v", url, EnvNATSURL, err)
		}
		t.Fatalf("harness: connect to nats at %s: %v", url, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("harness: jetstream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), DialTimeout)
	defer cancel()
	if _, err := js.AccountInfo(ctx); err != nil {
		if external && !errors.Is(err, jetstream.ErrJetStreamNotEnabled) && !errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
			Unavailable(t, "nats at %s (%s) does not answer JetStream requests: %v", url, EnvNATSURL, err)
		}
		t.Fatalf("harness: nats at %s has no usable JetStream: %v", url, err)
	}
	return &NATSEnv{URL: url, Conn: nc, JS: js, Prefix: prefix}
}

// deletePrefixed deletes every stream named with the environment's prefix,
// including the streams behind KV buckets (KV_<bucket>) and object stores
// (OBJ_<bucket>). Errors are reported, since a leftover stream leaks into
// later runs.
func deletePrefixed(t testing.TB, env *NATSEnv) {
	t.Helper()
	if env.Conn.IsClosed() {
		t.Errorf("harness: nats connection closed before cleanup; streams with prefix %s were not deleted", env.Prefix)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), CleanupTimeout)
	defer cancel()
	names := env.JS.StreamNames(ctx)
	var doomed []string
	for name := range names.Name() {
		if ownedStream(name, env.Prefix) {
			doomed = append(doomed, name)
		}
	}
	if err := names.Err(); err != nil {
		t.Errorf("harness: list streams for cleanup of prefix %s: %v", env.Prefix, err)
		return
	}
	for _, name := range doomed {
		if err := env.JS.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
			t.Errorf("harness: delete stream %s: %v", name, err)
		}
	}
}

// ownedStream reports whether a stream belongs to the test with prefix.
func ownedStream(name, prefix string) bool {
	for _, p := range []string{"", "KV_", "OBJ_"} {
		if strings.HasPrefix(name, p+prefix) {
			return true
		}
	}
	return false
}
