package harness

import (
	"strings"
	"testing"
)

// TestClusterHelpersWithoutBinaries checks that each helper ends the test
// through Unavailable, naming the missing binary, when it cannot find it:
// a skip normally, a failure under CI=true. It replaces package variables,
// so it must not run in parallel; the parallel tests only start once it
// has finished and restored them.
func TestClusterHelpersWithoutBinaries(t *testing.T) {
	saved := [][]string{natsServerPaths, redisServerPaths, redisCLIPaths}
	savedGlob := postgresBinGlob
	t.Cleanup(func() {
		natsServerPaths, redisServerPaths, redisCLIPaths = saved[0], saved[1], saved[2]
		postgresBinGlob = savedGlob
	})
	natsServerPaths = []string{"/nonexistent/nats-server"}
	redisServerPaths = []string{"/nonexistent/redis-server"}
	redisCLIPaths = []string{"/nonexistent/redis-cli"}
	postgresBinGlob = "/nonexistent/postgresql/*/bin"
	t.Setenv("PATH", t.TempDir()) // an empty directory: nothing found in PATH

	for _, h := range []struct {
		name, want string
		start      func(testing.TB)
	}{
		{"nats", "nats-server not found at /nonexistent/nats-server", func(tb testing.TB) { StartNATSCluster(tb) }},
		{"redis", "redis-server not found at /nonexistent/redis-server", func(tb testing.TB) { StartRedisCluster(tb) }},
		{"postgres", "initdb not found", func(tb testing.TB) { StartPostgres(tb) }},
	} {
		for _, ci := range []string{"false", "true"} {
			t.Run(h.name+"/CI="+ci, func(t *testing.T) {
				t.Setenv(EnvCI, ci)
				f, stopped := runFake(t, h.start)
				if !stopped {
					t.Fatal("helper returned without its binary")
				}
				if wantFail := ci == "true"; f.failed != wantFail || f.skipped == wantFail {
					t.Errorf("failed=%v skipped=%v, want failed=%v", f.failed, f.skipped, wantFail)
				}
				if !strings.Contains(f.msg, h.want) {
					t.Errorf("message %q does not say %q", f.msg, h.want)
				}
			})
		}
	}
}
