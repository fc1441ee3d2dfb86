package natsjs

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/dedupe"
)

// breaker decides when the consumer pauses: after DefaultPauseThreshold
// deliveries found a dependency unavailable (Outcome.Unavailable) with no
// success of that same dependency in between — a claim the store answered,
// a dead letter the stream stored. Deliveries that did not touch a
// dependency leave its count alone: good messages flowing between poison
// ones say nothing about the dead-letter stream.
type breaker struct {
	mu         sync.Mutex
	storeFails int
	dlqFails   int
	depFails   int                         // the handler's own dependency
	probe      func(context.Context) error // its probe, from the outcome
	open       bool
	dep        consumer.Dependency
	lastErr    error
	trip       chan struct{} // one pending signal: the breaker opened
}

func newBreaker() *breaker { return &breaker{trip: make(chan struct{}, 1)} }

// observe records one delivery's outcome.
func (b *breaker) observe(out consumer.Outcome) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.open {
		return
	}
	switch {
	case out.Unavailable == consumer.StoreUnavailable:
		b.storeFails++
	case out.Claim != 0:
		b.storeFails = 0
	}
	switch {
	case out.Unavailable == consumer.DeadLetterUnavailable:
		b.dlqFails++
	case out.DeadLettered:
		b.dlqFails = 0
	}
	switch {
	case out.Unavailable == consumer.HandlerUnavailable:
		b.depFails++
		if out.Probe != nil {
			b.probe = out.Probe
		}
	case out.Unavailable == 0 && out.Action != 0:
		b.depFails = 0 // the handler got past its dependency
	}
	if b.storeFails < DefaultPauseThreshold && b.dlqFails < DefaultPauseThreshold && b.depFails < DefaultPauseThreshold {
		return
	}
	b.open, b.dep, b.lastErr = true, out.Unavailable, out.Err
	select {
	case b.trip <- struct{}{}:
	default:
	}
}

// state returns the dependency that opened the breaker and its error.
func (b *breaker) state() (consumer.Dependency, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dep, b.lastErr
}

// reset closes the breaker.
func (b *breaker) reset() {
	b.mu.Lock()
	b.open, b.storeFails, b.dlqFails, b.depFails, b.dep, b.lastErr = false, 0, 0, 0, 0, nil
	b.mu.Unlock()
	select {
	case <-b.trip: // a trip that raced with the pause
	default:
	}
}

// probeTimeout bounds one probe of a dependency: 2s.
const probeTimeout = 2 * time.Second

// waitDependency runs while the consumer is paused: it probes the
// dependency that opened the breaker, at MinProbeInterval doubling to
// MaxProbeInterval, and returns true once it answers (false when ctx ends
// first). It logs the pause and the resumption, once each.
func (c *Consumer) waitDependency(ctx context.Context) bool {
	dep, cause := c.brk.state()
	since := time.Now()
	c.log.Error("natsjs: "+depName(dep)+" is not answering; paused consuming, handing held messages back, probing",
		"dependency", dep.String(), "err", cause)
	if c.pauses != nil {
		c.pauses.Paused(ctx, dep, cause)
	}
	interval := MinProbeInterval
	timer := time.NewTimer(interval)
	defer timer.Stop()
	probes := 0
	for {
		select {
		case <-ctx.Done():
			c.log.Info("natsjs: shutting down while paused", "dependency", dep.String(), "paused_for", time.Since(since).Round(time.Millisecond))
			if c.pauses != nil {
				c.pauses.Resumed(ctx, dep, time.Since(since))
			}
			return false
		case <-timer.C:
		}
		probes++
		pctx, cancel := context.WithTimeout(ctx, probeTimeout)
		err := c.probe(pctx, dep)
		cancel()
		if err == nil {
			c.log.Info("natsjs: "+depName(dep)+" answers again; resuming", "dependency", dep.String(),
				"paused_for", time.Since(since).Round(time.Millisecond), "probes", probes)
			c.brk.reset()
			if c.pauses != nil {
				c.pauses.Resumed(ctx, dep, time.Since(since))
			}
			return true
		}
		c.log.Debug("natsjs: probe failed", "dependency", dep.String(), "err", err)
		interval = min(interval*2, c.cfg.MaxProbeInterval)
		timer.Reset(interval)
	}
}

func depName(d consumer.Dependency) string {
	switch d {
	case consumer.StoreUnavailable:
		return "the dedupe store"
	case consumer.DeadLetterUnavailable:
		return "the dead-letter stream"
	case consumer.HandlerUnavailable:
		return "the handler's dependency"
	}
	return "a dependency"
}

// probe checks whether dep answers. A store without dedupe.Pinger is
// assumed back (consumption resumes, and pauses again if it is not).
func (c *Consumer) probe(ctx context.Context, dep consumer.Dependency) error {
	switch dep {
	case consumer.StoreUnavailable:
		g := c.pipe.Guard()
		if g == nil {
			return nil
		}
		if p, ok := g.Store.(dedupe.Pinger); ok {
			return p.Ping(ctx)
		}
		return nil
	case consumer.DeadLetterUnavailable:
		return c.probeDeadLetter(ctx)
	case consumer.HandlerUnavailable:
		c.brk.mu.Lock()
		probe := c.brk.probe
		c.brk.mu.Unlock()
		if probe != nil {
			return probe(ctx)
		}
	}
	return nil
}

// probeDeadLetter checks that the dead-letter stream exists (recreating it
// when DeadLetter.NoCreateStream does not forbid), has a leader that answers, and
// captures the dead-letter subject.
func (c *Consumer) probeDeadLetter(ctx context.Context) error {
	dl := c.cfg.DeadLetter
	s, err := c.js.Stream(ctx, dl.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) && !dl.NoCreateStream {
		if err := c.checkDeadLetterStream(ctx, jetstream.StreamConfig{}); err != nil {
			return err
		}
		c.log.Warn("natsjs: the dead-letter stream had disappeared; created it again", "dead_letter_stream", dl.Stream)
		return nil
	}
	if err != nil {
		return err
	}
	rt, err := parseRoute(dl.Subject)
	if err != nil {
		return err
	}
	if miss := uncovered(s.CachedInfo().Config.Subjects, rt.patterns(c.cfg.Stream)); len(miss) > 0 {
		return fmt.Errorf("%w: dead-letter stream %s no longer captures %q", ErrSetup, dl.Stream, miss[0])
	}
	return nil
}
