package natskv_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/natskv"
	"github.com/idemq/idemq/dedupe/storetest"
	"github.com/idemq/idemq/integration/harness"
)

// EnvClusterKnownDefects, when set to 1, runs the cluster tests that are
// skipped by default on servers with a known clustering defect.
const EnvClusterKnownDefects = "IDEMQ_NATS_CLUSTER_KNOWN_DEFECTS"

// serializedSince is the first nats-server minor release in which
// Nats-Expected-Last-Subject-Sequence (what KeyValue.Update sends) is part
// of the clustered write rather than a pre-check on the leader. Before it,
// concurrent Updates with one revision may all succeed on a replicated
// bucket (nats-io/nats-server#4320, reported against 2.9.15-2.9.20).
var serializedSince = [2]int{2, 10}

// skipKnownDefect skips t on a server older than serializedSince unless
// EnvClusterKnownDefects=1.
func skipKnownDefect(t *testing.T, version string) {
	t.Helper()
	if os.Getenv(EnvClusterKnownDefects) == "1" {
		return
	}
	major, minor := parseVersion(version)
	if major < serializedSince[0] || major == serializedSince[0] && minor < serializedSince[1] {
		t.Skipf("nats-server %s does not serialise KV Update's expected revision in clustered streams "+
			"(nats-io/nats-server#4320): concurrent Updates with one revision all succeed, so no store can "+
			"be correct on a replicated bucket; %s=1 runs it anyway", version, EnvClusterKnownDefects)
	}
}

// parseVersion returns the major and minor numbers of "2.9.10".
func parseVersion(v string) (major, minor int) {
	f := strings.SplitN(v, ".", 3)
	if len(f) >= 2 {
		major, _ = strconv.Atoi(f[0])
		minor, _ = strconv.Atoi(f[1])
	}
	return major, minor
}

// replicatedFactory makes one store per subtest, each in its own bucket
// with Replicas: 3, and waits until the new bucket serves reads.
func replicatedFactory(env *harness.NATSEnv) storetest.Factory {
	n := 0
	return func(t *testing.T, now func() time.Time) dedupe.Store {
		n++
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := natskv.New(ctx, env.JS, natskv.Config{Bucket: env.Name(fmt.Sprint("dedupe", n)), Replicas: 3, Now: now})
		if err != nil {
			t.Fatal(err)
		}
		if err := harness.WaitKVServed(ctx, env.JS, s.Bucket()); err != nil {
			t.Fatal(err)
		}
		return s
	}
}

// TestCluster runs, on R3 buckets of a 3-node cluster of the machine's
// nats-server (2.9 on the project's machines) and of the current
// nats-server in process: a check that the server serialises concurrent
// KV Updates with one revision, which the store's compare-and-set relies
// on, then the conformance suite.
func TestCluster(t *testing.T) {
	for _, flavour := range []struct {
		name  string
		start func(testing.TB) *harness.NATSCluster
	}{{"binary", harness.StartNATSCluster}, {"embedded", harness.StartEmbeddedNATSCluster}} {
		t.Run(flavour.name, func(t *testing.T) {
			t.Parallel()
			c := flavour.start(t)
			env := c.Env(t)
			version := env.Conn.ConnectedServerVersion()
			t.Logf("nats-server %s, cluster %s", version, c.Name)
			t.Run("UpdateSerialised", func(t *testing.T) {
				skipKnownDefect(t, version)
				testUpdateSerialised(t, env)
			})
			t.Run("Conformance", func(t *testing.T) {
				skipKnownDefect(t, version)
				storetest.Run(t, replicatedFactory(env))
			})
		})
	}
}

// testUpdateSerialised sends concurrent Updates of one key with the same
// revision to an R3 bucket, several rounds: exactly one must win each
// round, the others failing with ErrKeyRevisionMismatch ("wrong last
// sequence").
func testUpdateSerialised(t *testing.T, env *harness.NATSEnv) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	kv, err := env.JS.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: env.Name("cas"), Replicas: 3, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	if err := harness.WaitKVServed(ctx, env.JS, kv.Bucket()); err != nil {
		t.Fatal(err)
	}
	rev, err := kv.Create(ctx, "k", []byte("0"))
	if err != nil {
		t.Fatal(err)
	}
	const writers = storetest.ConcurrentClaimers
	for round := range 5 {
		var (
			mu      sync.Mutex
			won     []uint64
			other   []error
			wg      sync.WaitGroup
			release = make(chan struct{})
		)
		for w := range writers {
			wg.Go(func() {
				<-release
				r, err := kv.Update(ctx, "k", fmt.Appendf(nil, "r%d-w%d", round, w), rev)
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					won = append(won, r)
				case errors.Is(err, jetstream.ErrKeyRevisionMismatch): // 10071, or 10164 on R>1
				default:
					other = append(other, err)
				}
			})
		}
		close(release)
		wg.Wait()
		if len(other) > 0 {
			t.Fatalf("round %d: unexpected Update errors: %v", round, other)
		}
		if len(won) != 1 {
			t.Fatalf("round %d: %d of %d concurrent Updates with revision %d succeeded (revisions %v), want exactly 1",
				round, len(won), writers, rev, won)
		}
		rev = won[0]
	}
}
