package harness

import (
	"context"
	"os"
	"testing"

	"github.com/redis/go-redis/v9"
	tcredis "github.com/testcontainers/testcontainers-go/modules/redis"
)

// RedisImage is the image the testcontainers fallback runs when
// IDEMQ_REDIS_URL is unset and Docker answers.
const RedisImage = "redis:7-alpine"

// redisScanCount is the COUNT hint for the cleanup SCAN and the batch size
// of each UNLINK.
const redisScanCount = 500

// RedisEnv is one test's view of a Redis server. The test must start every
// key it writes with Prefix; cleanup deletes those keys.
type RedisEnv struct {
	// URL is the server URL, for subprocesses and second clients.
	URL string
	// Client is a go-redis v9 client owned by the harness; closed in cleanup.
	Client *redis.Client
	// Prefix is unique per test, for example "idemq-test:T3F9A1C2:".
	Prefix string
}

// Redis returns a Redis environment: the server in IDEMQ_REDIS_URL, else a
// testcontainers Redis container when a Docker engine answers, else it skips
// the test (fails it under CI=true) saying why. Cleanup deletes every key
// starting with Prefix (SCAN + UNLINK), then closes the client.
func Redis(t testing.TB) *RedisEnv {
	t.Helper()
	url := os.Getenv(EnvRedisURL)
	if url == "" {
		url = container(t, "redis", EnvRedisURL,
			func(ctx context.Context) (*tcredis.RedisContainer, error) { return tcredis.Run(ctx, RedisImage) },
			func(ctx context.Context, c *tcredis.RedisContainer) (string, error) { return c.ConnectionString(ctx) })
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		Unavailable(t, "redis: %s=%q is not a Redis URL: %v", EnvRedisURL, url, err)
		return nil
	}
	opts.DialTimeout = DialTimeout
	// Probe with retries off, so a dead server is reported at once; the
	// test's own client keeps go-redis' default retries.
	probeOpts := *opts
	probeOpts.MaxRetries = -1
	probeOpts.DialerRetries = 1
	probe := redis.NewClient(&probeOpts)
	ctx, cancel := context.WithTimeout(context.Background(), DialTimeout)
	defer cancel()
	err = probe.Ping(ctx).Err()
	_ = probe.Close()
	if err != nil {
		Unavailable(t, "redis unreachable at %s (%s): %v", opts.Addr, EnvRedisURL, err)
		return nil
	}
	client := redis.NewClient(opts)
	env := &RedisEnv{URL: url, Client: client, Prefix: "idemq-test:" + newPrefix(t) + ":"}
	t.Cleanup(func() {
		deleteRedisPrefix(t, env)
		if err := env.Client.Close(); err != nil {
			t.Errorf("harness: close redis client: %v", err)
		}
	})
	return env
}

// deleteRedisPrefix removes every key starting with env.Prefix.
func deleteRedisPrefix(t testing.TB, env *RedisEnv) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), CleanupTimeout)
	defer cancel()
	// The prefix holds only [A-Za-z0-9:-], none of which is a glob
	// metacharacter, so it needs no escaping in MATCH.
	iter := env.Client.Scan(ctx, 0, env.Prefix+"*", redisScanCount).Iterator()
	batch := make([]string, 0, redisScanCount)
	flush := func() bool {
		if len(batch) == 0 {
			return true
		}
		if err := env.Client.Unlink(ctx, batch...).Err(); err != nil {
			t.Errorf("harness: unlink redis keys with prefix %s: %v", env.Prefix, err)
			return false
		}
		batch = batch[:0]
		return true
	}
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == redisScanCount && !flush() {
			return
		}
	}
	if err := iter.Err(); err != nil {
		t.Errorf("harness: scan redis keys with prefix %s: %v", env.Prefix, err)
		return
	}
	flush()
}
