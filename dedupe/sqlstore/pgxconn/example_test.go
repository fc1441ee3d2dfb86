package pgxconn_test

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/dedupe/sqlstore/pgxconn"
)

// The transactional inbox on pgx: the dedupe record is claimed and
// completed in the caller's pgx transaction, next to its own writes. It
// needs a server, so it is compiled but not run (no Output comment);
// TestClaimInPgxTx runs the same calls against IDEMQ_POSTGRES_URL.
func Example() {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:5432/app")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer pool.Close()
	store, err := sqlstore.NewOn(ctx, pgxconn.Pool(pool), sqlstore.Config{})
	if err != nil {
		fmt.Println(err)
		return
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		c, err := store.ClaimIn(ctx, pgxconn.Tx(tx), "payment:p-1", "fp", 30*time.Second, 24*time.Hour)
		if err != nil || c.Status != dedupe.Acquired {
			return err // a duplicate, a conflict or busy: nothing to do here
		}
		if _, err := tx.Exec(ctx, "UPDATE accounts SET balance = balance - 100 WHERE id = 'acc-1'"); err != nil {
			return err
		}
		return store.CompleteIn(ctx, pgxconn.Tx(tx), "payment:p-1", c.Token, dedupe.Result{Data: []byte("done")}, 24*time.Hour)
	})
	fmt.Println(err)
}
