package redisstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/idemq/idemq/dedupe"
)

// ClaimRequest is one claim of a ClaimMany batch; the fields are the
// arguments of Store.Claim.
type ClaimRequest struct {
	Key         string
	Fingerprint string
	// Lease is how long an Acquired claim is exclusive; must be positive.
	Lease time.Duration
	// Retention is how long the record is kept; must be at least Lease.
	Retention time.Duration
}

// ClaimResult is the answer to one ClaimRequest: the claim, or the error
// Store.Claim would have returned for it alone (dedupe.ErrInvalidLease, or an
// error reply of the server for that key).
type ClaimResult struct {
	Claim dedupe.Claim
	Err   error
}

// CompleteRequest is one completion of a CompleteMany batch; the fields are
// the arguments of Store.Complete.
type CompleteRequest struct {
	Key   string
	Token string
	// Result is stored and replayed to duplicates.
	Result dedupe.Result
	// Retention is how long the completed record is kept; must be positive.
	Retention time.Duration
}

// ClaimMany claims many keys in one pipeline: one round trip to a single
// Redis server (per shard with Redis Cluster, which go-redis splits by slot),
// instead of one per key. Each claim is still atomic on its own and gives
// exactly the answer Claim would give; claims of the batch are not atomic
// together. Results are in request order.
//
// A consumer with a worker pool prefers ClaimMany and CompleteMany to Claim
// and Complete when it fetches messages in batches: the per-message cost
// drops from two round trips to two per batch, which is what lets a Redis
// backed consumer keep up with raw JetStream throughput.
//
// The returned error is non-nil only when the batch as a whole failed (the
// context ended, the connection broke); then some claims may have been
// applied without the caller learning their tokens, and those keys answer
// Busy until their lease expires and a redelivery takes them over, exactly
// as after a failed Claim.
func (s *Store) ClaimMany(ctx context.Context, reqs []ClaimRequest) ([]ClaimResult, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := make([]ClaimResult, len(reqs))
	tokens := make([]string, len(reqs))
	calls := make([]call, 0, len(reqs))
	for i, r := range reqs {
		args, token, err := s.claimArgs(r.Fingerprint, r.Lease, r.Retention)
		if err != nil {
			out[i].Err = err
			continue
		}
		tokens[i] = token
		calls = append(calls, call{i: i, key: s.Key(r.Key), args: args})
	}
	if err := s.runMany(ctx, s.claim, calls); err != nil {
		return nil, err
	}
	for _, c := range calls {
		if err := c.cmd.Err(); err != nil {
			out[c.i].Err = fmt.Errorf("redisstore: claim %q: %w", reqs[c.i].Key, err)
			continue
		}
		v, err := c.cmd.Slice()
		if err == nil {
			out[c.i].Claim, err = parseClaim(v, tokens[c.i])
		}
		out[c.i].Err = err
	}
	return out, nil
}

// CompleteMany completes many keys in one pipeline, as ClaimMany claims
// them. The i-th error is what Complete would have returned for reqs[i]: nil,
// dedupe.ErrLeaseLost, dedupe.ErrInvalidLease or a server error reply. The
// second result is non-nil only when the batch as a whole failed; then some
// completions may have been applied, and retrying them yields ErrLeaseLost
// for those (check with a Claim, which answers Duplicate).
func (s *Store) CompleteMany(ctx context.Context, reqs []CompleteRequest) ([]error, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := make([]error, len(reqs))
	calls := make([]call, 0, len(reqs))
	now := s.now().UnixMilli()
	for i, r := range reqs {
		rest, err := s.completeArgs(r.Result, r.Retention)
		if err != nil {
			out[i] = err
			continue
		}
		if r.Token == "" {
			out[i] = dedupe.ErrLeaseLost
			continue
		}
		calls = append(calls, call{i: i, key: s.Key(r.Key), args: append([]any{now, r.Token}, rest...)})
	}
	if err := s.runMany(ctx, s.complete, calls); err != nil {
		return nil, err
	}
	for _, c := range calls {
		n, err := c.cmd.Int64()
		switch {
		case err != nil:
			out[c.i] = fmt.Errorf("redisstore: complete %q: %w", reqs[c.i].Key, err)
		case n != 1:
			out[c.i] = dedupe.ErrLeaseLost
		}
	}
	return out, nil
}

// call is one script invocation of a batch.
type call struct {
	i    int // index in the request slice
	key  string
	args []any
	cmd  *redis.Cmd
}

// runMany sends every call as EVALSHA in one pipeline. Calls answered
// NOSCRIPT (the server restarted or flushed its script cache) did not run;
// the script is loaded and they are sent again in a second pipeline. It
// returns an error only for a failure of the whole batch; per-call error
// replies stay in each call's cmd.
func (s *Store) runMany(ctx context.Context, sc *redis.Script, calls []call) error {
	if len(calls) == 0 {
		return nil
	}
	send := func(which []int) error {
		pipe := s.c.Pipeline()
		for _, j := range which {
			calls[j].cmd = sc.EvalSha(ctx, pipe, []string{calls[j].key}, calls[j].args...)
		}
		_, err := pipe.Exec(ctx)
		if err == nil {
			return nil
		}
		for _, j := range which {
			var rerr redis.Error
			if cerr := calls[j].cmd.Err(); cerr != nil && !errors.As(cerr, &rerr) {
				return fmt.Errorf("redisstore: pipeline of %d scripts: %w", len(which), cerr)
			}
		}
		return nil
	}
	all := make([]int, len(calls))
	for j := range all {
		all[j] = j
	}
	if err := send(all); err != nil {
		return err
	}
	var missing []int
	for j := range calls {
		if redis.HasErrorPrefix(calls[j].cmd.Err(), "NOSCRIPT") {
			missing = append(missing, j)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if err := sc.Load(ctx, s.c).Err(); err != nil {
		return fmt.Errorf("redisstore: load script: %w", err)
	}
	return send(missing)
}
