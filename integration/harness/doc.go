// Package harness gives integration tests real, isolated services: a NATS
// JetStream connection, a go-redis client and a Postgres *sql.DB, plus an
// in-process NATS server for unit tests, and clusters and servers of a
// test's own that it may crash and restart.
//
// It is an ordinary package imported by _test.go files across the module; it
// has no tests of its own in other packages' binaries and no global state
// beyond what the libraries it wraps keep.
//
// # Where services come from
//
// For each service the source is chosen in this order:
//
//  1. The environment variable: IDEMQ_NATS_URL, IDEMQ_REDIS_URL or
//     IDEMQ_POSTGRES_URL. The service must answer within a few seconds.
//  2. When the variable is unset and a Docker engine answers, a container
//     started with the testcontainers-go module for that service. The
//     container belongs to the test and is terminated in its cleanup, so
//     prefer the variables when running many tests.
//  3. Otherwise the test is skipped with the reason — but when CI is true
//     (CI=true, as .ci/run sets it) it fails instead, so a CI run can never
//     pass by skipping everything.
//
// RequireService applies the same rule for a test that only needs a URL (for
// example to hand it to a subprocess); it does not start containers.
//
// # Isolation
//
// Every environment gets a fresh random prefix, so tests may run in parallel
// against one shared server:
//
//   - NATS: NATSEnv.Name and NATSEnv.Subject build stream, consumer, KV bucket
//     names and subjects; cleanup deletes every stream whose name starts with
//     the prefix and every KV bucket or object store whose name does.
//   - Redis: keys must start with RedisEnv.Prefix; cleanup deletes them.
//   - Postgres: a fresh schema per test, reached through search_path in both
//     PostgresEnv.DB and PostgresEnv.URL; cleanup drops it with CASCADE.
//
// EmbeddedNATS runs nats-server in process with JetStream and a store in
// t.TempDir(); EmbeddedNATSServer gives a test that restarts a server full
// control over the store directory and port.
//
// # Clusters and servers a test may crash
//
// For tests of failover, a test can start services of its own that nothing
// else shares, on 127.0.0.1 on free ports with their data under
// t.TempDir(). They are child processes (or, for the embedded NATS cluster,
// in-process servers) that cleanup kills by pid; they get SIGKILL if the
// test binary dies. When a binary is missing the test is skipped, or fails
// under CI=true. The machine's shared servers (NATS 4222, Redis 6379,
// Postgres 5432) are never touched.
//
//   - StartNATSCluster: three nodes of the machine's nats-server binary;
//     StartEmbeddedNATSCluster: three in-process nodes of the nats-server/v2
//     module. NATSCluster.Env connects to all of them; KillStreamLeader,
//     WaitStreamLeader, Restart and WaitStreamCurrent drive a failover of a
//     stream or KV bucket (KVStream names its stream) with Replicas: 3.
//   - StartRedisCluster: three masters with a replica each, built with
//     redis-cli --cluster create. RedisCluster.Client returns a
//     *redis.ClusterClient; KillMaster crashes the master of a key's slot
//     and returns once its replica has taken over; Restart brings the node
//     back as a replica.
//   - StartPostgres: a server made with initdb (run as the postgres OS user
//     when the test runs as root); Stop(PostgresFast or PostgresImmediate),
//     Start and Restart (an immediate stop, i.e. a crash, then a start).
//
// A failover test reads like:
//
//	c := harness.StartNATSCluster(t)
//	env := c.Env(t)
//	// ... create a stream with Replicas: 3, publish ...
//	old, err := c.KillStreamLeader(ctx, env.JS, stream)
//	_, err = c.WaitStreamLeader(ctx, env.JS, stream, old)
//	// ... publish again (retrying while the client reconnects) ...
//	err = c.Restart(ctx, old)
//	err = c.WaitStreamCurrent(ctx, env.JS, stream)
//
// The harness' own tests of these helpers take about 25s on two cores,
// the NATS elections (4-9s after a SIGKILL) and the Redis failover (about
// two cluster-node-timeouts) being most of it, so they run in every go test
// run and need no flag.
package harness
