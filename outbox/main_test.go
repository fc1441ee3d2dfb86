package outbox_test

import (
	"context"
	"database/sql"
	"errors"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/outbox"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
	_ "modernc.org/sqlite"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// backend is a database the outbox suite runs against.
type backend struct {
	name string
	open func(t *testing.T) *sql.DB
}

func backends() []backend {
	return []backend{
		{"postgres", func(t *testing.T) *sql.DB { return harness.Postgres(t).DB }},
		{"sqlite", openSQLite},
	}
}

// openSQLite opens a fresh SQLite database in t.TempDir() with WAL and a
// busy timeout, closed in cleanup.
func openSQLite(t *testing.T) *sql.DB {
	t.Helper()
	path := filepath.Join(t.TempDir(), "outbox.db")
	db, err := sql.Open("sqlite", "file:"+path+"?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.Close() })
	return db
}

func forEachBackend(t *testing.T, fn func(t *testing.T, db *sql.DB)) {
	for _, b := range backends() {
		t.Run(b.name, func(t *testing.T) { fn(t, b.open(t)) })
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newOutbox(t *testing.T, db *sql.DB, opts outbox.Config) *outbox.Outbox {
	t.Helper()
	ob, err := outbox.New(ctxT(t), db, opts)
	if err != nil {
		t.Fatalf("outbox.New: %v", err)
	}
	return ob
}

// add writes msgs in one committed transaction.
func add(t testing.TB, ctx context.Context, db *sql.DB, ob *outbox.Outbox, msgs ...outbox.Message) {
	t.Helper()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback() }()
	if err := ob.AddTx(ctx, tx, msgs...); err != nil {
		t.Fatalf("AddTx: %v", err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

func createStream(t testing.TB, js jetstream.JetStream, cfg jetstream.StreamConfig) jetstream.Stream {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := js.CreateStream(ctx, cfg)
	if err != nil {
		t.Fatalf("create stream %s: %v", cfg.Name, err)
	}
	return s
}

// runRelay runs r until the test ends or stop is called; stop returns Run's
// error.
func runRelay(t testing.TB, r *outbox.Relay) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			err = <-done
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop
}

// eventually polls cond every 10ms until it holds; it fails the test after
// limit. limit bounds a failure, it is not a speed assertion.
func eventually(t testing.TB, limit time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for {
		ok, err := cond()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not reached within %v", what, limit)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// streamMsgs returns every message of stream s in stream order.
func streamMsgs(t testing.TB, ctx context.Context, s jetstream.Stream) []*jetstream.RawStreamMsg {
	t.Helper()
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatalf("get msg %d: %v", seq, err)
		}
		out = append(out, m)
	}
	return out
}

func counts(t testing.TB, ctx context.Context, db *sql.DB, ob *outbox.Outbox) map[outbox.State]int64 {
	t.Helper()
	c, err := ob.Counts(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
