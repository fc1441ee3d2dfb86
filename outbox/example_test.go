package outbox_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/outbox"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func exampleDB() (*sql.DB, func()) {
	dir, err := os.MkdirTemp("", "outbox-example")
	if err != nil {
		panic(err)
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "app.db")+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)")
	if err != nil {
		panic(err)
	}
	return db, func() { _ = db.Close(); _ = os.RemoveAll(dir) }
}

// A handler adds messages in its own transaction; they commit with its
// writes. Ids come from the operation or from the causing message.
func ExampleOutbox_AddTx() {
	ctx := context.Background()
	db, done := exampleDB()
	defer done()
	ob, err := outbox.New(ctx, db, outbox.Config{})
	if err != nil {
		panic(err)
	}
	hctx := outbox.WithCause(ctx, "PAYMENTS:42", nil)
	tx, _ := db.BeginTx(hctx, nil)
	_ = ob.AddTx(hctx, tx,
		outbox.Message{ID: "completed.key-1", Subject: "payments.completed", Data: []byte(`{"ok":true}`)},
		outbox.Message{Subject: "audit.transfer"},
	)
	_ = tx.Commit()

	rows, _ := ob.List(ctx, db, nil)
	for _, r := range rows {
		fmt.Println(r.ID, r.Subject, r.State, r.Header[outbox.HeaderCausationID])
	}
	// Output:
	// completed.key-1 payments.completed pending [PAYMENTS:42]
	// PAYMENTS:42#1 audit.transfer pending [PAYMENTS:42]
}

// The inbox runs an operation once per key, in the transaction that holds
// its effects; a repeat replays the stored result.
func ExampleInbox_Handle() {
	ctx := context.Background()
	db, done := exampleDB()
	defer done()
	db.SetMaxOpenConns(1)
	store, _ := sqlstore.New(ctx, db, sqlstore.Config{})
	in, err := outbox.NewInbox(db, outbox.InboxConfig{Guard: &dedupe.Guard{Store: store}})
	if err != nil {
		panic(err)
	}
	_, _ = db.ExecContext(ctx, `CREATE TABLE accounts (id TEXT PRIMARY KEY, balance INTEGER NOT NULL)`)
	_, _ = db.ExecContext(ctx, `INSERT INTO accounts VALUES ('acc-1', 100)`)
	debit := func(ctx context.Context, tx *sql.Tx) (dedupe.Result, error) {
		_, err := tx.ExecContext(ctx, `UPDATE accounts SET balance = balance - 30 WHERE id = 'acc-1'`)
		return dedupe.Result{Data: []byte("debited 30")}, err
	}
	for range 3 {
		out, err := in.Handle(ctx, "transfer-7", "", debit)
		fmt.Println(out.Status, string(out.Result.Data), err)
	}
	var balance int
	_ = db.QueryRowContext(ctx, `SELECT balance FROM accounts WHERE id = 'acc-1'`).Scan(&balance)
	fmt.Println("balance", balance)
	// Output:
	// acquired debited 30 <nil>
	// duplicate debited 30 <nil>
	// duplicate debited 30 <nil>
	// balance 70
}

// The relay publishes committed rows with Nats-Msg-Id = id.
func ExampleNewRelay() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dir, _ := os.MkdirTemp("", "outbox-example-nats")
	defer os.RemoveAll(dir)
	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: dir, NoLog: true, NoSigs: true})
	if err != nil {
		panic(err)
	}
	srv.Start()
	defer func() { srv.Shutdown(); srv.WaitForShutdown() }()
	if !srv.ReadyForConnections(5 * time.Second) {
		panic("nats not ready")
	}
	nc, _ := nats.Connect(srv.ClientURL())
	defer nc.Close()
	js, _ := jetstream.New(nc)
	stream, _ := js.CreateStream(ctx, jetstream.StreamConfig{Name: "PAYMENTS", Subjects: []string{"payments.>"}})

	db, done := exampleDB()
	defer done()
	ob, _ := outbox.New(ctx, db, outbox.Config{})
	tx, _ := db.BeginTx(ctx, nil)
	_ = ob.AddTx(ctx, tx, outbox.Message{ID: "completed.key-1", Subject: "payments.completed", Data: []byte("paid")})
	_ = tx.Commit()

	relay, _ := outbox.NewRelay(db, outbox.JetStream(js), outbox.RelayConfig{Streams: []string{"PAYMENTS"}})
	rctx, stop := context.WithCancel(ctx)
	finished := make(chan error, 1)
	go func() { finished <- relay.Run(rctx) }()
	for relay.Stats().Published < 1 {
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	fmt.Println("run:", <-finished)

	m, _ := stream.GetMsg(ctx, 1)
	fmt.Println(m.Subject, string(m.Data), m.Header.Get(nats.MsgIdHdr))
	// Output:
	// run: <nil>
	// payments.completed paid completed.key-1
}
