package harness

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
)

// PostgresImage is the image the testcontainers fallback runs when
// IDEMQ_POSTGRES_URL is unset and Docker answers.
const PostgresImage = "postgres:16-alpine"

// PostgresEnv is one test's own schema in a Postgres database. Unqualified
// table names resolve to Schema through search_path, both in DB and in any
// connection opened with URL.
type PostgresEnv struct {
	// URL connects to the database with search_path set to Schema; it is
	// usable by subprocesses and by pgx directly (pgx turns the unknown
	// search_path query parameter into a run-time parameter).
	URL string
	// DB is a database/sql handle on the pgx stdlib driver ("pgx") whose
	// every connection has search_path = Schema. Closed in cleanup.
	DB *sql.DB
	// Schema is the fresh schema, for example "idemq_test_t3f9a1c2"; it is
	// dropped with CASCADE in cleanup.
	Schema string
}

// Postgres returns a fresh schema in the database in IDEMQ_POSTGRES_URL, else
// in a testcontainers Postgres container when a Docker engine answers, else it
// skips the test (fails it under CI=true) saying why. The schema is the only
// entry of search_path, so nothing the test creates can collide with another
// test. Cleanup closes DB and drops the schema with CASCADE.
func Postgres(t testing.TB) *PostgresEnv {
	t.Helper()
	base := os.Getenv(EnvPostgresURL)
	if base == "" {
		base = container(t, "postgres", EnvPostgresURL,
			func(ctx context.Context) (*tcpostgres.PostgresContainer, error) {
				return tcpostgres.Run(ctx, PostgresImage,
					tcpostgres.WithDatabase("test"),
					tcpostgres.WithUsername("postgres"),
					tcpostgres.WithPassword("postgres"),
					tcpostgres.BasicWaitStrategies(),
				)
			},
			func(ctx context.Context, c *tcpostgres.PostgresContainer) (string, error) {
				return c.ConnectionString(ctx, "sslmode=disable")
			})
	}

	admin, err := sql.Open("pgx", base)
	if err != nil {
		Unavailable(t, "postgres: %s is not a valid connection string: %v", EnvPostgresURL, err)
		return nil
	}
	admin.SetMaxOpenConns(1)
	ctx, cancel := context.WithTimeout(context.Background(), DialTimeout)
	defer cancel()
	if err := admin.PingContext(ctx); err != nil {
		_ = admin.Close()
		Unavailable(t, "postgres unreachable at %s (%s): %v", redactURL(base), EnvPostgresURL, err)
		return nil
	}

	schema := "idemq_test_" + strings.ToLower(newPrefix(t))
	quoted := pgx.Identifier{schema}.Sanitize()
	if _, err := admin.ExecContext(ctx, "CREATE SCHEMA "+quoted); err != nil {
		_ = admin.Close()
		t.Fatalf("harness: create schema %s: %v", schema, err)
	}
	// Registered before DB's cleanup, so it runs after DB is closed.
	t.Cleanup(func() {
		defer admin.Close()
		ctx, cancel := context.WithTimeout(context.Background(), CleanupTimeout)
		defer cancel()
		if _, err := admin.ExecContext(ctx, "DROP SCHEMA IF EXISTS "+quoted+" CASCADE"); err != nil {
			t.Errorf("harness: drop schema %s: %v", schema, err)
		}
	})

	testURL, err := withSearchPath(base, schema)
	if err != nil {
		t.Fatalf("harness: %s: %v", EnvPostgresURL, err)
	}
	db, err := sql.Open("pgx", testURL)
	if err != nil {
		t.Fatalf("harness: open postgres with search_path: %v", err)
	}
	t.Cleanup(func() {
		if err := db.Close(); err != nil {
			t.Errorf("harness: close postgres: %v", err)
		}
	})
	var current sql.NullString
	if err := db.QueryRowContext(ctx, "SELECT current_schema()").Scan(&current); err != nil {
		t.Fatalf("harness: query current_schema: %v", err)
	}
	if current.String != schema {
		t.Fatalf("harness: search_path not applied: current_schema() = %q, want %q", current.String, schema)
	}
	return &PostgresEnv{URL: testURL, DB: db, Schema: schema}
}

// withSearchPath returns conn with search_path set to schema, replacing any
// search_path it already had. conn is a URL (postgres://...) or a
// keyword/value string (host=... dbname=...).
func withSearchPath(conn, schema string) (string, error) {
	if strings.HasPrefix(conn, "postgres://") || strings.HasPrefix(conn, "postgresql://") {
		u, err := url.Parse(conn)
		if err != nil {
			return "", fmt.Errorf("parse postgres URL: %w", err)
		}
		q := u.Query()
		q.Set("search_path", schema)
		u.RawQuery = q.Encode()
		return u.String(), nil
	}
	// Keyword/value form: a later keyword overrides an earlier one.
	return strings.TrimSpace(conn) + " search_path=" + schema, nil
}

// redactURL hides the password of a postgres connection string for messages.
func redactURL(conn string) string {
	if u, err := url.Parse(conn); err == nil && u.Scheme != "" {
		return u.Redacted()
	}
	return keywordPassword.ReplaceAllString(conn, "password=xxxxx")
}

// keywordPassword matches the password in a keyword/value connection string.
var keywordPassword = regexp.MustCompile(`password=('(?:[^'\\]|\\.)*'|\S+)`)
