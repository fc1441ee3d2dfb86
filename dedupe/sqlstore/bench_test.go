package sqlstore_test

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
)

// BenchmarkClaimComplete measures one Claim (its own transaction) plus one
// Complete (one conditional UPDATE) of a fresh key: the store-dedupe cost
// per message. The Baseline sub-benchmark runs the least any SQL store
// could do in the same database: one autocommit INSERT and one UPDATE of
// the same row. Report sqlstore ÷ baseline.
func BenchmarkClaimComplete(b *testing.B) {
	b.Run("sqlite", func(b *testing.B) { benchClaimComplete(b, openSQLite(b, 1)) })
	b.Run("postgres", func(b *testing.B) { benchClaimComplete(b, postgresDB(b)) })
}

func benchClaimComplete(b *testing.B, db *sql.DB) {
	ctx := context.Background()
	b.Run("Baseline", func(b *testing.B) {
		table := nextTable()
		if _, err := db.ExecContext(ctx, "CREATE TABLE "+table+" (key text PRIMARY KEY, state text NOT NULL, result bytea)"); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for i := range b.N {
			key := fmt.Sprint("key-", i)
			if _, err := db.ExecContext(ctx, "INSERT INTO "+table+" (key, state) VALUES ($1, 'in_progress')", key); err != nil {
				b.Fatal(err)
			}
			if _, err := db.ExecContext(ctx, "UPDATE "+table+" SET state = 'done', result = $2 WHERE key = $1", key, []byte("ok")); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Store", func(b *testing.B) {
		s := newStore(b, db, nil)
		b.ResetTimer()
		for i := range b.N {
			key := fmt.Sprint("key-", i)
			c, err := s.Claim(ctx, key, "fp", 30*time.Second, time.Hour)
			if err != nil || c.Status != dedupe.Acquired {
				b.Fatalf("Claim: %+v, %v", c, err)
			}
			if err := s.Complete(ctx, key, c.Token, dedupe.Result{Data: []byte("ok")}, time.Hour); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Tx", func(b *testing.B) {
		// The inbox: ClaimTx + CompleteTx in one transaction of the caller.
		s := newStore(b, db, nil)
		b.ResetTimer()
		for i := range b.N {
			key := fmt.Sprint("key-", i)
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				b.Fatal(err)
			}
			c, err := s.ClaimTx(ctx, tx, key, "fp", 30*time.Second, time.Hour)
			if err != nil || c.Status != dedupe.Acquired {
				b.Fatalf("ClaimTx: %+v, %v", c, err)
			}
			if err := s.CompleteTx(ctx, tx, key, c.Token, dedupe.Result{Data: []byte("ok")}, time.Hour); err != nil {
				b.Fatal(err)
			}
			if err := tx.Commit(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Duplicate", func(b *testing.B) {
		// A redelivery of a completed key: the claim that finds a record.
		s := newStore(b, db, nil)
		c, err := s.Claim(ctx, "dup", "fp", 30*time.Second, time.Hour)
		if err != nil {
			b.Fatal(err)
		}
		if err := s.Complete(ctx, "dup", c.Token, dedupe.Result{Data: []byte("ok")}, time.Hour); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		for range b.N {
			if c, err := s.Claim(ctx, "dup", "fp", 30*time.Second, time.Hour); err != nil || c.Status != dedupe.Duplicate {
				b.Fatalf("Claim: %+v, %v", c, err)
			}
		}
	})
}
