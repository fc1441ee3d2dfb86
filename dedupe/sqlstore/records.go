package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/storekit"
)

// validToken reports whether token can be a stored token: non-empty text
// (tokens are hex from storekit.NewToken).
func validToken(token string) bool {
	return token != "" && utf8.ValidString(token) && strings.IndexByte(token, 0) < 0
}

// nanos converts a time to Unix nanoseconds, the zero time to 0.
func nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return t.UnixNano()
}

// fromNanos is the inverse of nanos.
func fromNanos(n int64) time.Time {
	if n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

func recordArgs(r *dedupe.Record) []any {
	return []any{[]byte(r.Key), []byte(r.Fingerprint), r.State.String(), r.Token, nanos(r.LeaseUntil), r.Result, nanos(r.CreatedAt), nanos(r.ExpiresAt), r.Attempts, int64(r.Fence)}
}

func scanRecord(row interface{ Scan(...any) error }) (*dedupe.Record, error) {
	var (
		r                                dedupe.Record
		key, fingerprint                 []byte
		state                            string
		leaseUntil, createdAt, expiresAt int64
		fence                            int64
	)
	if err := row.Scan(&key, &fingerprint, &state, &r.Token, &leaseUntil, &r.Result, &createdAt, &expiresAt, &r.Attempts, &fence); err != nil {
		return nil, err
	}
	st, err := dedupe.ParseState(state)
	if err != nil {
		return nil, err
	}
	r.Key, r.Fingerprint, r.State = string(key), string(fingerprint), st
	r.Fence = uint64(max(fence, 0))
	r.LeaseUntil = fromNanos(leaseUntil)
	r.CreatedAt = fromNanos(createdAt)
	r.ExpiresAt = fromNanos(expiresAt)
	return &r, nil
}

// Claim implements dedupe.Store: the state machine of storekit.Decide, with
// the record committed when Claim returns, so a crash inside the handler
// lets the next attempt take over once the lease expires (store dedupe). Use
// ClaimTx to make the record part of the handler's own transaction.
//
// A new key costs one INSERT, a known key one more SELECT (Busy, Duplicate
// and Conflict are answered without a lock or a write); only a takeover, or
// the replacement of a record whose retention is over, opens a short
// transaction that locks the row.
func (s *Store) Claim(ctx context.Context, key, fingerprint string, lease, retention time.Duration) (dedupe.Claim, error) {
	if err := checkClaim(ctx, lease, retention); err != nil {
		return dedupe.Claim{}, err
	}
	now := s.now()
	c, ok, err := s.claimFast(ctx, key, fingerprint, now, lease, retention)
	if err != nil {
		return dedupe.Claim{}, fmt.Errorf("sqlstore: claim %q: %w", key, err)
	}
	if ok {
		return c, nil
	}
	err = s.inTx(ctx, func(tx Conn) error {
		var err error
		c, err = s.claim(ctx, tx, key, fingerprint, now, lease, retention)
		return err
	})
	if err != nil {
		return dedupe.Claim{}, fmt.Errorf("sqlstore: claim %q: %w", key, err)
	}
	return c, nil
}

// claimFast answers the claims that need no transaction: each statement is
// atomic on its own. ok is false when the record must be written over (a
// takeover or an expired record) or vanished between the two statements.
func (s *Store) claimFast(ctx context.Context, key, fingerprint string, now time.Time, lease, retention time.Duration) (c dedupe.Claim, ok bool, err error) {
	c, rec := storekit.Decide(nil, key, fingerprint, now, lease, retention)
	n, err := s.db.Exec(ctx, s.qInsert, recordArgs(rec)...)
	if err != nil {
		return dedupe.Claim{}, false, err
	}
	if n == 1 {
		return c, true, nil
	}
	cur, err := scanRecord(s.db.QueryRow(ctx, s.qGet, []byte(key)))
	if errors.Is(err, sql.ErrNoRows) {
		return dedupe.Claim{}, false, nil
	}
	if err != nil {
		return dedupe.Claim{}, false, err
	}
	c, rec = storekit.Decide(cur, key, fingerprint, now, lease, retention)
	return c, rec == nil, nil
}

// ClaimTx is Claim inside the caller's transaction tx (a *sql.Tx, or a
// *sql.Conn inside BEGIN; a *sql.DB is refused with ErrNotInTx). The record
// commits or rolls back with the caller's own writes: roll back and the
// redelivery is Acquired again; commit after CompleteTx and every later claim
// is a Duplicate. This is the transactional inbox: database effects happen
// exactly once.
//
// On Postgres (READ COMMITTED, the default isolation) a concurrent ClaimTx of
// the same key blocks on the primary key until this transaction ends, then
// sees the committed record (Duplicate, Conflict or Busy) or, after a
// rollback, acquires the key itself. Under REPEATABLE READ or SERIALIZABLE
// that second claim fails with a serialization error instead. On SQLite the
// transaction should be opened with _txlock=immediate (or the *sql.DB limited
// to one connection), so that it holds the write lock from BEGIN.
func (s *Store) ClaimTx(ctx context.Context, tx Querier, key, fingerprint string, lease, retention time.Duration) (dedupe.Claim, error) {
	return s.ClaimIn(ctx, SQL(tx), key, fingerprint, lease, retention)
}

// ClaimIn is ClaimTx on any Conn inside a transaction: SQL(tx), or
// pgxconn.Tx(tx) for a pgx.Tx, so that the record commits with the writes
// the handler makes through pgx. A Conn outside a transaction (a pool) is
// refused with ErrNotInTx.
func (s *Store) ClaimIn(ctx context.Context, tx Conn, key, fingerprint string, lease, retention time.Duration) (dedupe.Claim, error) {
	if !tx.InTx() {
		return dedupe.Claim{}, ErrNotInTx
	}
	if err := checkClaim(ctx, lease, retention); err != nil {
		return dedupe.Claim{}, err
	}
	c, err := s.claim(ctx, tx, key, fingerprint, s.now(), lease, retention)
	if err != nil {
		return dedupe.Claim{}, fmt.Errorf("sqlstore: claim %q: %w", key, err)
	}
	return c, nil
}

func checkClaim(ctx context.Context, lease, retention time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return storekit.ValidateLease(lease, retention)
}

// maxClaimRounds bounds how often claim retries when the row it conflicted
// with is deleted (released or cleaned up) before it could lock it.
const maxClaimRounds = 8

// claim runs the state machine on tx: insert a new in-progress row; if the
// key exists, read it and decide in Go. Busy, Duplicate and Conflict need no
// lock (a live done or failed record never changes until it expires; an
// in-progress one read a moment early is still a true answer), so only a
// takeover or the replacement of an expired record locks the row (SELECT
// ... FOR UPDATE on Postgres; on SQLite the INSERT already holds the write
// lock), decides again on the locked row and writes the decision back.
func (s *Store) claim(ctx context.Context, tx Conn, key, fingerprint string, now time.Time, lease, retention time.Duration) (dedupe.Claim, error) {
	for range maxClaimRounds {
		c, rec := storekit.Decide(nil, key, fingerprint, now, lease, retention)
		n, err := tx.Exec(ctx, s.qInsert, recordArgs(rec)...)
		if err != nil {
			return dedupe.Claim{}, err
		}
		if n == 1 {
			return c, nil
		}
		cur, err := scanRecord(tx.QueryRow(ctx, s.qGet, []byte(key)))
		if errors.Is(err, sql.ErrNoRows) {
			continue // deleted since the insert conflicted: insert again
		}
		if err != nil {
			return dedupe.Claim{}, err
		}
		c, rec = storekit.Decide(cur, key, fingerprint, now, lease, retention)
		if rec == nil {
			return c, nil
		}
		if s.dialect == Postgres {
			cur, err = scanRecord(tx.QueryRow(ctx, s.qLock, []byte(key)))
			if errors.Is(err, sql.ErrNoRows) {
				continue
			}
			if err != nil {
				return dedupe.Claim{}, err
			}
			c, rec = storekit.Decide(cur, key, fingerprint, now, lease, retention)
			if rec == nil {
				return c, nil // another claimer took over first
			}
		}
		if _, err := tx.Exec(ctx, s.qUpdate, recordArgs(rec)...); err != nil {
			return dedupe.Claim{}, err
		}
		return c, nil
	}
	return dedupe.Claim{}, fmt.Errorf("row inserted and deleted concurrently %d times", maxClaimRounds)
}

// Complete implements dedupe.Store with one conditional UPDATE.
func (s *Store) Complete(ctx context.Context, key, token string, res dedupe.Result, retention time.Duration) error {
	return s.CompleteIn(ctx, s.db, key, token, res, retention)
}

// CompleteTx is Complete on tx (a *sql.Tx, *sql.Conn or *sql.DB). In the
// inbox, call it in the transaction that ran ClaimTx and the handler's
// writes; the result is stored when that transaction commits.
func (s *Store) CompleteTx(ctx context.Context, tx Querier, key, token string, res dedupe.Result, retention time.Duration) error {
	return s.CompleteIn(ctx, SQL(tx), key, token, res, retention)
}

// CompleteIn is CompleteTx on any Conn (see ClaimIn).
func (s *Store) CompleteIn(ctx context.Context, tx Conn, key, token string, res dedupe.Result, retention time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if retention <= 0 {
		return fmt.Errorf("%w: retention %v must be positive", dedupe.ErrInvalidLease, retention)
	}
	now := s.now()
	state := dedupe.StateDone
	if res.Failed {
		state = dedupe.StateFailed
	}
	return s.owned(ctx, tx, "complete", s.qDone, key, token, now, state.String(), res.Data, nanos(now.Add(retention)))
}

// Release implements dedupe.Store with one conditional UPDATE.
func (s *Store) Release(ctx context.Context, key, token string) error {
	return s.ReleaseIn(ctx, s.db, key, token)
}

// ReleaseTx is Release on tx (a *sql.Tx, *sql.Conn or *sql.DB). In the inbox
// a rollback already removes a record claimed in the same transaction;
// ReleaseTx is for a record claimed earlier and committed.
func (s *Store) ReleaseTx(ctx context.Context, tx Querier, key, token string) error {
	return s.ReleaseIn(ctx, SQL(tx), key, token)
}

// ReleaseIn is ReleaseTx on any Conn (see ClaimIn).
func (s *Store) ReleaseIn(ctx context.Context, tx Conn, key, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.owned(ctx, tx, "release", s.qRelease, key, token, s.now())
}

// Snooze implements dedupe.Snoozer with one conditional UPDATE.
func (s *Store) Snooze(ctx context.Context, key, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.owned(ctx, s.db, "snooze", s.qSnooze, key, token, s.now())
}

// Delete implements dedupe.Store with one conditional DELETE.
func (s *Store) Delete(ctx context.Context, key, token string) error {
	return s.DeleteIn(ctx, s.db, key, token)
}

// DeleteTx is Delete on tx (a *sql.Tx, *sql.Conn or *sql.DB).
func (s *Store) DeleteTx(ctx context.Context, tx Querier, key, token string) error {
	return s.DeleteIn(ctx, SQL(tx), key, token)
}

// DeleteIn is DeleteTx on any Conn (see ClaimIn).
func (s *Store) DeleteIn(ctx context.Context, tx Conn, key, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.owned(ctx, tx, "delete", s.qDelete, key, token, s.now())
}

// Ping implements dedupe.Pinger: it pings the database.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.db.Ping(ctx); err != nil {
		return fmt.Errorf("sqlstore: ping: %w", err)
	}
	return nil
}

// Extend implements dedupe.Store with one conditional UPDATE.
func (s *Store) Extend(ctx context.Context, key, token string, lease time.Duration) error {
	return s.ExtendIn(ctx, s.db, key, token, lease)
}

// ExtendTx is Extend on tx (a *sql.Tx, *sql.Conn or *sql.DB). A heartbeat is
// normally sent outside the handler's transaction (on the *sql.DB), since an
// extension inside it is invisible to others until it commits.
func (s *Store) ExtendTx(ctx context.Context, tx Querier, key, token string, lease time.Duration) error {
	return s.ExtendIn(ctx, SQL(tx), key, token, lease)
}

// ExtendIn is ExtendTx on any Conn (see ClaimIn).
func (s *Store) ExtendIn(ctx context.Context, tx Conn, key, token string, lease time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if lease <= 0 {
		return fmt.Errorf("%w: lease %v must be positive", dedupe.ErrInvalidLease, lease)
	}
	now := s.now()
	return s.owned(ctx, tx, "extend", s.qExtend, key, token, now, nanos(now.Add(lease)))
}

// owned runs a statement whose WHERE clause is the ownership rule ($1 key,
// $2 token, $3 now; extra args from $4) and maps 0 rows to ErrLeaseLost.
func (s *Store) owned(ctx context.Context, tx Conn, op, query, key, token string, now time.Time, extra ...any) error {
	if !validToken(token) {
		return dedupe.ErrLeaseLost // no stored token is empty or invalid text
	}
	args := append([]any{[]byte(key), token, nanos(now)}, extra...)
	n, err := tx.Exec(ctx, query, args...)
	if err != nil {
		return fmt.Errorf("sqlstore: %s %q: %w", op, key, err)
	}
	if n == 0 {
		return dedupe.ErrLeaseLost
	}
	return nil
}
