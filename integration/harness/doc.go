// Package harness gives integration tests real, isolated services: a NATS
// JetStream connection, a go-redis client and a Postgres *sql.DB, plus an
// in-process NATS server for unit tests.
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
package harness
