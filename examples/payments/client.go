package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/idemq/idemq/dedupe/httpdedupe"
	"github.com/idemq/idemq/retry"
)

// jobKind is what a client request is meant to exercise.
type jobKind int

const (
	// jobPay is a payment sent for the first time (some are overdrafts).
	jobPay jobKind = iota + 1
	// jobReuse resends an accepted payment's key with a changed amount: the
	// API must answer 409 and never publish it.
	jobReuse
	// jobBadRequest sends a body that is not a payment: the API answers 400.
	jobBadRequest
)

// job is one logical request of the client, retried with the same key until
// it gets a definite answer.
type job struct {
	kind      jobKind
	key       string
	body      []byte
	pay       payment // the payment as sent (jobPay, jobReuse)
	overdraft bool    // planned to exceed any balance
	reuseOf   *job    // the accepted job whose key jobReuse reuses
}

// Errors the client classifies responses into.
var (
	errResponseLost = errors.New("response lost (dropped on purpose by the demo client)")
	errInFlight     = errors.New("409: the first request with this key is still in flight")
	errConflict     = errors.New("409: idempotency key reused with a different body")
	errBadRequest   = errors.New("400: not a valid payment")
	errServer       = errors.New("server error")
)

// clientStats are the client's counters, updated concurrently.
type clientStats struct {
	sent, accepted, conflicts, badRequests  atomic.Int64
	attempts, retries, lost, connErrors     atomic.Int64
	inFlight409, serverErrors, replayed     atomic.Int64
	unresolved, unexpected, responseChanged atomic.Int64
}

// client sends jobs to the API with retry.Do, dropping a fraction of the
// responses it receives to play a network that loses them.
type client struct {
	base     string
	http     *http.Client
	dropRate float64
	policy   retry.Policy
	stats    *clientStats

	mu       sync.Mutex
	accepted map[string]*job // key → the payment the API accepted
	// settledOther holds payment keys that ended without acceptance.
	settledOther map[string]bool
	problems     []string // unexpected answers, for the summary
}

func newClient(base string, dropRate float64, conns int) *client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConns = conns * 2
	tr.MaxIdleConnsPerHost = conns * 2
	return &client{
		base:     base,
		http:     &http.Client{Transport: tr, Timeout: 10 * time.Second},
		dropRate: dropRate,
		policy: retry.Policy{
			// Enough attempts to ride out an API restart and the lease of a
			// request the killed API left in flight.
			MaxAttempts: 40,
			Backoff:     retry.Exponential{Initial: 20 * time.Millisecond, Max: time.Second, Jitter: retry.JitterFull},
		},
		stats:        &clientStats{},
		accepted:     map[string]*job{},
		settledOther: map[string]bool{},
	}
}

// close releases idle connections.
func (c *client) close() { c.http.CloseIdleConnections() }

// do sends j until it gets a definite answer, as a careful client does: the
// same key and body every time, backoff with full jitter between attempts.
func (c *client) do(ctx context.Context, j *job) {
	c.stats.sent.Add(1)
	var first []byte // the first 202 body received, dropped or not
	op := func(ctx context.Context) error {
		c.stats.attempts.Add(1)
		status, body, hdr, err := c.put(ctx, j)
		replay := hdr.Get(httpdedupe.ReplayedHeader) == "true"
		if err != nil {
			c.stats.connErrors.Add(1)
			return err
		}
		var result error
		switch status {
		case http.StatusAccepted:
			if first == nil {
				first = body
			} else if !bytes.Equal(first, body) {
				c.stats.responseChanged.Add(1)
				c.problem(fmt.Sprintf("key %s: retry answered %q, first answer was %q", j.key, body, first))
			}
			if replay {
				c.stats.replayed.Add(1)
			}
		case http.StatusConflict:
			// In flight: 409 with Retry-After. Reused key: 409 without.
			if ra := hdr.Get("Retry-After"); ra != "" {
				secs, _ := strconv.Atoi(ra)
				result = retry.After(time.Duration(max(secs, 0))*time.Second, errInFlight)
			} else {
				result = retry.Permanent(errConflict)
			}
		case http.StatusBadRequest:
			result = retry.Permanent(errBadRequest)
		default:
			if status >= 500 {
				c.stats.serverErrors.Add(1)
				return fmt.Errorf("%w: %d %s", errServer, status, bytes.TrimSpace(body))
			}
			return retry.Permanent(fmt.Errorf("unexpected status %d: %s", status, bytes.TrimSpace(body)))
		}
		if rand.Float64() < c.dropRate {
			c.stats.lost.Add(1)
			return errResponseLost
		}
		if errors.Is(result, errInFlight) {
			c.stats.inFlight409.Add(1)
		}
		return result
	}
	err := retry.Do(ctx, op, &retry.DoOptions{
		Policy:  c.policy,
		OnRetry: func(int, time.Duration, error) { c.stats.retries.Add(1) },
	})
	c.settle(j, err)
}

// settle records the definite answer to j.
func (c *client) settle(j *job, err error) {
	if j.kind == jobPay && err != nil {
		c.mu.Lock()
		c.settledOther[j.key] = true
		c.mu.Unlock()
	}
	switch {
	case err == nil && j.kind != jobBadRequest && j.kind != jobReuse:
		c.stats.accepted.Add(1)
		c.mu.Lock()
		c.accepted[j.key] = j
		c.mu.Unlock()
	case errors.Is(err, errConflict) && j.kind == jobReuse:
		c.stats.conflicts.Add(1)
	case errors.Is(err, errBadRequest) && j.kind == jobBadRequest:
		c.stats.badRequests.Add(1)
	case err != nil && (errors.Is(err, errResponseLost) || errors.Is(err, errInFlight) ||
		errors.Is(err, errServer) || errors.Is(err, context.DeadlineExceeded) || !retry.IsPermanent(err)):
		c.stats.unresolved.Add(1)
		c.problem(fmt.Sprintf("key %s: no definite answer: %v", j.key, err))
	default:
		c.stats.unexpected.Add(1)
		c.problem(fmt.Sprintf("key %s (%s): unexpected answer: %v", j.key, j.kind, err))
	}
}

func (c *client) problem(s string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.problems) < 20 {
		c.problems = append(c.problems, s)
	}
}

// put sends one PUT /payments and reads the whole answer.
func (c *client) put(ctx context.Context, j *job) (status int, body []byte, hdr http.Header, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, c.base+"/payments", bytes.NewReader(j.body))
	if err != nil {
		return 0, nil, nil, retry.Permanent(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if j.key != "" {
		req.Header.Set(headerKey, j.key)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return 0, nil, http.Header{}, err
	}
	defer resp.Body.Close()
	body, err = io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, http.Header{}, err
	}
	return resp.StatusCode, body, resp.Header, nil
}

// isAccepted reports whether the API accepted key.
func (c *client) isAccepted(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, ok := c.accepted[key]
	return ok
}

// isSettled reports whether the request for key got a definite answer other
// than acceptance (so waiting for its acceptance is pointless).
func (c *client) isSettled(key string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.settledOther[key]
}

// acceptedJobs returns the jobs the API accepted, by key.
func (c *client) acceptedJobs() map[string]*job {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make(map[string]*job, len(c.accepted))
	for k, v := range c.accepted {
		out[k] = v
	}
	return out
}

// String names the job kind.
func (k jobKind) String() string {
	switch k {
	case jobPay:
		return "payment"
	case jobReuse:
		return "reused key"
	case jobBadRequest:
		return "bad request"
	}
	return fmt.Sprintf("jobKind(%d)", int(k))
}

// mustJSON encodes v, which cannot fail for the plain structs used here.
func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}
