package harness

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// NATSClusterSize is the number of nodes in a NATSCluster: 3, so streams
// and KV buckets with Replicas: 3 have one replica per node and survive the
// loss of one node.
const NATSClusterSize = 3

// NATSServerBinary is where StartNATSCluster looks for nats-server first
// (the Debian package's path); it then tries PATH.
const NATSServerBinary = "/usr/sbin/nats-server"

// natsServerPaths are the places tried before PATH; tests replace it.
var natsServerPaths = []string{NATSServerBinary}

// NATSClusterReadyTimeout bounds how long StartNATSCluster,
// StartEmbeddedNATSCluster and NATSCluster.Restart wait for the nodes to
// report healthy (GET /healthz on each node's monitoring port answers 200,
// which for a clustered server means it is current with the JetStream meta
// leader): 60s.
const NATSClusterReadyTimeout = 60 * time.Second

// NATSCluster is a 3-node NATS cluster with JetStream that belongs to one
// test: every node listens on 127.0.0.1 on free ports (client, cluster
// route and HTTP monitoring) and stores in its own directory under
// t.TempDir(). Nodes are numbered 0 to NATSClusterSize-1 and named
// "<cluster>-n<i>", the name StreamInfo reports in Cluster.Leader and
// Cluster.Replicas.
//
// Two flavours share this type: StartNATSCluster runs the machine's
// nats-server binary (2.9 on the project's machines) as child processes,
// and StartEmbeddedNATSCluster runs the nats-server/v2 module this project
// depends on in process. Cleanup stops every node still running (SIGKILL
// for processes, Shutdown for in-process servers) and, when the test
// failed, logs the tail of each process's log.
//
// A NATSCluster's methods are safe for concurrent use and return errors
// instead of failing the test, so subtests may share a cluster.
type NATSCluster struct {
	// Name is the cluster name, for example "idemq-T3F9A1C2".
	Name string

	embedded bool
	binary   string // nats-server path, external flavour

	mu    sync.Mutex
	nodes []*natsNode
}

// natsNode is one member of a NATSCluster.
type natsNode struct {
	name                             string
	clientPort, clusterPort, monPort int
	dir                              string // per-node directory: store, config, log

	proc *process       // external flavour, nil when not running
	srv  *server.Server // embedded flavour, nil when not running
}

// StartNATSCluster starts a 3-node JetStream cluster of the machine's
// nats-server binary (NATSServerBinary, else the one in PATH), each node
// from a generated configuration file with server_name, listen, http,
// jetstream.store_dir and a cluster block routing to all three nodes. It
// waits up to NATSClusterReadyTimeout for every node's /healthz. When no
// binary is found the test is skipped (fails under CI=true) saying so.
func StartNATSCluster(t testing.TB) *NATSCluster {
	t.Helper()
	bin, err := findBinary("nats-server", natsServerPaths...)
	if err != nil {
		Unavailable(t, "nats cluster: %v", err)
		return nil
	}
	return startNATSCluster(t, false, bin)
}

// StartEmbeddedNATSCluster starts a 3-node JetStream cluster of in-process
// nats-server/v2 servers with the same layout as StartNATSCluster. Kill
// shuts a node down (server.Shutdown, which is cleaner than a crash: the
// node may hand over leadership first) and waits for it.
func StartEmbeddedNATSCluster(t testing.TB) *NATSCluster {
	t.Helper()
	return startNATSCluster(t, true, "")
}

func startNATSCluster(t testing.TB, embedded bool, bin string) *NATSCluster {
	t.Helper()
	ports, err := freePorts(3 * NATSClusterSize)
	if err != nil {
		t.Fatalf("harness: nats cluster: %v", err)
	}
	c := &NATSCluster{Name: "idemq-" + newPrefix(t), embedded: embedded, binary: bin}
	root := t.TempDir()
	for i := range NATSClusterSize {
		n := &natsNode{
			name:        fmt.Sprintf("%s-n%d", c.Name, i),
			clientPort:  ports[3*i],
			clusterPort: ports[3*i+1],
			monPort:     ports[3*i+2],
			dir:         filepath.Join(root, fmt.Sprintf("n%d", i)),
		}
		if err := os.MkdirAll(filepath.Join(n.dir, "store"), 0o755); err != nil {
			t.Fatalf("harness: nats cluster: %v", err)
		}
		c.nodes = append(c.nodes, n)
	}
	t.Cleanup(func() { c.shutdown(t) })
	for i := range c.nodes {
		if err := c.start(i); err != nil {
			t.Fatalf("harness: nats cluster: %v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), NATSClusterReadyTimeout)
	defer cancel()
	if err := c.WaitHealthy(ctx); err != nil {
		t.Fatalf("harness: nats cluster: %v", err)
	}
	return c
}

// shutdown stops every running node; it is the cluster's cleanup.
func (c *NATSCluster) shutdown(t testing.TB) {
	for i, n := range c.nodes {
		if err := c.Kill(i); err != nil {
			t.Errorf("harness: nats cluster cleanup: %v", err)
		}
		if t.Failed() && !c.embedded {
			t.Logf("harness: log of %s (%s):\n%s", n.name, filepath.Join(n.dir, "nats-server.log"), logTail(filepath.Join(n.dir, "nats-server.log")))
		}
	}
}

// routes returns the cluster route URLs of all nodes.
func (c *NATSCluster) routes() []string {
	var r []string
	for _, n := range c.nodes {
		r = append(r, fmt.Sprintf("nats-route://127.0.0.1:%d", n.clusterPort))
	}
	return r
}

// start starts node i, which must not be running, without waiting for it
// to be healthy. The caller holds no lock.
func (c *NATSCluster) start(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[i]
	if n.proc != nil || n.srv != nil {
		return fmt.Errorf("node %s is already running", n.name)
	}
	store := filepath.Join(n.dir, "store")
	if c.embedded {
		routes := server.RoutesFromStr(strings.Join(c.routes(), ","))
		opts := &server.Options{
			ServerName: n.name,
			Host:       "127.0.0.1",
			Port:       n.clientPort,
			HTTPHost:   "127.0.0.1",
			HTTPPort:   n.monPort,
			JetStream:  true,
			StoreDir:   store,
			NoLog:      true,
			NoSigs:     true,
			Cluster:    server.ClusterOpts{Name: c.Name, Host: "127.0.0.1", Port: n.clusterPort},
			Routes:     routes,
		}
		srv, err := server.NewServer(opts)
		if err != nil {
			return fmt.Errorf("embedded nats-server %s: %w", n.name, err)
		}
		srv.Start()
		if !srv.ReadyForConnections(EmbeddedReadyTimeout) {
			srv.Shutdown()
			srv.WaitForShutdown()
			return fmt.Errorf("embedded nats-server %s on port %d not ready within %s", n.name, n.clientPort, EmbeddedReadyTimeout)
		}
		n.srv = srv
		return nil
	}
	var routes strings.Builder
	for _, r := range c.routes() {
		fmt.Fprintf(&routes, "    %q\n", r)
	}
	conf := fmt.Sprintf(`server_name: %q
listen: "127.0.0.1:%d"
http: "127.0.0.1:%d"
jetstream {
  store_dir: %q
}
cluster {
  name: %q
  listen: "127.0.0.1:%d"
  routes: [
%s  ]
}
`, n.name, n.clientPort, n.monPort, store, c.Name, n.clusterPort, routes.String())
	confPath := filepath.Join(n.dir, "nats-server.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return fmt.Errorf("nats-server %s: write config: %w", n.name, err)
	}
	p, err := startProcess("nats-server "+n.name, c.binary, []string{"-c", confPath}, n.dir, filepath.Join(n.dir, "nats-server.log"), nil)
	if err != nil {
		return err
	}
	n.proc = p
	return nil
}

// Size returns the number of nodes, NATSClusterSize.
func (c *NATSCluster) Size() int { return len(c.nodes) }

// Embedded reports whether the nodes run in process
// (StartEmbeddedNATSCluster) rather than as nats-server processes.
func (c *NATSCluster) Embedded() bool { return c.embedded }

// URLs returns the client URLs of all nodes, comma-separated, as
// nats.Connect takes them: "nats://127.0.0.1:P0,nats://127.0.0.1:P1,...".
// Ports do not change across Restart.
func (c *NATSCluster) URLs() string {
	urls := make([]string, len(c.nodes))
	for i := range c.nodes {
		urls[i] = c.NodeURL(i)
	}
	return strings.Join(urls, ",")
}

// NodeURL returns the client URL of node i, for example
// "nats://127.0.0.1:40123".
func (c *NATSCluster) NodeURL(i int) string {
	return fmt.Sprintf("nats://127.0.0.1:%d", c.nodes[i].clientPort)
}

// NodeName returns the server name of node i, as StreamInfo reports it.
func (c *NATSCluster) NodeName(i int) string { return c.nodes[i].name }

// NodeIndex returns the index of the node named name, or -1.
func (c *NATSCluster) NodeIndex(name string) int {
	for i, n := range c.nodes {
		if n.name == name {
			return i
		}
	}
	return -1
}

// Running reports whether node i is up (started and not killed, and for a
// process, not exited on its own).
func (c *NATSCluster) Running(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[i]
	if c.embedded {
		return n.srv != nil && n.srv.Running()
	}
	return n.proc != nil && !n.proc.exited()
}

// Kill stops node i abruptly and waits until it is gone: SIGKILL for a
// nats-server process, Shutdown and WaitForShutdown for an in-process
// server. Its store directory and ports are kept for Restart. Killing a
// node that is not running does nothing.
func (c *NATSCluster) Kill(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[i]
	if n.srv != nil {
		n.srv.Shutdown()
		n.srv.WaitForShutdown()
		n.srv = nil
	}
	if n.proc != nil {
		err := n.proc.kill()
		n.proc = nil
		return err
	}
	return nil
}

// Restart starts node i again, after Kill, on the same ports and store
// directory, so it rejoins the cluster with its streams, and waits up to
// NATSClusterReadyTimeout (or ctx) for every running node to be healthy.
// Its replicas may still be catching up: use WaitStreamCurrent for that.
func (c *NATSCluster) Restart(ctx context.Context, i int) error {
	if c.Running(i) {
		return fmt.Errorf("restart %s: node is running; Kill it first", c.nodes[i].name)
	}
	if err := c.Kill(i); err != nil { // reap a process that exited on its own
		return err
	}
	if err := c.start(i); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, NATSClusterReadyTimeout)
	defer cancel()
	return c.WaitHealthy(ctx)
}

// WaitHealthy waits until every running node answers 200 on GET /healthz of
// its monitoring port, polling every 100ms until ctx is done; the error
// then names the node and its last answer. A process that exited is
// reported at once with the tail of its log.
func (c *NATSCluster) WaitHealthy(ctx context.Context) error {
	hc := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Second}
	defer hc.CloseIdleConnections()
	for i, n := range c.nodes {
		if !c.Running(i) {
			c.mu.Lock()
			p := n.proc
			c.mu.Unlock()
			if p != nil {
				return p.exitError()
			}
			continue
		}
		url := fmt.Sprintf("http://127.0.0.1:%d/healthz", n.monPort)
		var last string
		for {
			last = probeHealthz(ctx, hc, url)
			if last == "" {
				break
			}
			c.mu.Lock()
			p := n.proc
			c.mu.Unlock()
			if p != nil && p.exited() {
				return p.exitError()
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("node %s not healthy: %s: %s", n.name, ctx.Err(), last)
			case <-time.After(pollInterval):
			}
		}
	}
	return nil
}

// probeHealthz returns "" when url answers 200, else what went wrong.
func probeHealthz(ctx context.Context, hc *http.Client, url string) string {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err.Error()
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err.Error()
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	if resp.StatusCode == http.StatusOK {
		return ""
	}
	return fmt.Sprintf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
}

// Env connects to all nodes (URLs) and returns an environment with a fresh
// prefix, like NATS does for a single server. The connection reconnects
// forever, every 100ms, so it survives Kill of the node it is on; requests
// made while it reconnects may fail and should be retried. Cleanup closes
// the connection; the streams go with the cluster.
func (c *NATSCluster) Env(t testing.TB) *NATSEnv {
	t.Helper()
	prefix := newPrefix(t)
	nc, err := nats.Connect(c.URLs(),
		nats.Name("idemq-test-"+prefix),
		nats.Timeout(DialTimeout),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(100*time.Millisecond),
		nats.RetryOnFailedConnect(false),
	)
	if err != nil {
		t.Fatalf("harness: connect to nats cluster %s at %s: %v", c.Name, c.URLs(), err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("harness: jetstream: %v", err)
	}
	return &NATSEnv{URL: c.URLs(), Conn: nc, JS: js, Prefix: prefix}
}

// KVStream returns the name of the stream behind a KV bucket, "KV_" +
// bucket, for StreamLeader, KillStreamLeader and WaitStreamCurrent.
func KVStream(bucket string) string { return "KV_" + bucket }

// StreamLeader returns the index of the node leading stream (the server
// named in StreamInfo's Cluster.Leader). It fails when the stream has no
// leader at the moment or the leader is not a node of c.
func (c *NATSCluster) StreamLeader(ctx context.Context, js jetstream.JetStream, stream string) (int, error) {
	info, err := streamInfo(ctx, js, stream)
	if err != nil {
		return -1, err
	}
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return -1, fmt.Errorf("stream %s has no leader", stream)
	}
	i := c.NodeIndex(info.Cluster.Leader)
	if i < 0 {
		return -1, fmt.Errorf("stream %s is led by %q, not a node of cluster %s", stream, info.Cluster.Leader, c.Name)
	}
	return i, nil
}

// KillStreamLeader kills (see Kill) the node leading stream and returns its
// index. It does not wait for a new leader: WaitStreamLeader does.
func (c *NATSCluster) KillStreamLeader(ctx context.Context, js jetstream.JetStream, stream string) (int, error) {
	i, err := c.StreamLeader(ctx, js, stream)
	if err != nil {
		return -1, err
	}
	return i, c.Kill(i)
}

// WaitStreamLeader waits until stream has a leader on a running node other
// than the node with index not (-1: any running node), polling every 100ms
// until ctx is done, and returns the leader's index.
func (c *NATSCluster) WaitStreamLeader(ctx context.Context, js jetstream.JetStream, stream string, not int) (int, error) {
	var last error
	for {
		i, err := c.StreamLeader(ctx, js, stream)
		switch {
		case err != nil:
			last = err
		case i == not || !c.Running(i):
			last = fmt.Errorf("stream %s still led by %s", stream, c.NodeName(i))
		default:
			return i, nil
		}
		select {
		case <-ctx.Done():
			return -1, fmt.Errorf("wait for a leader of stream %s: %w (last: %v)", stream, ctx.Err(), last)
		case <-time.After(pollInterval):
		}
	}
}

// WaitStreamCurrent waits until stream has a leader and all its replicas
// are current: StreamInfo's Cluster lists Replicas-1 peers besides the
// leader, each with Current true and Offline false. It polls every 100ms
// until ctx is done; the error then says which replica lagged.
func (c *NATSCluster) WaitStreamCurrent(ctx context.Context, js jetstream.JetStream, stream string) error {
	var last error
	for {
		last = streamCurrent(ctx, js, stream)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for the replicas of stream %s: %w (last: %v)", stream, ctx.Err(), last)
		case <-time.After(pollInterval):
		}
	}
}

// streamCurrent returns nil when stream has a leader and every replica is
// current.
func streamCurrent(ctx context.Context, js jetstream.JetStream, stream string) error {
	info, err := streamInfo(ctx, js, stream)
	if err != nil {
		return err
	}
	cl := info.Cluster
	if cl == nil || cl.Leader == "" {
		return fmt.Errorf("stream %s has no leader", stream)
	}
	if want := info.Config.Replicas - 1; len(cl.Replicas) != want {
		return fmt.Errorf("stream %s lists %d replicas besides leader %s, want %d", stream, len(cl.Replicas), cl.Leader, want)
	}
	for _, r := range cl.Replicas {
		if !r.Current || r.Offline {
			return fmt.Errorf("stream %s replica %s: current=%v offline=%v lag=%d (leader %s)", stream, r.Name, r.Current, r.Offline, r.Lag, cl.Leader)
		}
	}
	return nil
}

// streamInfo fetches fresh StreamInfo, bounded by DialTimeout.
func streamInfo(ctx context.Context, js jetstream.JetStream, stream string) (*jetstream.StreamInfo, error) {
	ctx, cancel := context.WithTimeout(ctx, DialTimeout)
	defer cancel()
	s, err := js.Stream(ctx, stream)
	if err != nil {
		return nil, fmt.Errorf("stream %s info: %w", stream, err)
	}
	return s.CachedInfo(), nil // js.Stream has just fetched it
}

// kvProbeKey is the key WaitKVServed reads; it need not exist.
const kvProbeKey = "idemq-harness-probe"

// WaitKVServed waits until a Get on bucket is answered: the probe key is
// found or reported missing (jetstream.ErrKeyNotFound), rather than failing
// with nats.ErrNoResponders or a timeout. On a cluster, CreateKeyValue
// returns before the replicas' direct-get responders are known to the
// server the client is on, so the first reads of a new bucket can fail
// with "nats: no responders available for request". It polls every 100ms
// until ctx is done.
func WaitKVServed(ctx context.Context, js jetstream.JetStream, bucket string) error {
	kv, err := js.KeyValue(ctx, bucket)
	if err != nil {
		return fmt.Errorf("kv bucket %s: %w", bucket, err)
	}
	var last error
	for {
		attempt, cancel := context.WithTimeout(ctx, DialTimeout)
		_, last = kv.Get(attempt, kvProbeKey)
		cancel()
		if last == nil || errors.Is(last, jetstream.ErrKeyNotFound) {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for kv bucket %s to serve reads: %w (last: %v)", bucket, ctx.Err(), last)
		case <-time.After(pollInterval):
		}
	}
}
