package natskv_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/natskv"
	"github.com/idemq/idemq/dedupe/storetest"
	"github.com/idemq/idemq/integration/harness"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// factory makes one store per subtest, each in its own bucket on env.
func factory(env *harness.NATSEnv) storetest.Factory {
	n := 0
	return func(t *testing.T, now func() time.Time) dedupe.Store {
		n++
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		s, err := natskv.New(ctx, env.JS, natskv.Config{Bucket: env.Name(fmt.Sprint("dedupe", n)), Now: now})
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
}

// TestConformanceServer runs the suite on the server in IDEMQ_NATS_URL
// (NATS 2.9 on the project's machines).
func TestConformanceServer(t *testing.T) {
	env := harness.NATS(t)
	t.Logf("server %s", env.Conn.ConnectedServerVersion())
	storetest.Run(t, factory(env))
}

// TestConformanceEmbedded runs the suite on the current nats-server,
// in process.
func TestConformanceEmbedded(t *testing.T) {
	env := harness.EmbeddedNATS(t)
	t.Logf("server %s", env.Conn.ConnectedServerVersion())
	storetest.Run(t, factory(env))
}

func TestBucketCreatedOrBound(t *testing.T) {
	env := harness.EmbeddedNATS(t)
	ctx := context.Background()
	name := env.Name("bound")
	s1, err := natskv.New(ctx, env.JS, natskv.Config{Bucket: name, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	c, err := s1.Claim(ctx, "k", "fp", time.Second, time.Minute)
	if err != nil || c.Status != dedupe.Acquired {
		t.Fatalf("claim: %v %v", c.Status, err)
	}
	// A second store binds to the bucket and its TTL, whatever it asks for.
	s2, err := natskv.New(ctx, env.JS, natskv.Config{Bucket: name, TTL: 5 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := s2.Claim(ctx, "k", "fp", time.Second, time.Minute); err != nil || c.Status != dedupe.Busy {
		t.Fatalf("claim through the second store: %v %v, want busy", c.Status, err)
	}
	if _, err := s2.Claim(ctx, "k2", "fp", time.Second, 2*time.Hour); !errors.Is(err, natskv.ErrRetentionTooLong) || !errors.Is(err, dedupe.ErrInvalidLease) {
		t.Errorf("retention beyond the bucket TTL: %v, want ErrRetentionTooLong (an ErrInvalidLease)", err)
	}
	if err := s1.Extend(ctx, "k", c.Token, 2*time.Hour); !errors.Is(err, natskv.ErrRetentionTooLong) {
		t.Errorf("lease beyond the bucket TTL: %v, want ErrRetentionTooLong", err)
	}
	st, err := env.JS.KeyValue(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	status, err := st.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if status.TTL() != time.Hour || status.History() != 1 {
		t.Errorf("bucket TTL %v history %d, want 1h and 1", status.TTL(), status.History())
	}
	if s1.Bucket() != name {
		t.Errorf("Bucket() = %q, want %q", s1.Bucket(), name)
	}
}

func TestKeysAreEncoded(t *testing.T) {
	env := harness.EmbeddedNATS(t)
	ctx := context.Background()
	s, err := natskv.New(ctx, env.JS, natskv.Config{Bucket: env.Name("keys")})
	if err != nil {
		t.Fatal(err)
	}
	kv, err := env.JS.KeyValue(ctx, env.Name("keys"))
	if err != nil {
		t.Fatal(err)
	}
	for _, key := range []string{"", "a.b", "payments:acc-1 p/42", "ключ", strings.Repeat("x", natskv.MaxInlineKey), strings.Repeat("x", natskv.MaxInlineKey+1)} {
		if _, err := s.Claim(ctx, key, "", time.Second, time.Minute); err != nil {
			t.Fatalf("claim %q: %v", key, err)
		}
		k := s.KVKey(key)
		if strings.Contains(k, ".") || len(k) > 256 {
			t.Errorf("KV key %q for %q: has a dot or is too long", k, key)
		}
		if _, err := kv.Get(ctx, k); err != nil {
			t.Errorf("record for %q not at %q: %v", key, k, err)
		}
	}
	if s.KVKey(strings.Repeat("x", 1000)) == s.KVKey(strings.Repeat("x", 1001)) {
		t.Error("long keys that differ share a KV key")
	}
}

func TestLargeResultChunksAndLostLease(t *testing.T) {
	env := harness.EmbeddedNATS(t)
	ctx := context.Background()
	var clock storetest.Clock
	name := env.Name("chunks")
	s, err := natskv.New(ctx, env.JS, natskv.Config{Bucket: name, Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	kv, err := env.JS.KeyValue(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("0123456789abcdef"), 200_000) // 3.2 MB, several chunks
	c, err := s.Claim(ctx, "k", "fp", time.Second, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Complete(ctx, "k", c.Token, dedupe.Result{Data: big}, time.Hour); err != nil {
		t.Fatal(err)
	}
	d, err := s.Claim(ctx, "k", "fp", time.Second, time.Hour)
	if err != nil || d.Status != dedupe.Duplicate || !bytes.Equal(d.Result.Data, big) {
		t.Fatalf("duplicate of a chunked result: %v, %d bytes, %v", d.Status, len(d.Result.Data), err)
	}
	if n := countKeys(t, kv, "r_"); n < 4 {
		t.Errorf("%d chunk keys for a 3.2 MB result, want at least 4", n)
	}
	// A late Complete with a stale token writes no chunks that outlive it.
	c2, err := s.Claim(ctx, "k2", "fp", time.Second, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	clock.Advance(time.Second)
	if _, err := s.Claim(ctx, "k2", "fp", time.Second, time.Hour); err != nil { // takeover
		t.Fatal(err)
	}
	before := countKeys(t, kv, "r_")
	if err := s.Complete(ctx, "k2", c2.Token, dedupe.Result{Data: big}, time.Hour); !errors.Is(err, dedupe.ErrLeaseLost) {
		t.Fatalf("stale Complete: %v, want ErrLeaseLost", err)
	}
	if after := countKeys(t, kv, "r_"); after != before {
		t.Errorf("stale Complete left %d chunk keys behind", after-before)
	}
}

func countKeys(t *testing.T, kv jetstream.KeyValue, prefix string) int {
	t.Helper()
	lister, err := kv.ListKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for k := range lister.Keys() {
		if strings.HasPrefix(k, prefix) {
			n++
		}
	}
	return n
}
