package harness

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"
)

func TestPostgresServer(t *testing.T) {
	t.Parallel()
	p := StartPostgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if !strings.HasPrefix(p.URL, "postgres://postgres@127.0.0.1:") || p.Port == 5432 {
		t.Fatalf("URL = %q: want an own server on loopback, not the shared one on 5432", p.URL)
	}
	db, err := sql.Open("pgx", p.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, "CREATE TABLE t (id int PRIMARY KEY)"); err != nil {
		t.Fatalf("create table: %v", err)
	}
	if _, err := db.ExecContext(ctx, "INSERT INTO t VALUES (1)"); err != nil {
		t.Fatalf("insert: %v", err)
	}

	if err := p.Restart(ctx); err != nil { // immediate: a crash
		t.Fatal(err)
	}
	if !p.Running() {
		t.Fatal("not running after Restart")
	}
	// The pool's connection died with the server; a query may fail once.
	var n int
	if err := retry(ctx, "query after immediate restart", func(ctx context.Context) error {
		return db.QueryRowContext(ctx, "SELECT count(*) FROM t").Scan(&n)
	}); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("%d rows after crash recovery, want 1 (a committed row was lost)", n)
	}

	if err := p.Stop(PostgresFast); err != nil {
		t.Fatal(err)
	}
	if p.Running() {
		t.Fatal("running after Stop")
	}
	if err := p.ping(ctx); err == nil {
		t.Fatal("server answers after Stop")
	}
	if err := p.Stop(PostgresFast); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := retry(ctx, "insert after fast stop and start", func(ctx context.Context) error {
		_, err := db.ExecContext(ctx, "INSERT INTO t VALUES (2)")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop("sudden"); err == nil || !p.Running() {
		t.Errorf("Stop(\"sudden\") = %v, running %v; want an error and the server left running", err, p.Running())
	}
}
