package natsjs

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// ErrSetup is wrapped by Run's start-up check errors: a stream, subject or
// consumer configuration that cannot work. The message names the stream and
// subjects that disagree.
var ErrSetup = errors.New("natsjs: setup")

// setup checks the streams and creates the dead-letter stream when asked,
// the advisory capture when MaxDeliver is finite, and the durable consumer.
// Every check runs before any message is taken.
func (c *Consumer) setup(ctx context.Context) (cons, adv jetstream.Consumer, err error) {
	src, err := c.checkSource(ctx)
	if err != nil {
		return nil, nil, err
	}
	if err := c.checkDeadLetterStream(ctx, src); err != nil {
		return nil, nil, err
	}
	if c.cfg.MaxDeliver > 0 {
		if adv, err = c.setupAdvisories(ctx); err != nil {
			return nil, nil, err
		}
	}
	cc := jetstream.ConsumerConfig{
		Durable:       c.cfg.Durable,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.cfg.AckWait,
		MaxDeliver:    c.cfg.MaxDeliver,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
	if c.batch != nil {
		// Every worker may hold a full batch while the last batches' acks
		// are on their way.
		cc.MaxAckPending = max(2*c.cfg.Concurrency*c.cfg.BatchSize, MinBatchMaxAckPending)
	}
	switch len(c.cfg.FilterSubjects) {
	case 0:
	case 1:
		cc.FilterSubject = c.cfg.FilterSubjects[0]
	default:
		if v := c.js.Conn().ConnectedServerVersion(); !serverAtLeast(v, 2, 10) {
			return nil, nil, fmt.Errorf("%w: %d FilterSubjects need server 2.10 or later, connected to %s; use one subject",
				ErrServerTooOld, len(c.cfg.FilterSubjects), v)
		}
		cc.FilterSubjects = c.cfg.FilterSubjects
	}
	cons, err = c.js.CreateOrUpdateConsumer(ctx, c.cfg.Stream, cc)
	if err != nil {
		return nil, nil, fmt.Errorf("natsjs: create or update consumer %s on stream %s: %w", c.cfg.Durable, c.cfg.Stream, err)
	}
	return cons, adv, nil
}

// checkSource checks that the source stream exists and captures every
// filter subject, and returns its configuration.
func (c *Consumer) checkSource(ctx context.Context) (jetstream.StreamConfig, error) {
	s, err := c.js.Stream(ctx, c.cfg.Stream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return jetstream.StreamConfig{}, fmt.Errorf("%w: stream %s does not exist; create it with the subjects its publishers use: %w", ErrSetup, c.cfg.Stream, err)
	}
	if err != nil {
		return jetstream.StreamConfig{}, fmt.Errorf("natsjs: stream %s: %w", c.cfg.Stream, err)
	}
	sc := s.CachedInfo().Config
	if len(sc.Subjects) == 0 {
		return sc, nil // a mirror or a sourced stream: no subjects to check
	}
	for _, f := range c.cfg.FilterSubjects {
		if !slices.ContainsFunc(sc.Subjects, func(p string) bool { return subjectsOverlap(p, f) }) {
			return sc, fmt.Errorf("%w: filter subject %q is not captured by stream %s (subjects %s): the consumer would never receive a message",
				ErrSetup, f, c.cfg.Stream, strings.Join(sc.Subjects, ", "))
		}
	}
	return sc, nil
}

// checkDeadLetterStream checks that the dead-letter subject is stored by
// DeadLetter.Stream — creating the stream unless DeadLetter.NoCreateStream,
// and only warning when it is missing otherwise — and is not a
// subject of the source stream src (dead letters would be consumed again).
// src is the zero config when unknown.
func (c *Consumer) checkDeadLetterStream(ctx context.Context, src jetstream.StreamConfig) error {
	dl := c.cfg.DeadLetter
	rt, err := parseRoute(dl.Subject)
	if err != nil {
		return err
	}
	routed := rt.patterns(c.cfg.Stream)
	for _, p := range routed {
		if slices.ContainsFunc(src.Subjects, func(s string) bool { return subjectsOverlap(s, p) }) {
			return fmt.Errorf("%w: dead-letter subject %q is captured by the source stream %s (subjects %s): dead letters would be consumed again",
				ErrSetup, p, c.cfg.Stream, strings.Join(src.Subjects, ", "))
		}
	}
	s, err := c.js.Stream(ctx, dl.Stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound) && !dl.NoCreateStream && len(uncovered(dl.StreamSubjects, routed)) > 0:
		return fmt.Errorf("%w: DeadLetter.StreamSubjects (%s) do not capture dead-letter subject %q", ErrSetup,
			strings.Join(dl.StreamSubjects, ", "), uncovered(dl.StreamSubjects, routed)[0])
	case errors.Is(err, jetstream.ErrStreamNotFound) && !dl.NoCreateStream:
		_, err = c.js.CreateStream(ctx, jetstream.StreamConfig{
			Name:     dl.Stream,
			Subjects: dl.StreamSubjects,
			Storage:  jetstream.FileStorage,
		})
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return c.checkDeadLetterStream(ctx, src) // created concurrently: check it
		}
		if err != nil {
			return fmt.Errorf("natsjs: create dead-letter stream %s (subjects %s): %w", dl.Stream, strings.Join(dl.StreamSubjects, ", "), c.overlapHint(ctx, dl.StreamSubjects, err))
		}
		return nil
	case errors.Is(err, jetstream.ErrStreamNotFound):
		// Not fatal: good messages can be processed meanwhile, and the
		// first dead letter pauses the consumer until the stream exists.
		c.log.Warn("natsjs: the dead-letter stream does not exist; dead letters wait, and the consumer pauses at the first one, until it is created (or unset DeadLetter.NoCreateStream)",
			"dead_letter_stream", dl.Stream, "dead_letter_subject", dl.Subject)
		return nil
	case err != nil:
		return fmt.Errorf("natsjs: dead-letter stream %s: %w", dl.Stream, err)
	}
	subjects := s.CachedInfo().Config.Subjects
	if miss := uncovered(subjects, routed); len(miss) > 0 {
		return fmt.Errorf("%w: dead-letter stream %s (subjects %s) does not capture dead-letter subject %q; add it to the stream or change DeadLetter.Subject",
			ErrSetup, dl.Stream, strings.Join(subjects, ", "), miss[0])
	}
	return nil
}

// uncovered returns the routed subjects that no pattern of subjects covers.
func uncovered(subjects, routed []string) []string {
	var out []string
	for _, p := range routed {
		if coveredBy(subjects, p) == "" {
			out = append(out, p)
		}
	}
	return out
}

// errCodeSubjectOverlap is the JetStream API error code of a stream whose
// subjects overlap another stream's (JSStreamSubjectOverlapErr).
const errCodeSubjectOverlap jetstream.ErrorCode = 10065

// overlapHint adds, to a stream creation error caused by subjects that
// another stream already captures, which stream that is.
func (c *Consumer) overlapHint(ctx context.Context, subjects []string, err error) error {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != errCodeSubjectOverlap {
		return err
	}
	for _, subj := range subjects {
		if name, lerr := c.js.StreamNameBySubject(ctx, subj); lerr == nil && name != "" {
			return fmt.Errorf("%w: subject %q is already captured by stream %s: %w", ErrSetup, subj, name, err)
		}
	}
	return fmt.Errorf("%w: %w", ErrSetup, err)
}

// subjectsOverlap reports whether some subject matches both patterns, which
// may hold the wildcards '*' (one token) and '>' (one or more tokens).
func subjectsOverlap(a, b string) bool {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; ; i++ {
		switch {
		case i < len(at) && at[i] == ">":
			return len(bt) > i
		case i < len(bt) && bt[i] == ">":
			return len(at) > i
		case i == len(at) || i == len(bt):
			return len(at) == len(bt)
		case at[i] != "*" && bt[i] != "*" && at[i] != bt[i]:
			return false
		}
	}
}
