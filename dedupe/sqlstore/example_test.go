package sqlstore_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
)

// exampleDB opens a SQLite file in a fresh directory the way the package
// recommends: WAL, a busy timeout, one connection.
func exampleDB() (*sql.DB, func()) {
	dir, err := os.MkdirTemp("", "sqlstore-example")
	if err != nil {
		log.Fatal(err)
	}
	db, err := sql.Open("sqlite", "file:"+filepath.Join(dir, "app.db")+"?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)")
	if err != nil {
		log.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	return db, func() { _ = db.Close(); _ = os.RemoveAll(dir) }
}

// Store dedupe: claim before the handler, complete after; a redelivery is a
// Duplicate that replays the stored result.
func ExampleStore_Claim() {
	db, done := exampleDB()
	defer done()
	ctx := context.Background()
	store, err := sqlstore.New(ctx, db, sqlstore.Config{}) // table idemq_dedupe
	if err != nil {
		log.Fatal(err)
	}

	for delivery := 1; delivery <= 2; delivery++ {
		c, err := store.Claim(ctx, "payment-42", "sha256:ab12", 30*time.Second, 24*time.Hour)
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("delivery %d: %v\n", delivery, c.Status)
		switch c.Status {
		case dedupe.Acquired:
			// Run the handler, then record its result.
			err = store.Complete(ctx, "payment-42", c.Token, dedupe.Result{Data: []byte("202 Accepted")}, 24*time.Hour)
			if err != nil {
				log.Fatal(err)
			}
		case dedupe.Duplicate:
			fmt.Printf("replay %q\n", c.Result.Data)
		}
	}
	// Output:
	// delivery 1: acquired
	// delivery 2: duplicate
	// replay "202 Accepted"
}

// The transactional inbox: the dedupe record and the handler's own writes
// commit together, so the transfer happens exactly once even if the
// process dies before it acknowledges the message.
func ExampleStore_ClaimTx() {
	db, done := exampleDB()
	defer done()
	ctx := context.Background()
	store, err := sqlstore.New(ctx, db, sqlstore.Config{})
	if err != nil {
		log.Fatal(err)
	}
	if _, err := db.ExecContext(ctx, `CREATE TABLE accounts (id text PRIMARY KEY, balance integer NOT NULL);
		INSERT INTO accounts VALUES ('acc-1', 500), ('acc-2', 0)`); err != nil {
		log.Fatal(err)
	}

	handle := func(key string) error {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		defer func() { _ = tx.Rollback() }() // no-op after Commit
		c, err := store.ClaimTx(ctx, tx, key, "", 30*time.Second, 24*time.Hour)
		if err != nil {
			return err
		}
		fmt.Println(key, c.Status)
		if c.Status != dedupe.Acquired {
			return nil // Duplicate: acknowledge without running again
		}
		if _, err := tx.ExecContext(ctx, `UPDATE accounts SET balance = balance - 100 WHERE id = 'acc-1'`); err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `UPDATE accounts SET balance = balance + 100 WHERE id = 'acc-2'`); err != nil {
			return err
		}
		if err := store.CompleteTx(ctx, tx, key, c.Token, dedupe.Result{}, 24*time.Hour); err != nil {
			return err
		}
		return tx.Commit() // then acknowledge the message
	}
	for _, key := range []string{"transfer-1", "transfer-1"} { // delivered twice
		if err := handle(key); err != nil {
			log.Fatal(err)
		}
	}
	var balance int
	if err := db.QueryRowContext(ctx, `SELECT balance FROM accounts WHERE id = 'acc-2'`).Scan(&balance); err != nil {
		log.Fatal(err)
	}
	fmt.Println("acc-2 balance:", balance)
	// Output:
	// transfer-1 acquired
	// transfer-1 duplicate
	// acc-2 balance: 100
}
