package harness

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// errStopped is raised by fakeTB in place of runtime.Goexit.
var errStopped = errors.New("test stopped")

// fakeTB records how the harness ends a test, so the skip/fatal rule can be
// tested without ending the real test.
type fakeTB struct {
	testing.TB
	skipped, failed bool
	msg             string
}

func (f *fakeTB) Helper() {}

func (f *fakeTB) Skipf(format string, args ...any) {
	f.skipped, f.msg = true, fmt.Sprintf(format, args...)
	panic(errStopped)
}

func (f *fakeTB) Fatalf(format string, args ...any) {
	f.failed, f.msg = true, fmt.Sprintf(format, args...)
	panic(errStopped)
}

// runFake calls fn with a fakeTB and returns it once fn returns or stops.
func runFake(t *testing.T, fn func(tb testing.TB)) (f *fakeTB, stopped bool) {
	t.Helper()
	f = &fakeTB{TB: t}
	defer func() {
		if r := recover(); r != nil {
			if r != errStopped {
				panic(r)
			}
			stopped = true
		}
	}()
	fn(f)
	return f, false
}

// deadAddr is a loopback port with nothing listening on it.
const deadAddr = "127.0.0.1:1"

func TestRequireServiceUnreachable(t *testing.T) {
	for _, ci := range []string{"", "false", "true", "1"} {
		t.Run("CI="+ci, func(t *testing.T) {
			t.Setenv(EnvCI, ci)
			t.Setenv(EnvRedisURL, "redis://"+deadAddr+"/0")
			f, stopped := runFake(t, func(tb testing.TB) { RequireService(tb, "redis", EnvRedisURL) })
			if !stopped {
				t.Fatal("RequireService returned for a dead service")
			}
			wantFail := ci == "true" || ci == "1"
			if f.failed != wantFail || f.skipped == wantFail {
				t.Fatalf("failed=%v skipped=%v, want failed=%v", f.failed, f.skipped, wantFail)
			}
			if !strings.Contains(f.msg, "redis unreachable at "+deadAddr) {
				t.Fatalf("message %q does not name the service and address", f.msg)
			}
		})
	}
}

func TestRequireServiceUnset(t *testing.T) {
	t.Setenv(EnvCI, "true")
	t.Setenv(EnvNATSURL, "")
	f, stopped := runFake(t, func(tb testing.TB) { RequireService(tb, "nats", EnvNATSURL) })
	if !stopped || !f.failed || !strings.Contains(f.msg, EnvNATSURL+" is not set") {
		t.Fatalf("stopped=%v failed=%v msg=%q, want a failure naming %s", stopped, f.failed, f.msg, EnvNATSURL)
	}
}

func TestRedisUnreachable(t *testing.T) {
	t.Setenv(EnvCI, "true")
	t.Setenv(EnvRedisURL, "redis://"+deadAddr+"/0")
	f, stopped := runFake(t, func(tb testing.TB) { Redis(tb) })
	if !stopped || !f.failed || !strings.Contains(f.msg, "redis unreachable at "+deadAddr) {
		t.Fatalf("stopped=%v failed=%v msg=%q, want a failure naming redis at %s", stopped, f.failed, f.msg, deadAddr)
	}
}

func TestHostPort(t *testing.T) {
	tests := []struct{ in, want string }{
		{"nats://127.0.0.1:4222", "127.0.0.1:4222"},
		{"nats://u:p@example.com", "example.com:4222"},
		{"nats://a:1,nats://b:2", "a:1"},
		{"redis://127.0.0.1:6379/0", "127.0.0.1:6379"},
		{"postgres://postgres@127.0.0.1:5432/test?sslmode=disable", "127.0.0.1:5432"},
		{"postgresql://db/test", "db:5432"},
		{"redis://[::1]:6380", "[::1]:6380"},
	}
	for _, tt := range tests {
		got, err := hostPort(tt.in)
		if err != nil || got != tt.want {
			t.Errorf("hostPort(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
	for _, bad := range []string{"host=x dbname=y", "http://x"} {
		if got, err := hostPort(bad); err == nil {
			t.Errorf("hostPort(%q) = %q, want an error", bad, got)
		}
	}
}

// TestPgxSearchPathParam checks that pgx turns the search_path query
// parameter, which it does not know, into a run-time parameter sent at
// connection start-up: the mechanism PostgresEnv.URL relies on.
func TestPgxSearchPathParam(t *testing.T) {
	for _, in := range []string{
		"postgres://postgres@127.0.0.1:5432/test?sslmode=disable",
		"postgres://postgres@127.0.0.1:5432/test?sslmode=disable&search_path=old",
		"host=127.0.0.1 user=postgres dbname=test sslmode=disable",
		"host=127.0.0.1 search_path=old dbname=test",
	} {
		got, err := withSearchPath(in, "idemq_test_x")
		if err != nil {
			t.Fatalf("withSearchPath(%q): %v", in, err)
		}
		cfg, err := pgconn.ParseConfig(got)
		if err != nil {
			t.Fatalf("pgconn.ParseConfig(%q): %v", got, err)
		}
		if sp := cfg.RuntimeParams["search_path"]; sp != "idemq_test_x" {
			t.Errorf("withSearchPath(%q) = %q: RuntimeParams[search_path] = %q, want idemq_test_x", in, got, sp)
		}
		if cfg.Database != "test" {
			t.Errorf("withSearchPath(%q) = %q: database %q, want test", in, got, cfg.Database)
		}
	}
}

func TestRedactURL(t *testing.T) {
	tests := []struct{ in, want string }{
		{"postgres://u:secret@h/db", "postgres://u:xxxxx@h/db"},
		{"host=h password=secret dbname=d", "host=h password=xxxxx dbname=d"},
		{"host=h password='se cret' dbname=d", "host=h password=xxxxx dbname=d"},
	}
	for _, tt := range tests {
		if got := redactURL(tt.in); got != tt.want {
			t.Errorf("redactURL(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestNames(t *testing.T) {
	e := &NATSEnv{Prefix: "T3F9A1C2"}
	if got := e.Name("orders"); got != "T3F9A1C2_orders" {
		t.Errorf("Name = %q", got)
	}
	if got := e.Subject("orders.>"); got != "t3f9a1c2.orders.>" {
		t.Errorf("Subject = %q", got)
	}
	a, b := newPrefix(t), newPrefix(t)
	if a == b || len(a) != 9 || a[0] != 'T' || strings.ToUpper(a) != a {
		t.Errorf("newPrefix gave %q and %q", a, b)
	}
}

func TestOwnedStream(t *testing.T) {
	for name, want := range map[string]bool{
		"TABC_orders": true, "KV_TABC_seen": true, "OBJ_TABC_blobs": true,
		"TABD_orders": false, "KV_TABD": false, "PAYMENTS": false, "X_TABC": false,
	} {
		if got := ownedStream(name, "TABC"); got != want {
			t.Errorf("ownedStream(%q) = %v, want %v", name, got, want)
		}
	}
}

func TestDockerProbe(t *testing.T) {
	ok, reason := dockerAvailable()
	if !ok && reason == "" {
		t.Fatal("dockerAvailable gave no reason for a negative answer")
	}
	t.Logf("docker available: %v %s", ok, reason)
}

// exerciseNATS creates a stream, a consumer and a KV bucket through env and
// round-trips a message; it returns the stream and bucket names.
func exerciseNATS(t *testing.T, env *NATSEnv) (stream, bucket string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	stream, bucket = env.Name("ORDERS"), env.Name("seen")
	s, err := env.JS.CreateStream(ctx, jetstream.StreamConfig{Name: stream, Subjects: []string{env.Subject("orders.>")}})
	if err != nil {
		t.Fatalf("create stream: %v", err)
	}
	if _, err := env.JS.Publish(ctx, env.Subject("orders.new"), []byte("hello")); err != nil {
		t.Fatalf("publish: %v", err)
	}
	c, err := s.CreateConsumer(ctx, jetstream.ConsumerConfig{Durable: env.Name("worker"), AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatalf("create consumer: %v", err)
	}
	msg, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
	if err != nil {
		t.Fatalf("next: %v", err)
	}
	if string(msg.Data()) != "hello" {
		t.Fatalf("got %q, want hello", msg.Data())
	}
	if err := msg.DoubleAck(ctx); err != nil {
		t.Fatalf("ack: %v", err)
	}
	kv, err := env.JS.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: bucket})
	if err != nil {
		t.Fatalf("create kv: %v", err)
	}
	if _, err := kv.Create(ctx, "k", []byte("v")); err != nil {
		t.Fatalf("kv create: %v", err)
	}
	return stream, bucket
}

func TestEmbeddedNATS(t *testing.T) {
	env := EmbeddedNATS(t)
	exerciseNATS(t, env)
	if !strings.HasPrefix(env.URL, "nats://127.0.0.1:") {
		t.Errorf("URL = %q, want a loopback nats URL", env.URL)
	}
}

func TestEmbeddedNATSServerRestart(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	srv := EmbeddedNATSServer(t, dir, -1)
	env := connectNATS(t, srv.ClientURL(), false)
	stream, _ := exerciseNATS(t, env)
	port := srv.Addr().(*net.TCPAddr).Port // Addr is nil once the server is down
	env.Conn.Close()
	srv.Shutdown()
	srv.WaitForShutdown()

	srv2 := EmbeddedNATSServer(t, dir, port)
	if got := srv2.Addr().(*net.TCPAddr).Port; got != port {
		t.Fatalf("restarted server on port %d, want %d", got, port)
	}
	env2 := connectNATS(t, srv2.ClientURL(), false)
	info, err := env2.JS.Stream(ctx, stream)
	if err != nil {
		t.Fatalf("stream %s after restart on the same store: %v", stream, err)
	}
	if n := info.CachedInfo().State.Msgs; n != 1 {
		t.Fatalf("stream has %d messages after restart, want 1", n)
	}
}

func TestNATS(t *testing.T) {
	outer := NATS(t)
	var stream, bucket, innerPrefix string
	t.Run("inner", func(t *testing.T) {
		env := NATS(t)
		innerPrefix = env.Prefix
		stream, bucket = exerciseNATS(t, env)
	})
	if innerPrefix == outer.Prefix {
		t.Fatalf("two environments share the prefix %s", innerPrefix)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := outer.JS.Stream(ctx, stream); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("stream %s after cleanup: err = %v, want ErrStreamNotFound", stream, err)
	}
	if _, err := outer.JS.KeyValue(ctx, bucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Errorf("kv bucket %s after cleanup: err = %v, want ErrBucketNotFound", bucket, err)
	}
}

func TestRedis(t *testing.T) {
	outer := Redis(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := outer.Client.Set(ctx, outer.Prefix+"keep", "1", 0).Err(); err != nil {
		t.Fatalf("set: %v", err)
	}
	var innerPrefix string
	var keys []string
	t.Run("inner", func(t *testing.T) {
		env := Redis(t)
		innerPrefix = env.Prefix
		for i := range 1200 { // more than one SCAN page and one UNLINK batch
			keys = append(keys, fmt.Sprintf("%sk%d", env.Prefix, i))
		}
		pipe := env.Client.Pipeline()
		for _, k := range keys {
			pipe.Set(ctx, k, "v", time.Hour)
		}
		if _, err := pipe.Exec(ctx); err != nil {
			t.Fatalf("set keys: %v", err)
		}
	})
	if innerPrefix == outer.Prefix || !strings.HasPrefix(innerPrefix, "idemq-test:T") {
		t.Fatalf("prefixes %q and %q", innerPrefix, outer.Prefix)
	}
	if n, err := outer.Client.Exists(ctx, keys...).Result(); err != nil || n != 0 {
		t.Errorf("%d of the inner test's keys survive its cleanup (err %v)", n, err)
	}
	if n, err := outer.Client.Exists(ctx, outer.Prefix+"keep").Result(); err != nil || n != 1 {
		t.Errorf("the inner cleanup deleted another environment's key (exists=%d, err %v)", n, err)
	}
}

func TestPostgres(t *testing.T) {
	outer := Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := outer.DB.ExecContext(ctx, "CREATE TABLE accounts (id text PRIMARY KEY, balance bigint NOT NULL)"); err != nil {
		t.Fatalf("create table in outer schema: %v", err)
	}
	var innerSchema string
	t.Run("inner", func(t *testing.T) {
		env := Postgres(t)
		innerSchema = env.Schema
		// The same unqualified name does not collide with the outer test's table.
		if _, err := env.DB.ExecContext(ctx, "CREATE TABLE accounts (id text PRIMARY KEY, balance bigint NOT NULL)"); err != nil {
			t.Fatalf("create table in inner schema: %v", err)
		}
		if _, err := env.DB.ExecContext(ctx, "INSERT INTO accounts VALUES ('acc-1', 100)"); err != nil {
			t.Fatalf("insert: %v", err)
		}
		// URL, as a subprocess would use it, lands in the same schema.
		db, err := sql.Open("pgx", env.URL)
		if err != nil {
			t.Fatalf("open URL: %v", err)
		}
		defer db.Close()
		var balance int64
		if err := db.QueryRowContext(ctx, "SELECT balance FROM accounts WHERE id = 'acc-1'").Scan(&balance); err != nil || balance != 100 {
			t.Fatalf("through URL: balance %d, err %v; want 100", balance, err)
		}
	})
	if innerSchema == outer.Schema {
		t.Fatalf("two environments share the schema %s", innerSchema)
	}
	var n int
	if err := outer.DB.QueryRowContext(ctx, "SELECT count(*) FROM accounts").Scan(&n); err != nil || n != 0 {
		t.Errorf("outer accounts: %d rows, err %v; want 0 (the inner test wrote to its own schema)", n, err)
	}
	var exists bool
	err := outer.DB.QueryRowContext(ctx,
		"SELECT EXISTS (SELECT 1 FROM information_schema.schemata WHERE schema_name = $1)", innerSchema).Scan(&exists)
	if err != nil || exists {
		t.Errorf("schema %s after cleanup: exists=%v, err %v; want dropped", innerSchema, exists, err)
	}
}
