package bench

import (
	"context"
	"sync"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/redisstore"
)

// batchingStore is a PROTOTYPE, kept in the benchmark as evidence for a
// proposed change, not a library API: a dedupe.Store over redisstore that
// coalesces concurrent Claim and Complete calls into ClaimMany and
// CompleteMany pipelines ("group commit"). The first caller that finds no
// flush in progress becomes the leader and flushes, batch after batch, what
// every other caller queued meanwhile; there is no timer and no background
// goroutine, so a lone caller pays one round trip as before and a busy
// consumer pays one round trip per batch instead of one per message.
// Release and Extend are rare and go straight to the store.
//
// It shows what the idemq-redis variant would gain if redisstore (or the
// natsjs adapter, claiming per fetched batch) used the pipelined path that
// redisstore already offers.
type batchingStore struct {
	*redisstore.Store
	// maxBatch caps one pipeline.
	maxBatch int
	// timeout bounds one flush; a flush serves several callers, so it
	// does not run under any one caller's context.
	timeout time.Duration

	claims    group[redisstore.ClaimRequest, redisstore.ClaimResult]
	completes group[redisstore.CompleteRequest, error]
}

func newBatchingStore(s *redisstore.Store, maxBatch int) *batchingStore {
	b := &batchingStore{Store: s, maxBatch: maxBatch, timeout: 5 * time.Second}
	b.claims.run = s.ClaimMany
	b.completes.run = s.CompleteMany
	return b
}

// Claim queues the claim and waits for the pipeline that carries it.
func (b *batchingStore) Claim(ctx context.Context, key, fingerprint string, lease, retention time.Duration) (dedupe.Claim, error) {
	res, err := b.claims.do(ctx, b, redisstore.ClaimRequest{Key: key, Fingerprint: fingerprint, Lease: lease, Retention: retention})
	if err != nil {
		return dedupe.Claim{}, err
	}
	return res.Claim, res.Err
}

// Complete queues the completion and waits for the pipeline that carries it.
func (b *batchingStore) Complete(ctx context.Context, key, token string, res dedupe.Result, retention time.Duration) error {
	out, err := b.completes.do(ctx, b, redisstore.CompleteRequest{Key: key, Token: token, Result: res, Retention: retention})
	if err != nil {
		return err
	}
	return out
}

// group coalesces calls of one kind.
type group[Req, Res any] struct {
	run func(ctx context.Context, reqs []Req) ([]Res, error)

	mu       sync.Mutex
	queue    []*call[Req, Res]
	flushing bool
}

type call[Req, Res any] struct {
	req  Req
	res  Res
	err  error
	done chan struct{}
}

func (g *group[Req, Res]) do(ctx context.Context, b *batchingStore, req Req) (Res, error) {
	c := &call[Req, Res]{req: req, done: make(chan struct{})}
	g.mu.Lock()
	g.queue = append(g.queue, c)
	lead := !g.flushing
	g.flushing = true
	g.mu.Unlock()
	if lead {
		g.flush(b)
	}
	select {
	case <-c.done:
		return c.res, c.err
	case <-ctx.Done():
		var zero Res
		return zero, ctx.Err()
	}
}

// flush sends queued calls in batches until the queue is empty.
func (g *group[Req, Res]) flush(b *batchingStore) {
	for {
		g.mu.Lock()
		n := min(len(g.queue), b.maxBatch)
		if n == 0 {
			g.flushing = false
			g.mu.Unlock()
			return
		}
		batch := g.queue[:n:n]
		g.queue = g.queue[n:]
		g.mu.Unlock()

		reqs := make([]Req, n)
		for i, c := range batch {
			reqs[i] = c.req
		}
		ctx, cancel := context.WithTimeout(context.Background(), b.timeout)
		out, err := g.run(ctx, reqs)
		cancel()
		for i, c := range batch {
			if err != nil {
				c.err = err
			} else {
				c.res = out[i]
			}
			close(c.done)
		}
	}
}

var _ dedupe.Store = (*batchingStore)(nil)
