package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"strconv"
	"strings"

	"github.com/idemq/idemq/consumer"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/time/rate"
)

// headerReplayedFrom marks a replayed message with the dead letter it came
// from: "<dlq stream>:<dlq sequence>".
const headerReplayedFrom = "Idemq-Replayed-From"

// deadLetterHeaders are the headers the dead-letter publisher adds; replay
// removes them (and the DLQ's Nats-Msg-Id) so that the republished message
// carries the original headers only.
var deadLetterHeaders = []string{
	consumer.HeaderReason, consumer.HeaderError, consumer.HeaderOriginalSubject,
	consumer.HeaderOriginalStream, consumer.HeaderOriginalSequence, consumer.HeaderConsumer,
	consumer.HeaderAttempts, consumer.HeaderFailedAt, consumer.HeaderHost,
	consumer.HeaderOriginalMsgID, headerReplayedFrom, jetstream.MsgIDHeader,
}

// stripped reports the headers replay does not copy: the dead-letter
// headers, and the headers that direct the server on publish. The latter
// never come from the original message (the dead-letter publisher drops
// them) but can from the dead-letter publish itself: its expected-stream
// check is stored with the dead letter as Nats-Expected-Stream, and would
// make the replay fail against any other stream.
func stripped(k string) bool {
	for _, h := range deadLetterHeaders {
		if strings.EqualFold(k, h) {
			return true
		}
	}
	c := http.CanonicalHeaderKey(k)
	switch {
	case strings.HasPrefix(c, "Nats-Expected-"),
		strings.HasPrefix(c, "Nats-Schedule"),
		strings.HasPrefix(c, "Nats-Batch-"),
		c == "Nats-Rollup", c == "Nats-Ttl", c == "Nats-Incr", c == "Nats-Required-Api-Level":
		return true
	}
	return false
}

// replayMsgID is the Nats-Msg-Id of the replay of stream:seq. It is stable,
// so the target stream drops a second replay of the same dead letter within
// its duplicate window.
func replayMsgID(stream string, seq uint64) string {
	return "replay." + stream + "." + strconv.FormatUint(seq, 10)
}

// replayMsg builds the message that replays l, a dead letter of stream: its
// body unchanged, its original headers without the dead-letter headers, to
// Idemq-Original-Subject, with Idemq-Replayed-From and Nats-Msg-Id set. With
// keepMsgID the original Nats-Msg-Id (Idemq-Original-Msg-Id) is restored
// instead, when there was one.
func replayMsg(stream string, l letter, keepMsgID bool) *nats.Msg {
	h := make(nats.Header, len(l.Header)+2)
	for k, v := range l.Header {
		if stripped(k) {
			continue
		}
		h[k] = append([]string(nil), v...)
	}
	h.Set(headerReplayedFrom, stream+":"+strconv.FormatUint(l.Seq, 10))
	id := replayMsgID(stream, l.Seq)
	if orig := l.get(consumer.HeaderOriginalMsgID); keepMsgID && orig != "" {
		id = orig
	}
	h.Set(jetstream.MsgIDHeader, id)
	return &nats.Msg{Subject: l.get(consumer.HeaderOriginalSubject), Header: h, Data: l.Data}
}

// waiter paces replays; *rate.Limiter is one.
type waiter interface {
	Wait(ctx context.Context) error
}

// newLimiter returns the pacing for -rate perSecond: one message every
// 1/perSecond seconds, no bursts; 0 means unlimited.
func newLimiter(perSecond float64) *rate.Limiter {
	if perSecond <= 0 || math.IsInf(perSecond, 1) {
		return rate.NewLimiter(rate.Inf, 1)
	}
	return rate.NewLimiter(rate.Limit(perSecond), 1)
}

// progress is what replay reports to; *progressbar.ProgressBar is one.
type progress interface {
	Add(n int) error
	Finish() error
}

// replayOptions selects dead letters and says how to replay them.
type replayOptions struct {
	// Stream is the dead-letter stream.
	Stream string
	// Seq replays the one message at this sequence; 0 means every dead
	// letter (All), filtered by Reason when it is set.
	Seq    uint64
	Reason string
	All    bool
	// Seqs replays the messages at these sequences (the console's
	// selection): those already gone are counted as Gone, those that are
	// not dead letters or do not match Reason as Skipped.
	Seqs []uint64
	// Filter narrows All further (the console's filters); its Reason is
	// ignored in favour of Reason.
	Filter selector
	// DryRun prints what would be replayed and publishes nothing.
	DryRun bool
	// Delete removes each dead letter once its replay has a PubAck.
	Delete bool
	// KeepMsgID republishes with the original Nats-Msg-Id instead of
	// "replay.<stream>.<seq>" (when the original had one).
	KeepMsgID bool
	// Limiter paces the publishes; nil means unlimited.
	Limiter waiter
	// Progress, when not nil, is called once with the number of selected
	// messages and returns the progress display.
	Progress func(total int) progress
	// Observe, when not nil, is called with the counts so far after the
	// selection and after each selected message.
	Observe func(replayStats)
}

// replayStats counts what replay did.
type replayStats struct {
	// Selected is the number of messages chosen.
	Selected int
	// Replayed is the number of publishes the target stream acknowledged,
	// Deduped of which it reported as duplicates (replayed before within
	// its duplicate window).
	Replayed, Deduped int
	// Deleted is the number of dead letters removed after their PubAck.
	Deleted int
	// Skipped counts messages that are not dead letters; Gone those
	// deleted by someone else between selection and replay.
	Skipped, Gone int
}

// replay republishes the selected dead letters one at a time, waiting for
// each PubAck, and writes a line per message on log for a dry run or a
// skipped message. It stops at the first publish error or when ctx ends,
// returning the counts so far.
func replay(ctx context.Context, js jetstream.JetStream, opts replayOptions, log io.Writer) (replayStats, error) {
	var st replayStats
	d, err := openDLQ(ctx, js, opts.Stream)
	if err != nil {
		return st, err
	}
	var seqs []uint64
	if opts.Seq != 0 {
		l, err := d.get(ctx, opts.Seq)
		if err != nil {
			return st, err
		}
		if !l.isDeadLetter() {
			return st, fmt.Errorf("%s:%d: %w", opts.Stream, opts.Seq, errNotDeadLetter)
		}
		if opts.Reason != "" && l.reason() != opts.Reason {
			return st, fmt.Errorf("%s:%d has reason %q, not %q", opts.Stream, opts.Seq, l.reason(), opts.Reason)
		}
		if opts.Filter.Subject != "" && !subjectMatches(opts.Filter.Subject, l.Subject) {
			return st, fmt.Errorf("%s:%d is stored on %q, not on %q", opts.Stream, opts.Seq, l.Subject, opts.Filter.Subject)
		}
		seqs = []uint64{opts.Seq}
	} else if opts.Seqs != nil {
		seqs = opts.Seqs
	} else {
		sel := opts.Filter
		sel.Reason = opts.Reason
		if seqs, err = d.seqs(ctx, sel); err != nil {
			return st, err
		}
	}
	st.Selected = len(seqs)
	observe := func() {
		if opts.Observe != nil {
			opts.Observe(st)
		}
	}
	observe()
	var bar progress
	if opts.Progress != nil && !opts.DryRun {
		bar = opts.Progress(len(seqs))
	}
	for _, seq := range seqs {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		l, err := d.get(ctx, seq)
		if errors.Is(err, errNoLetter) {
			st.Gone++
			observe()
			continue
		}
		if err != nil {
			return st, err
		}
		if !l.isDeadLetter() {
			st.Skipped++
			fmt.Fprintf(log, "skip %s:%d: %v\n", opts.Stream, seq, errNotDeadLetter)
			observe()
			continue
		}
		if opts.Reason != "" && l.reason() != opts.Reason {
			// Only an explicit selection can get here: -all selected by
			// reason already.
			st.Skipped++
			fmt.Fprintf(log, "skip %s:%d: reason %q, not %q\n", opts.Stream, seq, l.reason(), opts.Reason)
			observe()
			continue
		}
		m := replayMsg(opts.Stream, l, opts.KeepMsgID)
		if opts.DryRun {
			fmt.Fprintf(log, "would replay %s:%d (%s) to %s with Nats-Msg-Id %s\n", opts.Stream, seq, l.reason(),
				m.Subject, m.Header.Get(jetstream.MsgIDHeader))
			continue
		}
		if opts.Limiter != nil {
			if err := opts.Limiter.Wait(ctx); err != nil {
				if ctx.Err() != nil {
					return st, ctx.Err()
				}
				return st, fmt.Errorf("rate limiter: %w", err)
			}
		}
		ack, err := js.PublishMsg(ctx, m)
		if err != nil {
			if ctx.Err() != nil {
				return st, ctx.Err()
			}
			return st, fmt.Errorf("replay %s:%d to %s: %w", opts.Stream, seq, m.Subject, err)
		}
		st.Replayed++
		if ack.Duplicate {
			st.Deduped++
		}
		if opts.Delete {
			deleted, err := d.delete(ctx, seq)
			if err != nil {
				return st, fmt.Errorf("delete %s:%d after its replay: %w", opts.Stream, seq, err)
			}
			if deleted {
				st.Deleted++
			}
		}
		if bar != nil {
			_ = bar.Add(1)
		}
		observe()
	}
	if bar != nil {
		_ = bar.Finish()
	}
	return st, nil
}

// String summarises the stats in one line.
func (st replayStats) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "replayed %d of %d", st.Replayed, st.Selected)
	if st.Deduped > 0 {
		fmt.Fprintf(&b, " (%d deduped by the target stream: replayed before)", st.Deduped)
	}
	if st.Deleted > 0 {
		fmt.Fprintf(&b, ", deleted %d from the DLQ", st.Deleted)
	}
	if st.Skipped > 0 {
		fmt.Fprintf(&b, ", skipped %d that are not dead letters", st.Skipped)
	}
	if st.Gone > 0 {
		fmt.Fprintf(&b, ", %d already gone", st.Gone)
	}
	return b.String()
}

// purgeOptions selects the dead letters purgeLetters deletes.
type purgeOptions struct {
	// Stream is the dead-letter stream.
	Stream string
	// All purges the whole stream in one request (including messages
	// stored after the command started).
	All bool
	// Select deletes the messages it matches one by one; used when All
	// is false and Seqs is nil.
	Select selector
	// Seqs deletes the messages at these sequences (the console's
	// selection); those already gone are not counted.
	Seqs []uint64
	// Observe, when not nil, is called with the number of selected
	// messages once they are known and with the number deleted so far
	// after each delete.
	Observe func(selected int, deleted uint64)
}

// purgeLetters deletes the dead letters opts selects: with All the whole
// stream in one purge, else one message delete each. It returns how many
// messages it removed.
func purgeLetters(ctx context.Context, js jetstream.JetStream, opts purgeOptions) (uint64, error) {
	d, err := openDLQ(ctx, js, opts.Stream)
	if err != nil {
		return 0, err
	}
	if opts.All {
		if err := d.stream.Purge(ctx); err != nil {
			return 0, fmt.Errorf("purge %s: %w", opts.Stream, err)
		}
		if opts.Observe != nil {
			opts.Observe(int(d.msgs), d.msgs)
		}
		return d.msgs, nil
	}
	seqs := opts.Seqs
	if seqs == nil {
		if seqs, err = d.seqs(ctx, opts.Select); err != nil {
			return 0, err
		}
	}
	var n uint64
	if opts.Observe != nil {
		opts.Observe(len(seqs), 0)
	}
	for _, seq := range seqs {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		deleted, err := d.delete(ctx, seq)
		if err != nil {
			return n, fmt.Errorf("delete %s:%d: %w", opts.Stream, seq, err)
		}
		if deleted {
			n++
		}
		if opts.Observe != nil {
			opts.Observe(len(seqs), n)
		}
	}
	return n, nil
}

// countLetters returns how many messages purgeLetters would remove.
func countLetters(ctx context.Context, js jetstream.JetStream, opts purgeOptions) (uint64, error) {
	d, err := openDLQ(ctx, js, opts.Stream)
	if err != nil {
		return 0, err
	}
	if opts.All {
		return d.msgs, nil
	}
	if opts.Seqs != nil {
		return uint64(len(opts.Seqs)), nil
	}
	seqs, err := d.seqs(ctx, opts.Select)
	return uint64(len(seqs)), err
}
