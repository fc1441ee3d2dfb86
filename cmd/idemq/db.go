package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // registers the "pgx" database/sql driver
	_ "modernc.org/sqlite"             // registers the "sqlite" database/sql driver
)

// errBadDBURL is returned for a -db value that is neither postgres://… nor
// sqlite:PATH.
var errBadDBURL = errors.New("-db must be postgres://… or sqlite:PATH")

// pingTimeout bounds the first round trip to the database.
const pingTimeout = 10 * time.Second

// openDB opens a -db URL: postgres:// or postgresql:// through pgx, or
// sqlite:PATH through modernc.org/sqlite with a 5 s busy timeout (the
// file must exist: the CLI never creates a database). The caller closes it.
func openDB(ctx context.Context, raw string) (*sql.DB, error) {
	var db *sql.DB
	switch {
	case strings.HasPrefix(raw, "postgres://"), strings.HasPrefix(raw, "postgresql://"):
		pg, err := sql.Open("pgx", raw)
		if err != nil {
			return nil, fmt.Errorf("open postgres: %w", err)
		}
		db = pg
	case strings.HasPrefix(raw, "sqlite:"):
		path := strings.TrimPrefix(strings.TrimPrefix(raw, "sqlite:"), "//")
		if path == "" {
			return nil, fmt.Errorf("%w: empty sqlite path", errBadDBURL)
		}
		if _, err := os.Stat(path); err != nil {
			return nil, fmt.Errorf("-db: no SQLite database at %s (the CLI opens existing databases only): %w", path, err)
		}
		q := url.Values{}
		q.Add("_pragma", "busy_timeout(5000)")
		q.Set("mode", "rw")
		lite, err := sql.Open("sqlite", "file:"+path+"?"+q.Encode())
		if err != nil {
			return nil, fmt.Errorf("open sqlite: %w", err)
		}
		db = lite
	default:
		return nil, fmt.Errorf("%w: got %q", errBadDBURL, raw)
	}
	pctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	if err := db.PingContext(pctx); err != nil {
		_ = db.Close()
		return nil, fmt.Errorf("connect to database: %w", err)
	}
	return db, nil
}

// validDBURL reports whether raw names a database openDB understands.
func validDBURL(raw string) bool {
	for _, p := range []string{"postgres://", "postgresql://", "sqlite:"} {
		if strings.HasPrefix(raw, p) && len(raw) > len(p) {
			return true
		}
	}
	return false
}

// redactURL hides a password in a database or server URL for messages.
func redactURL(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.Scheme != "" && u.User != nil {
		return u.Redacted()
	}
	return raw
}
