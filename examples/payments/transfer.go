package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/idemq/idemq/retry"
)

// ErrUnknownAccount is returned by applyTransfer when from or to is not an
// account. Redelivery cannot fix it, so the worker dead-letters the message
// with reason "permanent" (the caller creates accounts before paying).
var ErrUnknownAccount = errors.New("unknown account")

// ErrInsufficientFunds is the "402 No Money!" business result: recorded once,
// replayed to duplicates, never retried.
var ErrInsufficientFunds = errors.New("402: insufficient funds")

// applyTransfer performs the non-idempotent transfer of p inside tx: it
// subtracts the amount from p.From and adds it to p.To, and appends the
// ledger row. With insufficient funds it changes no balance, appends a
// "rejected" ledger row and returns ErrInsufficientFunds. Both accounts are
// locked first, in id order, so concurrent transfers between the same two
// accounts cannot deadlock on Postgres; SQLite's immediate transactions
// serialise writers anyway.
func applyTransfer(ctx context.Context, db *database, tx *sql.Tx, key string, p payment) error {
	lock := ""
	if db.dialect == postgres {
		lock = " FOR UPDATE"
	}
	rows, err := tx.QueryContext(ctx, db.q(`SELECT id, balance FROM accounts WHERE id IN (?, ?) ORDER BY id`+lock), p.From, p.To)
	if err != nil {
		return fmt.Errorf("lock accounts: %w", err)
	}
	balances := map[string]int64{}
	for rows.Next() {
		var id string
		var b int64
		if err := rows.Scan(&id, &b); err != nil {
			rows.Close()
			return err
		}
		balances[id] = b
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return err
	}
	for _, id := range []string{p.From, p.To} {
		if _, ok := balances[id]; !ok {
			return retry.Permanent(fmt.Errorf("%w: %q", ErrUnknownAccount, id))
		}
	}
	outcome := outcomeCompleted
	if balances[p.From] < p.Amount {
		outcome = outcomeRejected
	} else {
		// The transfer itself: deliberately not idempotent.
		if _, err := tx.ExecContext(ctx, db.q(`UPDATE accounts SET balance = balance - ? WHERE id = ?`), p.Amount, p.From); err != nil {
			return fmt.Errorf("debit %s: %w", p.From, err)
		}
		if _, err := tx.ExecContext(ctx, db.q(`UPDATE accounts SET balance = balance + ? WHERE id = ?`), p.Amount, p.To); err != nil {
			return fmt.Errorf("credit %s: %w", p.To, err)
		}
	}
	if _, err := tx.ExecContext(ctx, db.q(`INSERT INTO transfers
		(idempotency_key, payment_id, from_account, to_account, amount, currency, outcome, created_at)
		VALUES (?, ?, ?, ?, ?, ?, ?, ?)`),
		key, p.PaymentID, p.From, p.To, p.Amount, p.Currency, outcome, time.Now().UnixMilli()); err != nil {
		return fmt.Errorf("append ledger row: %w", err)
	}
	if outcome == outcomeRejected {
		return ErrInsufficientFunds
	}
	return nil
}
