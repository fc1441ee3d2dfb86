package harness

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/testcontainers/testcontainers-go"
)

// Environment variables read by the harness.
const (
	// EnvNATSURL names the variable holding the NATS server URL,
	// for example nats://127.0.0.1:4222.
	EnvNATSURL = "IDEMQ_NATS_URL"
	// EnvRedisURL names the variable holding the Redis URL,
	// for example redis://127.0.0.1:6379/0.
	EnvRedisURL = "IDEMQ_REDIS_URL"
	// EnvPostgresURL names the variable holding the Postgres URL,
	// for example postgres://postgres@127.0.0.1:5432/test?sslmode=disable.
	EnvPostgresURL = "IDEMQ_POSTGRES_URL"
	// EnvCI names the variable that, when it parses as true (CI=true),
	// turns every "service unavailable" skip into a test failure.
	EnvCI = "CI"
)

// Timeouts used when reaching a service. They bound how long a test waits
// before it skips (or fails under CI) because a service is not there.
const (
	// DialTimeout bounds one connection attempt or ping to a service: 5s.
	DialTimeout = 5 * time.Second
	// DockerProbeTimeout bounds the Docker engine health check: 3s.
	DockerProbeTimeout = 3 * time.Second
	// ContainerStartTimeout bounds starting one testcontainers container,
	// including the image pull: 3 minutes.
	ContainerStartTimeout = 3 * time.Minute
	// CleanupTimeout bounds the deletion of a test's streams, keys or schema: 30s.
	CleanupTimeout = 30 * time.Second
)

// CI reports whether the CI environment variable is set to a true value
// ("true", "1", "t", ...). Under CI an unavailable service fails the test.
func CI() bool {
	v, err := strconv.ParseBool(os.Getenv(EnvCI))
	return err == nil && v
}

// Unavailable ends the test because a service it needs cannot be used:
// t.Skip with the reason normally, t.Fatal with the same reason when CI() is
// true. The message names the service, so the reason is clear in either case.
func Unavailable(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if CI() {
		t.Fatalf("%s (CI=true: an unavailable service is a failure, not a skip)", msg)
	}
	t.Skipf("%s (skipped; with CI=true this is a failure)", msg)
}

// RequireService returns the URL in the environment variable envVar, after
// checking that the host and port it names accept a TCP connection within
// DialTimeout. When the variable is unset or the service does not answer, the
// test is skipped — or fails under CI=true — with a message naming the
// service. name is a human label such as "redis". RequireService never starts
// containers; NATS, Redis and Postgres do.
func RequireService(t testing.TB, name, envVar string) string {
	t.Helper()
	raw := os.Getenv(envVar)
	if raw == "" {
		Unavailable(t, "%s: %s is not set", name, envVar)
		return ""
	}
	addr, err := hostPort(raw)
	if err != nil {
		Unavailable(t, "%s: %s=%q: %v", name, envVar, raw, err)
		return ""
	}
	conn, err := net.DialTimeout("tcp", addr, DialTimeout)
	if err != nil {
		Unavailable(t, "%s unreachable at %s (%s): %v", name, addr, envVar, err)
		return ""
	}
	_ = conn.Close()
	return raw
}

// defaultPorts maps URL schemes to the port used when the URL has none.
var defaultPorts = map[string]string{
	"nats":       "4222",
	"tls":        "4222",
	"redis":      "6379",
	"rediss":     "6379",
	"postgres":   "5432",
	"postgresql": "5432",
}

// hostPort extracts host:port from a service URL. For a comma-separated list
// of NATS servers it uses the first one.
func hostPort(raw string) (string, error) {
	first, _, _ := strings.Cut(raw, ",")
	u, err := url.Parse(first)
	if err != nil {
		return "", err
	}
	if u.Host == "" {
		return "", fmt.Errorf("no host in URL")
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = defaultPorts[u.Scheme]
	}
	if port == "" {
		return "", fmt.Errorf("no port in URL and no default for scheme %q", u.Scheme)
	}
	if host == "" {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port), nil
}

// newPrefix returns a fresh prefix such as "T3F9A1C2": an upper-case letter
// followed by eight hex digits from crypto/rand. It is valid in NATS stream,
// consumer and KV bucket names and, lower-cased, in subjects and Postgres
// identifiers.
func newPrefix(t testing.TB) string {
	t.Helper()
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("harness: random prefix: %v", err)
	}
	return "T" + strings.ToUpper(hex.EncodeToString(b[:]))
}

// dockerAvailable reports whether a Docker engine answers, using
// testcontainers' own provider and its health check bounded by
// DockerProbeTimeout. The reason explains a negative answer.
func dockerAvailable() (ok bool, reason string) {
	defer func() {
		// testcontainers may panic when no Docker host can be found.
		if r := recover(); r != nil {
			ok, reason = false, fmt.Sprintf("testcontainers found no Docker engine (%v)", r)
		}
	}()
	provider, err := testcontainers.NewDockerProvider()
	if err != nil {
		return false, fmt.Sprintf("testcontainers found no Docker engine (%v)", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), DockerProbeTimeout)
	defer cancel()
	// Health closes the provider when it returns.
	if err := provider.Health(ctx); err != nil {
		return false, fmt.Sprintf("Docker engine not answering: %v", err)
	}
	return true, ""
}

// container starts a service with run when envVar is unset and Docker answers.
// It returns the service URL, or ends the test through Unavailable.
func container[C testcontainers.Container](t testing.TB, service, envVar string,
	run func(ctx context.Context) (C, error), connString func(ctx context.Context, c C) (string, error)) string {
	t.Helper()
	ok, reason := dockerAvailable()
	if !ok {
		Unavailable(t, "%s: %s is not set and %s", service, envVar, reason)
		return ""
	}
	ctx, cancel := context.WithTimeout(context.Background(), ContainerStartTimeout)
	defer cancel()
	c, err := run(ctx)
	testcontainers.CleanupContainer(t, c)
	if err != nil {
		Unavailable(t, "%s: %s is not set and the testcontainers %s container failed to start: %v", service, envVar, service, err)
		return ""
	}
	u, err := connString(ctx, c)
	if err != nil {
		Unavailable(t, "%s: testcontainers %s container has no address: %v", service, service, err)
		return ""
	}
	return u
}
