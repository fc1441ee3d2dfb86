package harness

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Shape and timing of a RedisCluster.
const (
	// RedisClusterMasters is the number of masters: 3, each owning a third
	// of the 16384 hash slots.
	RedisClusterMasters = 3
	// RedisClusterNodes is the number of nodes: 3 masters and one replica
	// each, 6.
	RedisClusterNodes = 2 * RedisClusterMasters
	// RedisClusterNodeTimeout is every node's cluster-node-timeout: 1s
	// (Redis' default is 15s). A master that does not answer for this long
	// is flagged as failing, so a replica is promoted a second or two after
	// KillMaster.
	RedisClusterNodeTimeout = time.Second
	// RedisClusterReadyTimeout bounds how long StartRedisCluster,
	// RedisCluster.KillMaster and RedisCluster.Restart wait for the cluster
	// to be healthy again: 60s.
	RedisClusterReadyTimeout = 60 * time.Second
)

// RedisCluster is a Redis Cluster of RedisClusterMasters masters with one
// replica each that belongs to one test, run from the machine's
// redis-server and built with redis-cli --cluster create. Every node
// listens on 127.0.0.1 on a free client port and a free cluster bus port
// (cluster-port), with persistence off (save "", appendonly no) and its
// nodes.conf in its own directory under t.TempDir(), so a restarted node
// rejoins with its identity. Nodes are numbered 0 to RedisClusterNodes-1
// in the order given to redis-cli, which makes 0-2 the initial masters.
//
// Cleanup SIGKILLs every node still running and, when the test failed,
// logs the tail of each node's log. Methods are safe for concurrent use and
// return errors instead of failing the test.
type RedisCluster struct {
	bin string

	mu    sync.Mutex
	nodes []*redisNode
}

// Places tried before PATH for the Redis binaries; tests replace them.
var (
	redisServerPaths = []string{"/usr/bin/redis-server"}
	redisCLIPaths    = []string{"/usr/bin/redis-cli"}
)

// redisNode is one member of a RedisCluster.
type redisNode struct {
	port, busPort int
	dir           string
	proc          *process // nil when not running
}

func (n *redisNode) addr() string { return fmt.Sprintf("127.0.0.1:%d", n.port) }

// RedisNode describes a node as the cluster sees it (CLUSTER NODES).
type RedisNode struct {
	// Index is the node's number in the RedisCluster, for Kill and Restart.
	Index int
	// Addr is host:port, for example "127.0.0.1:40123".
	Addr string
	// ID is the 40-character node ID.
	ID string
	// Master is true for a master, false for a replica.
	Master bool
	// MasterID is the ID of a replica's master; empty for a master.
	MasterID string
	// Failed is true when the cluster flags the node "fail" or "fail?".
	Failed bool
	// Slots are the hash slot ranges a master serves, inclusive:
	// [[0 5460]].
	Slots [][2]int
}

// StartRedisCluster starts RedisClusterNodes redis-server processes with
// cluster-enabled yes and cluster-node-timeout RedisClusterNodeTimeout,
// joins them with redis-cli --cluster create --cluster-replicas 1
// --cluster-yes and waits (see WaitOK) until CLUSTER INFO reports
// cluster_state:ok on every node and every replica is in sync. When redis-server or redis-cli is missing the test is skipped
// (fails under CI=true) saying so.
func StartRedisCluster(t testing.TB) *RedisCluster {
	t.Helper()
	bin, err := findBinary("redis-server", redisServerPaths...)
	if err != nil {
		Unavailable(t, "redis cluster: %v", err)
		return nil
	}
	cli, err := findBinary("redis-cli", redisCLIPaths...)
	if err != nil {
		Unavailable(t, "redis cluster: %v", err)
		return nil
	}
	ports, err := freePorts(2 * RedisClusterNodes)
	if err != nil {
		t.Fatalf("harness: redis cluster: %v", err)
	}
	c := &RedisCluster{bin: bin}
	root := t.TempDir()
	for i := range RedisClusterNodes {
		n := &redisNode{port: ports[2*i], busPort: ports[2*i+1], dir: filepath.Join(root, fmt.Sprintf("n%d", i))}
		if err := os.MkdirAll(n.dir, 0o755); err != nil {
			t.Fatalf("harness: redis cluster: %v", err)
		}
		c.nodes = append(c.nodes, n)
	}
	t.Cleanup(func() {
		for i, n := range c.nodes {
			if err := c.Kill(i); err != nil {
				t.Errorf("harness: redis cluster cleanup: %v", err)
			}
			if t.Failed() {
				t.Logf("harness: log of redis node %d (%s):\n%s", i, n.addr(), logTail(filepath.Join(n.dir, "redis.log")))
			}
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), RedisClusterReadyTimeout)
	defer cancel()
	for i := range c.nodes {
		if err := c.start(ctx, i); err != nil {
			t.Fatalf("harness: redis cluster: %v", err)
		}
	}
	args := []string{"--cluster", "create"}
	for _, n := range c.nodes {
		args = append(args, n.addr())
	}
	args = append(args, "--cluster-replicas", "1", "--cluster-yes")
	out, err := exec.CommandContext(ctx, cli, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("harness: redis-cli %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if err := c.WaitOK(ctx); err != nil {
		t.Fatalf("harness: redis cluster: %v\nredis-cli output:\n%s", err, out)
	}
	return c
}

// start launches node i and waits until it answers PING.
func (c *RedisCluster) start(ctx context.Context, i int) error {
	c.mu.Lock()
	n := c.nodes[i]
	if n.proc != nil {
		c.mu.Unlock()
		return fmt.Errorf("redis node %d (%s) is already running", i, n.addr())
	}
	args := []string{
		"--port", strconv.Itoa(n.port),
		"--bind", "127.0.0.1",
		"--cluster-enabled", "yes",
		"--cluster-config-file", filepath.Join(n.dir, "nodes.conf"),
		"--cluster-port", strconv.Itoa(n.busPort),
		"--cluster-node-timeout", strconv.FormatInt(RedisClusterNodeTimeout.Milliseconds(), 10),
		"--save", "",
		"--appendonly", "no",
		// Full syncs start at once instead of waiting 5s for more replicas.
		"--repl-diskless-sync-delay", "0",
		"--dir", n.dir,
		"--daemonize", "no",
		"--logfile", "",
	}
	p, err := startProcess(fmt.Sprintf("redis-server %s", n.addr()), c.bin, args, n.dir, filepath.Join(n.dir, "redis.log"), nil)
	if err != nil {
		c.mu.Unlock()
		return err
	}
	n.proc = p
	c.mu.Unlock()

	client := c.nodeClient(i)
	defer client.Close()
	for {
		err := client.Ping(ctx).Err()
		if err == nil {
			return nil
		}
		if p.exited() {
			return p.exitError()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("redis node %d (%s) does not answer PING: %w (last: %v)", i, n.addr(), ctx.Err(), err)
		case <-time.After(pollInterval):
		}
	}
}

// nodeClient returns a plain client on node i with retries off, for
// administrative commands; the caller closes it.
func (c *RedisCluster) nodeClient(i int) *redis.Client {
	return redis.NewClient(&redis.Options{
		Addr:         c.nodes[i].addr(),
		DialTimeout:  time.Second,
		ReadTimeout:  2 * time.Second,
		WriteTimeout: 2 * time.Second,
		MaxRetries:   -1,
		// One dial attempt: a dead node is reported at once (go-redis
		// would otherwise retry the dial with backoff).
		DialerRetries: 1,
		PoolSize:      1,
		Protocol:      2,
	})
}

// Addrs returns the addresses of all nodes, "127.0.0.1:port", as
// redis.ClusterOptions.Addrs takes them. Ports do not change across
// Restart.
func (c *RedisCluster) Addrs() []string {
	addrs := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		addrs[i] = n.addr()
	}
	return addrs
}

// RedisClusterStateReload is the ClusterStateReloadInterval of the clients
// RedisCluster.Client returns: 1s. go-redis v9 reloads its slot map only
// on MOVED, ASK or READONLY replies and otherwise every 60s by default; a
// SIGKILLed master refuses connections, which triggers no reload, so with
// the default a client keeps failing on the dead master's slots for up to a
// minute after the replica took over.
const RedisClusterStateReload = time.Second

// Client returns a go-redis v9 ClusterClient on all nodes, closed at t's
// cleanup. It reloads its slot map every RedisClusterStateReload (1s)
// instead of go-redis' 60s, and has MaxRedirects 8 (default 3) for slots
// that move during a failover; the rest are go-redis defaults.
func (c *RedisCluster) Client(t testing.TB) *redis.ClusterClient {
	t.Helper()
	cc := redis.NewClusterClient(&redis.ClusterOptions{
		Addrs:        c.Addrs(),
		DialTimeout:  DialTimeout,
		MaxRedirects: 8,

		ClusterStateReloadInterval: RedisClusterStateReload,
	})
	t.Cleanup(func() {
		if err := cc.Close(); err != nil {
			t.Errorf("harness: close redis cluster client: %v", err)
		}
	})
	return cc
}

// Running reports whether node i's process is up.
func (c *RedisCluster) Running(i int) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.nodes[i].proc
	return p != nil && !p.exited()
}

// Kill SIGKILLs node i and waits until it has exited. Its directory (with
// nodes.conf) and ports are kept for Restart. Killing a node that is not
// running does nothing.
func (c *RedisCluster) Kill(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.nodes[i]
	if n.proc == nil {
		return nil
	}
	err := n.proc.kill()
	n.proc = nil
	return err
}

// Restart starts node i again after Kill, on the same ports and
// nodes.conf, so it rejoins the cluster under its old ID (a former master
// comes back as a replica of the node promoted in its place), and waits up
// to RedisClusterReadyTimeout (or ctx) until the cluster is healthy as
// WaitOK defines it and no node sees it as failing. Its data is gone
// (persistence is off); a replica resyncs from its master.
func (c *RedisCluster) Restart(ctx context.Context, i int) error {
	if c.Running(i) {
		return fmt.Errorf("restart redis node %d: it is running; Kill it first", i)
	}
	if err := c.Kill(i); err != nil { // reap a process that exited on its own
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, RedisClusterReadyTimeout)
	defer cancel()
	if err := c.start(ctx, i); err != nil {
		return err
	}
	return c.waitFor(ctx, fmt.Sprintf("node %d to rejoin", i), func(nodes []RedisNode) error {
		for _, n := range nodes {
			if n.Index == i && n.Failed {
				return fmt.Errorf("node %d (%s) still flagged as failing", i, n.Addr)
			}
		}
		return nil
	})
}

// WaitOK waits until CLUSTER INFO reports cluster_state:ok on every
// running node, all of them agree on the node list, roles and slot owners,
// and every running replica's link to its master is up (INFO replication:
// master_link_status:up), polling every 100ms until ctx is done.
func (c *RedisCluster) WaitOK(ctx context.Context) error {
	return c.waitFor(ctx, "cluster_state:ok", func([]RedisNode) error { return nil })
}

// waitFor polls until every running node is in state ok, all of them
// report the same masters and slots, and cond holds for the node list.
func (c *RedisCluster) waitFor(ctx context.Context, what string, cond func([]RedisNode) error) error {
	var last error
	for {
		nodes, err := c.consistentNodes(ctx)
		if err == nil {
			err = cond(nodes)
		}
		if err == nil {
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("redis cluster: wait for %s: %w (last: %v)", what, ctx.Err(), last)
		case <-time.After(pollInterval):
		}
	}
}

// consistentNodes returns the node list when every running node reports
// cluster_state:ok and the same masters, slots and failure flags.
func (c *RedisCluster) consistentNodes(ctx context.Context) ([]RedisNode, error) {
	var first []RedisNode
	var firstView string
	running := false
	for i := range c.nodes {
		if !c.Running(i) {
			continue
		}
		running = true
		nodes, view, err := c.nodeView(ctx, i)
		if err != nil {
			return nil, err
		}
		if first == nil {
			first, firstView = nodes, view
		} else if view != firstView {
			return nil, fmt.Errorf("nodes disagree: node %d sees %s, node %d sees %s", i, view, first[0].Index, firstView)
		}
	}
	if !running {
		return nil, fmt.Errorf("no node is running")
	}
	return first, nil
}

// nodeView asks node i for CLUSTER INFO and CLUSTER NODES. view summarises
// the masters and slots so that views of different nodes can be compared.
func (c *RedisCluster) nodeView(ctx context.Context, i int) (nodes []RedisNode, view string, err error) {
	client := c.nodeClient(i)
	defer client.Close()
	info, err := client.ClusterInfo(ctx).Result()
	if err != nil {
		return nil, "", fmt.Errorf("node %d: CLUSTER INFO: %w", i, err)
	}
	if !strings.Contains(info, "cluster_state:ok") {
		return nil, "", fmt.Errorf("node %d: cluster_state is not ok", i)
	}
	repl, err := client.Info(ctx, "replication").Result()
	if err != nil {
		return nil, "", fmt.Errorf("node %d: INFO replication: %w", i, err)
	}
	if strings.Contains(repl, "role:slave") && !strings.Contains(repl, "master_link_status:up") {
		return nil, "", fmt.Errorf("node %d: replica not in sync with its master (master_link_status is not up)", i)
	}
	raw, err := client.ClusterNodes(ctx).Result()
	if err != nil {
		return nil, "", fmt.Errorf("node %d: CLUSTER NODES: %w", i, err)
	}
	nodes, err = c.parseNodes(raw)
	if err != nil {
		return nil, "", fmt.Errorf("node %d: %w", i, err)
	}
	if len(nodes) != len(c.nodes) {
		return nil, "", fmt.Errorf("node %d knows %d nodes, want %d", i, len(nodes), len(c.nodes))
	}
	var b strings.Builder
	for _, n := range nodes {
		fmt.Fprintf(&b, "[%d master=%v failed=%v slots=%v]", n.Index, n.Master, n.Failed, n.Slots)
	}
	return nodes, b.String(), nil
}

// parseNodes parses CLUSTER NODES output, ordered by node index.
func (c *RedisCluster) parseNodes(raw string) ([]RedisNode, error) {
	byAddr := map[string]int{}
	for i, n := range c.nodes {
		byAddr[n.addr()] = i
	}
	nodes := make([]RedisNode, 0, len(c.nodes))
	for line := range strings.Lines(raw) {
		f := strings.Fields(line)
		if len(f) < 8 {
			continue
		}
		addr, _, _ := strings.Cut(f[1], "@")
		idx, ok := byAddr[addr]
		if !ok {
			return nil, fmt.Errorf("CLUSTER NODES lists unknown node %s", f[1])
		}
		flags := strings.Split(f[2], ",")
		n := RedisNode{Index: idx, Addr: addr, ID: f[0]}
		for _, fl := range flags {
			switch fl {
			case "master":
				n.Master = true
			case "fail", "fail?":
				n.Failed = true
			}
		}
		if !n.Master && f[3] != "-" {
			n.MasterID = f[3]
		}
		for _, s := range f[8:] {
			if strings.HasPrefix(s, "[") { // slot being imported or migrated
				continue
			}
			lo, hi, isRange := strings.Cut(s, "-")
			a, err := strconv.Atoi(lo)
			if err != nil {
				return nil, fmt.Errorf("CLUSTER NODES slot %q: %w", s, err)
			}
			b := a
			if isRange {
				if b, err = strconv.Atoi(hi); err != nil {
					return nil, fmt.Errorf("CLUSTER NODES slot %q: %w", s, err)
				}
			}
			n.Slots = append(n.Slots, [2]int{a, b})
		}
		nodes = append(nodes, n)
	}
	// Order by index.
	ordered := make([]RedisNode, 0, len(nodes))
	for i := range c.nodes {
		for _, n := range nodes {
			if n.Index == i {
				ordered = append(ordered, n)
			}
		}
	}
	return ordered, nil
}

// Nodes returns every node with its role as the running nodes agree on it,
// waiting (until ctx is done) while they disagree or a node is not in
// cluster_state:ok.
func (c *RedisCluster) Nodes(ctx context.Context) ([]RedisNode, error) {
	var nodes []RedisNode
	err := c.waitFor(ctx, "a consistent view", func(n []RedisNode) error { nodes = n; return nil })
	return nodes, err
}

// Slot returns the hash slot of key (CLUSTER KEYSLOT, asked of a running
// node), 0 to 16383.
func (c *RedisCluster) Slot(ctx context.Context, key string) (int, error) {
	for i := range c.nodes {
		if !c.Running(i) {
			continue
		}
		client := c.nodeClient(i)
		slot, err := client.ClusterKeySlot(ctx, key).Result()
		_ = client.Close()
		if err != nil {
			return -1, fmt.Errorf("CLUSTER KEYSLOT %q on node %d: %w", key, i, err)
		}
		return int(slot), nil
	}
	return -1, fmt.Errorf("CLUSTER KEYSLOT: no node is running")
}

// masterOf returns the live master serving slot in nodes.
func masterOf(nodes []RedisNode, slot int) (RedisNode, bool) {
	for _, n := range nodes {
		if !n.Master || n.Failed {
			continue
		}
		for _, r := range n.Slots {
			if r[0] <= slot && slot <= r[1] {
				return n, true
			}
		}
	}
	return RedisNode{}, false
}

// KillMaster SIGKILLs the master serving key's hash slot and waits up to
// RedisClusterReadyTimeout (or ctx) until its replica has been promoted:
// another node is the slot's master and the cluster is healthy as WaitOK
// defines it. It returns the killed and the promoted node.
// Writes the killed master had not replicated are lost, as in production;
// see WAIT.
func (c *RedisCluster) KillMaster(ctx context.Context, key string) (killed, promoted RedisNode, err error) {
	slot, err := c.Slot(ctx, key)
	if err != nil {
		return RedisNode{}, RedisNode{}, err
	}
	return c.KillMasterOfSlot(ctx, slot)
}

// KillMasterOfSlot is KillMaster for a hash slot (0 to 16383).
func (c *RedisCluster) KillMasterOfSlot(ctx context.Context, slot int) (killed, promoted RedisNode, err error) {
	ctx, cancel := context.WithTimeout(ctx, RedisClusterReadyTimeout)
	defer cancel()
	nodes, err := c.Nodes(ctx)
	if err != nil {
		return RedisNode{}, RedisNode{}, err
	}
	killed, ok := masterOf(nodes, slot)
	if !ok {
		return RedisNode{}, RedisNode{}, fmt.Errorf("redis cluster: no live master serves slot %d", slot)
	}
	if err := c.Kill(killed.Index); err != nil {
		return killed, RedisNode{}, err
	}
	err = c.waitFor(ctx, fmt.Sprintf("a new master of slot %d", slot), func(nodes []RedisNode) error {
		m, ok := masterOf(nodes, slot)
		if !ok || m.Index == killed.Index {
			return fmt.Errorf("slot %d not yet served by a new master", slot)
		}
		promoted = m
		return nil
	})
	return killed, promoted, err
}

// WaitReplicated waits until every running master's replicas have
// acknowledged all of its writes so far: in INFO replication each
// slaveN line is state=online with offset equal to master_repl_offset. It
// is WAIT for writes made through connections the test does not hold
// (a store's pool). It polls every 100ms until ctx is done.
func (c *RedisCluster) WaitReplicated(ctx context.Context) error {
	var last error
	for {
		last = c.replicated(ctx)
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("redis cluster: wait for replicas to catch up: %w (last: %v)", ctx.Err(), last)
		case <-time.After(pollInterval):
		}
	}
}

// replicated returns nil when every running master's replicas are at its
// replication offset.
func (c *RedisCluster) replicated(ctx context.Context) error {
	for i := range c.nodes {
		if !c.Running(i) {
			continue
		}
		client := c.nodeClient(i)
		info, err := client.Info(ctx, "replication").Result()
		_ = client.Close()
		if err != nil {
			return fmt.Errorf("node %d: INFO replication: %w", i, err)
		}
		if !strings.Contains(info, "role:master") {
			continue
		}
		var offset string
		var replicas []string
		for line := range strings.Lines(info) {
			line = strings.TrimSpace(line)
			if v, ok := strings.CutPrefix(line, "master_repl_offset:"); ok {
				offset = v
			}
			if strings.HasPrefix(line, "slave") && strings.Contains(line, ":ip=") {
				replicas = append(replicas, line)
			}
		}
		for _, r := range replicas {
			if !strings.Contains(r, ",state=online,") || !strings.Contains(r, ",offset="+offset+",") {
				return fmt.Errorf("node %d at offset %s: replica %s", i, offset, r)
			}
		}
	}
	return nil
}
