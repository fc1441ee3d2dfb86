package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/natskv"
	"github.com/idemq/idemq/dedupe/redisstore"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/integration/harness"
)

// dedupeStore is one store for the dedupe command tests: the store to fill
// and the flags that point the CLI at it.
type dedupeStore struct {
	store dedupe.Store
	flags []string
}

// eachStore runs fn against a SQLite file, Postgres, Redis and NATS KV.
func eachStore(t *testing.T, fn func(t *testing.T, s dedupeStore)) {
	t.Helper()
	eachDB(t, func(t *testing.T, db *sql.DB, url string) {
		st, err := sqlstore.New(context.Background(), db, sqlstore.Config{})
		if err != nil {
			t.Fatal(err)
		}
		fn(t, dedupeStore{st, []string{"-db", url}})
	})
	t.Run("redis", func(t *testing.T) {
		t.Parallel()
		env := harness.Redis(t)
		fn(t, dedupeStore{redisstore.New(env.Client, redisstore.Config{Prefix: env.Prefix}), []string{"-redis", env.URL, "-redis-prefix", env.Prefix}})
	})
	t.Run("natskv", func(t *testing.T) {
		t.Parallel()
		env := harness.EmbeddedNATS(t)
		bucket := env.Name("dedupe")
		st, err := natskv.New(context.Background(), env.JS, natskv.Config{Bucket: bucket})
		if err != nil {
			t.Fatal(err)
		}
		fn(t, dedupeStore{st, []string{"-nats", env.URL, "-bucket", bucket}})
	})
}

// fillDedupe stores, as the payments example's guards would: 3 done and 1
// in-progress keys of namespace payments-api, 2 failed of payments-worker.
func fillDedupe(t *testing.T, s dedupe.Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitFor)
	defer cancel()
	api := &dedupe.Guard{Store: s, Namespace: "payments-api", Lease: time.Hour, Retention: 24 * time.Hour}
	worker := &dedupe.Guard{Store: s, Namespace: "payments-worker", Lease: time.Hour, Retention: 24 * time.Hour}
	for i := range 4 {
		tk, err := api.ClaimKey(ctx, fmt.Sprintf("k-%d", i), "fp")
		if err != nil {
			t.Fatal(err)
		}
		if i < 3 {
			if err := api.Complete(ctx, tk, dedupe.Result{Data: []byte("202")}); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i := range 2 {
		tk, err := worker.ClaimKey(ctx, fmt.Sprintf("k-%d", i), "fp")
		if err != nil {
			t.Fatal(err)
		}
		if err := worker.Complete(ctx, tk, dedupe.Result{Failed: true, Data: []byte("402")}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestDedupeCommandsEveryStore(t *testing.T) {
	eachStore(t, func(t *testing.T, s dedupeStore) {
		fillDedupe(t, s.store)
		cli := func(args ...string) (int, string, string) {
			t.Helper()
			a, out, errb := testApp()
			a.now = time.Now
			ctx, cancel := context.WithTimeout(context.Background(), waitFor)
			defer cancel()
			code := a.run(ctx, append(append(args[:2:2], s.flags...), args[2:]...))
			return code, out.String(), errb.String()
		}

		code, out, errS := cli("dedupe", "get", "-namespace", "payments-api", "k-1")
		if code != exitOK || !strings.Contains(out, "key:         payments-api:k-1\n") || !strings.Contains(out, "state:       done\n") ||
			!strings.Contains(out, "attempts:    1\n") || strings.Contains(out, "fence:       -") {
			t.Fatalf("get: exit %d\n%s%s", code, out, errS)
		}
		// Without -namespace: a miss naming both namespaces.
		code, _, errS = cli("dedupe", "get", "k-1")
		for _, want := range []string{"record not found", "-namespace payments-api", "-namespace payments-worker"} {
			if code != exitError || !strings.Contains(errS, want) {
				t.Errorf("get without -namespace: exit %d, %q lacks %q", code, errS, want)
			}
		}

		code, out, errS = cli("dedupe", "list", "-namespace", "payments-api")
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if code != exitOK || len(lines) != 5 || !strings.HasPrefix(lines[0], "STATE") ||
			!strings.Contains(lines[1], "payments-api:k-0") || !strings.Contains(lines[4], "in_progress") {
			t.Fatalf("list -namespace payments-api: exit %d\n%s%s", code, out, errS)
		}
		code, out, _ = cli("dedupe", "list", "-state", "failed", "-json")
		lines = strings.Split(strings.TrimSpace(out), "\n")
		var v recordView
		if code != exitOK || len(lines) != 2 || json.Unmarshal([]byte(lines[0]), &v) != nil ||
			v.Key != "payments-worker:k-0" || v.State != "failed" || v.Fence == 0 || v.ResultSize != 3 {
			t.Fatalf("list -state failed -json: exit %d %+v\n%s", code, v, out)
		}
		if code, out, _ = cli("dedupe", "list", "-limit", "2"); code != exitOK || len(strings.Split(strings.TrimSpace(out), "\n")) != 3 {
			t.Errorf("list -limit 2: exit %d\n%s", code, out)
		}
		if code, out, _ = cli("dedupe", "list", "-namespace", "nobody"); code != exitOK || !strings.Contains(out, "no live records") {
			t.Errorf("list of an empty namespace: exit %d\n%s", code, out)
		}

		code, out, _ = cli("dedupe", "count", "-json")
		var c countView
		if code != exitOK || json.Unmarshal([]byte(out), &c) != nil || c.Total != 6 || c.ByState["done"] != 3 ||
			c.ByState["in_progress"] != 1 || c.ByState["failed"] != 2 || c.ByNamespace["payments-api"] != 4 || c.ByNamespace["payments-worker"] != 2 {
			t.Fatalf("count -json: exit %d %+v\n%s", code, c, out)
		}
		if code, out, _ = cli("dedupe", "count", "-namespace", "payments-worker"); code != exitOK ||
			!strings.Contains(out, "2 live records") || !strings.Contains(out, "payments-worker") {
			t.Errorf("count -namespace: exit %d\n%s", code, out)
		}
	})
}

func TestDedupeMissingStore(t *testing.T) {
	// A database without the table, a bucket that does not exist: errors
	// naming the flags, and nothing created.
	path := filepath.Join(t.TempDir(), "fresh.db")
	db, err := sql.Open("sqlite", "file:"+path)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	code, _, errS := runCLI(t, "dedupe", "list", "-db", "sqlite:"+filepath.Join(t.TempDir(), "none.db"))
	if code != exitError || !strings.Contains(errS, "no SQLite database at") {
		t.Errorf("list on a missing SQLite file: exit %d %q", code, errS)
	}
	code, _, errS = runCLI(t, "dedupe", "list", "-db", "sqlite:"+path)
	if code != exitError || !strings.Contains(errS, `no dedupe table "idemq_dedupe"`) || !strings.Contains(errS, "-table NAME") {
		t.Errorf("list on a fresh database: exit %d %q", code, errS)
	}
	ctx := context.Background()
	if tableExists(ctx, db, "idemq_dedupe") {
		t.Error("the dedupe table was created")
	}
	env := harness.EmbeddedNATS(t)
	bucket := env.Name("none")
	code, _, errS = runCLI(t, "dedupe", "count", "-nats", env.URL, "-bucket", bucket)
	if code != exitError || !strings.Contains(errS, "KV bucket not found") || !strings.Contains(errS, "-bucket NAME") {
		t.Errorf("count on a missing bucket: exit %d %q", code, errS)
	}
	if _, err := env.JS.KeyValue(ctx, bucket); err == nil {
		t.Error("the bucket was created")
	}
}

func TestOutboxStatsFreshDatabase(t *testing.T) {
	eachDB(t, func(t *testing.T, db *sql.DB, url string) {
		if err := db.Ping(); err != nil { // creates the SQLite file
			t.Fatal(err)
		}
		for _, cmd := range [][]string{{"outbox", "stats"}, {"outbox", "failed"}, {"outbox", "retry", "-all-failed"}} {
			code, out, errS := runCLI(t, append(cmd, "-db", url)...)
			for _, want := range []string{`no outbox table "idemq_outbox"`, "-table NAME", "-db URL"} {
				if code != exitError || !strings.Contains(errS, want) {
					t.Errorf("%s on a fresh database: exit %d, stderr %q lacks %q (stdout %q)", strings.Join(cmd, " "), code, errS, want, out)
				}
			}
			if strings.Contains(errS, "relation") {
				t.Errorf("%s: the driver's error leaks through: %q", strings.Join(cmd, " "), errS)
			}
		}
		if tableExists(context.Background(), db, "idemq_outbox") {
			t.Error("the outbox table was created")
		}
	})
}
