package sqlstore

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/storekit"
)

// ClaimRequest is one claim of ClaimManyTx: the arguments of ClaimTx.
type ClaimRequest struct {
	// Key is the stored key (see dedupe.Guard.Resolve).
	Key string
	// Fingerprint is the request's fingerprint; empty for none.
	Fingerprint string
	// Lease is how long an Acquired claim is exclusive. Must be positive.
	Lease time.Duration
	// Retention is how long the record is kept; at least Lease.
	Retention time.Duration
}

// CompleteRequest is one completion of CompleteManyTx: the arguments of
// CompleteTx.
type CompleteRequest struct {
	// Key is the stored key the claim was made on.
	Key string
	// Token is the fencing token of the Acquired claim.
	Token string
	// Result is stored and replayed to every duplicate.
	Result dedupe.Result
	// Retention is how long the completed record is kept, from now. Must be
	// positive.
	Retention time.Duration
}

// ClaimManyTx is ClaimTx for several keys at once, in the caller's
// transaction tx (a *sql.DB is refused with ErrNotInTx). claims[i] is the
// answer to reqs[i], exactly what ClaimTx calls made one after another in
// the order of reqs would answer — so a key that appears twice is Acquired
// (or answered) at its first appearance and, after an Acquired, Busy at the
// second, with the first claim's lease as RetryAfter. Every claim uses the
// same clock reading.
//
// On Postgres a batch costs one INSERT for every key, and one SELECT more
// when some keys already exist; only a takeover or the replacement of an
// expired record then costs the per-key statements of ClaimTx. Keys are
// inserted in byte order, so concurrent batches with overlapping keys wait
// on each other instead of deadlocking. On SQLite, which holds the
// database's write lock for the whole transaction, it runs ClaimTx's
// statements for each request.
//
// An invalid lease or retention in any request fails the whole call with
// dedupe.ErrInvalidLease before any statement runs. Any other error leaves
// tx in an unknown state: roll it back.
func (s *Store) ClaimManyTx(ctx context.Context, tx Querier, reqs []ClaimRequest) ([]dedupe.Claim, error) {
	return s.ClaimManyIn(ctx, SQL(tx), reqs)
}

// ClaimManyIn is ClaimManyTx on any Conn inside a transaction (see
// ClaimIn).
func (s *Store) ClaimManyIn(ctx context.Context, tx Conn, reqs []ClaimRequest) ([]dedupe.Claim, error) {
	if !tx.InTx() {
		return nil, ErrNotInTx
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	for i, r := range reqs {
		if err := storekit.ValidateLease(r.Lease, r.Retention); err != nil {
			return nil, fmt.Errorf("sqlstore: claim %q (request %d): %w", r.Key, i, err)
		}
	}
	now := s.now()
	claims := make([]dedupe.Claim, len(reqs))
	if len(reqs) == 0 {
		return claims, nil
	}
	if s.dialect != Postgres || len(reqs) == 1 {
		for i, r := range reqs {
			c, err := s.claim(ctx, tx, r.Key, r.Fingerprint, now, r.Lease, r.Retention)
			if err != nil {
				return nil, fmt.Errorf("sqlstore: claim %q: %w", r.Key, err)
			}
			claims[i] = c
		}
		return claims, nil
	}
	if err := s.claimManyPostgres(ctx, tx, reqs, now, claims); err != nil {
		return nil, fmt.Errorf("sqlstore: claim many: %w", err)
	}
	return claims, nil
}

// claimManyPostgres fills claims for reqs (Postgres, at least two).
func (s *Store) claimManyPostgres(ctx context.Context, tx Conn, reqs []ClaimRequest, now time.Time, claims []dedupe.Claim) error {
	// firsts: the first request of each key, in key order. after holds, for
	// each key, the record as it stands once its first request is answered
	// (nil when unknown); the repeats are decided on it.
	firsts := make([]int, 0, len(reqs))
	seen := make(map[string]bool, len(reqs))
	for i, r := range reqs {
		if !seen[r.Key] {
			seen[r.Key] = true
			firsts = append(firsts, i)
		}
	}
	sort.Slice(firsts, func(a, b int) bool { return reqs[firsts[a]].Key < reqs[firsts[b]].Key })
	after := make(map[string]*dedupe.Record, len(firsts))

	n := len(firsts)
	var (
		keys      = make([][]byte, n)
		fps       = make([][]byte, n)
		tokens    = make([]string, n)
		leases    = make([]int64, n)
		created   = make([]int64, n)
		expires   = make([]int64, n)
		fences    = make([]int64, n)
		newRecord = make([]*dedupe.Record, n)
	)
	for j, i := range firsts {
		r := reqs[i]
		c, rec := storekit.Decide(nil, r.Key, r.Fingerprint, now, r.Lease, r.Retention)
		claims[i], newRecord[j] = c, rec
		keys[j], fps[j], tokens[j] = bytesOf(rec.Key), bytesOf(rec.Fingerprint), rec.Token
		leases[j], created[j], expires[j] = nanos(rec.LeaseUntil), nanos(rec.CreatedAt), nanos(rec.ExpiresAt)
		fences[j] = int64(rec.Fence)
	}
	inserted, err := s.keySet(ctx, tx, s.qInsertMany(), n, keys, fps, tokens, leases, created, expires, fences)
	if err != nil {
		return err
	}
	var existing [][]byte
	for j, i := range firsts {
		if inserted[reqs[i].Key] {
			after[reqs[i].Key] = newRecord[j]
		} else {
			existing = append(existing, keys[j])
		}
	}
	if len(existing) > 0 {
		current, err := s.records(ctx, tx, existing)
		if err != nil {
			return err
		}
		for _, i := range firsts {
			r := reqs[i]
			if inserted[r.Key] {
				continue
			}
			if cur := current[r.Key]; cur != nil {
				c, rec := storekit.Decide(cur, r.Key, r.Fingerprint, now, r.Lease, r.Retention)
				if rec == nil {
					claims[i], after[r.Key] = c, cur
					continue
				}
			}
			// A takeover, an expired record to replace, or a row deleted
			// since the INSERT: the locking path of ClaimTx.
			c, err := s.claim(ctx, tx, r.Key, r.Fingerprint, now, r.Lease, r.Retention)
			if err != nil {
				return fmt.Errorf("%q: %w", r.Key, err)
			}
			claims[i] = c
		}
	}
	// Repeats, in request order.
	done := make(map[string]bool, len(firsts))
	for i, r := range reqs {
		if !done[r.Key] {
			done[r.Key] = true
			continue
		}
		if cur := after[r.Key]; cur != nil {
			c, rec := storekit.Decide(cur, r.Key, r.Fingerprint, now, r.Lease, r.Retention)
			if rec == nil {
				claims[i] = c
				continue
			}
		}
		c, err := s.claim(ctx, tx, r.Key, r.Fingerprint, now, r.Lease, r.Retention)
		if err != nil {
			return fmt.Errorf("%q: %w", r.Key, err)
		}
		claims[i] = c
		after[r.Key] = nil // unknown again: later repeats ask the table
	}
	return nil
}

// qInsertMany inserts one in-progress record per array element ($1 keys,
// $2 fingerprints, $3 tokens, $4 lease_until, $5 created_at, $6
// expires_at, $7 fence) and returns the keys it inserted.
func (s *Store) qInsertMany() string {
	return "INSERT INTO " + s.table + " (" + columns + ") " +
		"SELECT u.k, u.f, 'in_progress', u.tok, u.lu, NULL, u.ca, u.ea, 1, u.fe " +
		"FROM unnest($1::bytea[], $2::bytea[], $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[]) AS u(k, f, tok, lu, ca, ea, fe) " +
		"ON CONFLICT (key) DO NOTHING RETURNING key"
}

// qCompleteMany completes the owned records among the array elements ($1
// keys, $2 tokens, $3 states, $4 results, $5 expires_at; $6 now) and
// returns the keys it updated. The WHERE clause is owned's.
func (s *Store) qCompleteMany() string {
	return "UPDATE " + s.table + " AS d SET state = u.st, result = u.res, lease_until = 0, expires_at = u.ea " +
		"FROM unnest($1::bytea[], $2::text[], $3::text[], $4::bytea[], $5::int8[]) AS u(k, tok, st, res, ea) " +
		"WHERE d.key = u.k AND d.token = u.tok AND d.state = 'in_progress' AND d.expires_at > $6 " +
		"RETURNING d.key"
}

// keySet runs query and returns the set of keys (first column) it returns.
func (s *Store) keySet(ctx context.Context, tx Conn, query string, n int, args ...any) (map[string]bool, error) {
	rows, err := tx.Query(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	set := make(map[string]bool, n)
	for rows.Next() {
		var k []byte
		if err := rows.Scan(&k); err != nil {
			return nil, err
		}
		set[string(k)] = true
	}
	return set, rows.Err()
}

// records reads the records of keys, by key (absent keys are missing).
func (s *Store) records(ctx context.Context, tx Conn, keys [][]byte) (map[string]*dedupe.Record, error) {
	rows, err := tx.Query(ctx, "SELECT "+columns+" FROM "+s.table+" WHERE key = ANY($1::bytea[])", keys)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[string]*dedupe.Record, len(keys))
	for rows.Next() {
		r, err := scanRecord(rows)
		if err != nil {
			return nil, err
		}
		out[r.Key] = r
	}
	return out, rows.Err()
}

// CompleteManyTx is CompleteTx for several records at once, on tx (a
// *sql.Tx, *sql.Conn or *sql.DB). errs[i] is what CompleteTx(reqs[i]) would
// return in a run of CompleteTx calls in the order of reqs: nil,
// dedupe.ErrLeaseLost (token not current; for a key completed earlier in
// the same call too) or dedupe.ErrInvalidLease (retention not positive).
// err is a failure of the call itself (ctx, the database); tx is then in an
// unknown state: roll it back.
//
// On Postgres one UPDATE completes every key (a key repeated in reqs costs
// one more statement per repeat); on SQLite it runs CompleteTx for each
// request.
func (s *Store) CompleteManyTx(ctx context.Context, tx Querier, reqs []CompleteRequest) (errs []error, err error) {
	return s.CompleteManyIn(ctx, SQL(tx), reqs)
}

// CompleteManyIn is CompleteManyTx on any Conn (see ClaimIn).
func (s *Store) CompleteManyIn(ctx context.Context, tx Conn, reqs []CompleteRequest) (errs []error, err error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	errs = make([]error, len(reqs))
	if s.dialect != Postgres || len(reqs) == 1 {
		for i, r := range reqs {
			e := s.CompleteIn(ctx, tx, r.Key, r.Token, r.Result, r.Retention)
			if e != nil && !errors.Is(e, dedupe.ErrLeaseLost) && !errors.Is(e, dedupe.ErrInvalidLease) {
				return nil, e
			}
			errs[i] = e
		}
		return errs, nil
	}
	now := s.now()
	var (
		firsts  []int
		repeats []int
		seen    = make(map[string]bool, len(reqs))
	)
	for i, r := range reqs {
		switch {
		case r.Retention <= 0:
			errs[i] = fmt.Errorf("%w: retention %v must be positive", dedupe.ErrInvalidLease, r.Retention)
		case !validToken(r.Token):
			errs[i] = dedupe.ErrLeaseLost
		case seen[r.Key]:
			repeats = append(repeats, i)
		default:
			seen[r.Key] = true
			firsts = append(firsts, i)
		}
	}
	if len(firsts) > 0 {
		sort.Slice(firsts, func(a, b int) bool { return reqs[firsts[a]].Key < reqs[firsts[b]].Key })
		n := len(firsts)
		keys, tokens, states := make([][]byte, n), make([]string, n), make([]string, n)
		results, expires := make([][]byte, n), make([]int64, n)
		for j, i := range firsts {
			r := reqs[i]
			state := dedupe.StateDone
			if r.Result.Failed {
				state = dedupe.StateFailed
			}
			keys[j], tokens[j], states[j] = bytesOf(r.Key), r.Token, state.String()
			results[j], expires[j] = r.Result.Data, nanos(now.Add(r.Retention))
		}
		updated, err := s.keySet(ctx, tx, s.qCompleteMany(), n, keys, tokens, states, results, expires, nanos(now))
		if err != nil {
			return nil, fmt.Errorf("sqlstore: complete many: %w", err)
		}
		for _, i := range firsts {
			if !updated[reqs[i].Key] {
				errs[i] = dedupe.ErrLeaseLost
			}
		}
	}
	sort.Ints(repeats)
	for _, i := range repeats {
		r := reqs[i]
		e := s.CompleteIn(ctx, tx, r.Key, r.Token, r.Result, r.Retention)
		if e != nil && !errors.Is(e, dedupe.ErrLeaseLost) {
			return nil, e
		}
		errs[i] = e
	}
	return errs, nil
}

// bytesOf returns s as a non-nil byte slice (an empty string is an empty
// bytea, never NULL).
func bytesOf(s string) []byte {
	b := make([]byte, len(s))
	copy(b, s)
	return b
}
