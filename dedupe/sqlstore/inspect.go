package sqlstore

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strconv"

	"github.com/idemq/idemq/dedupe"
)

// Get returns the live record for key, for inspection (the CLI). It returns
// ErrNotFound when there is none or its retention is over.
func (s *Store) Get(ctx context.Context, key string) (*dedupe.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	r, err := scanRecord(s.db.QueryRow(ctx, s.qGet, []byte(key)))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("%w: %q", ErrNotFound, key)
	}
	if err != nil {
		return nil, fmt.Errorf("sqlstore: get %q: %w", key, err)
	}
	if !r.Live(s.now()) {
		return nil, fmt.Errorf("%w: %q (retention over)", ErrNotFound, key)
	}
	return r, nil
}

// Cleanup deletes records whose retention is over, limit rows per statement
// (DefaultCleanupBatch when limit <= 0), each batch in its own short
// transaction, until a batch deletes fewer than limit rows or ctx is done.
// It returns the number of rows deleted, also when it stops on an error.
// Cleanup is garbage collection only: an expired row already counts as
// absent. Run it periodically from one or several processes (on Postgres,
// concurrent cleaners skip each other's rows).
func (s *Store) Cleanup(ctx context.Context, limit int) (int64, error) {
	if limit <= 0 {
		limit = DefaultCleanupBatch
	}
	var total int64
	for {
		if err := ctx.Err(); err != nil {
			return total, err
		}
		n, err := s.db.Exec(ctx, s.qCleanup, nanos(s.now()), limit)
		if err != nil {
			return total, fmt.Errorf("sqlstore: cleanup: %w", err)
		}
		total += n
		if n < int64(limit) {
			return total, nil
		}
	}
}

var _ dedupe.Store = (*Store)(nil)

// ScanPage is how many rows each query of Scan reads: 500.
const ScanPage = 500

// Scan calls fn for every live record whose key starts with prefix ("" for
// all), in byte order of the keys, until fn returns an error (which Scan
// returns) or every record was visited. It reads ScanPage rows per query,
// each after the last key seen (keyset paging on the primary key), so a
// scan of a large table neither holds a transaction nor skips or repeats
// rows that stay put; rows written meanwhile may or may not be visited.
// For inspection (the idemq CLI); the state machine never needs it.
func (s *Store) Scan(ctx context.Context, prefix string, fn func(*dedupe.Record) error) error {
	lower := []byte(prefix)
	upper := prefixEnd(lower)
	cond := " AND expires_at > $2"
	args := []any{lower, int64(0)}
	if upper != nil {
		cond += " AND key < $3"
		args = append(args, upper)
	}
	first := "SELECT " + columns + " FROM " + s.table + " WHERE key >= $1" + cond + " ORDER BY key LIMIT " + strconv.Itoa(ScanPage)
	next := "SELECT " + columns + " FROM " + s.table + " WHERE key > $1" + cond + " ORDER BY key LIMIT " + strconv.Itoa(ScanPage)
	query := first
	for {
		args[1] = nanos(s.now())
		n, last, err := s.scanPage(ctx, query, args, fn)
		if err != nil {
			return err
		}
		if n < ScanPage {
			return nil
		}
		args[0], query = last, next
	}
}

// scanPage runs one query of Scan and returns how many rows it read and the
// last key.
func (s *Store) scanPage(ctx context.Context, query string, args []any, fn func(*dedupe.Record) error) (int, []byte, error) {
	rows, err := s.db.Query(ctx, query, args...)
	if err != nil {
		return 0, nil, fmt.Errorf("sqlstore: scan: %w", err)
	}
	defer rows.Close()
	var page []*dedupe.Record
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return 0, nil, fmt.Errorf("sqlstore: scan: %w", err)
		}
		page = append(page, r)
	}
	if err := rows.Err(); err != nil {
		return 0, nil, fmt.Errorf("sqlstore: scan: %w", err)
	}
	rows.Close() // before fn runs, which may use the database
	for _, r := range page {
		if err := fn(r); err != nil {
			return 0, nil, err
		}
	}
	if len(page) == 0 {
		return 0, nil, nil
	}
	return len(page), []byte(page[len(page)-1].Key), nil
}

// prefixEnd returns the smallest byte string greater than every string
// starting with p, or nil when there is none (p empty or all 0xff).
func prefixEnd(p []byte) []byte {
	end := bytes.Clone(p)
	for i := len(end) - 1; i >= 0; i-- {
		if end[i] < 0xff {
			end[i]++
			return end[:i+1]
		}
	}
	return nil
}
