package main

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/idemq/idemq/consumer"
	"github.com/nats-io/nats.go/jetstream"
)

// scanBatch is how many messages one pull request of a console scan asks
// for.
const scanBatch = 1000

// scanConsumerTTL is how long the server keeps a scan consumer that its
// scan abandoned (say, the console was killed) before deleting it.
const scanConsumerTTL = 30 * time.Second

// scanRange describes a forward scan of a stream by the console.
type scanRange struct {
	// From is the first sequence read; 0 means the stream's first (or the
	// first at or after Since when it is set).
	From uint64
	// Since starts the scan at the first message stored at or after it
	// when From is 0; the server seeks, nothing before it is read.
	Since time.Time
	// Last is the last sequence read (the snapshot's last sequence).
	Last uint64
	// Subject restricts the scan to a stored subject (wildcards allowed).
	Subject string
	// HeadersOnly reads the headers without the bodies.
	HeadersOnly bool
}

// consumerScan reads the messages of d in the range r in order, through an
// ephemeral pull consumer that acks nothing (AckNone, in memory, deleted
// afterwards), in batches of scanBatch: one round trip per batch instead of
// one per message as dlq.scan does. It calls fn for each message until fn
// returns false or an error, and returns the sequence of the last message
// it read (0 if none). Bodies are nil with HeadersOnly.
func consumerScan(ctx context.Context, js jetstream.JetStream, d *dlq, r scanRange, fn func(letter) (bool, error)) (uint64, error) {
	if d.msgs == 0 || r.Last == 0 || (r.From != 0 && r.From > r.Last) {
		return 0, nil
	}
	cfg := jetstream.ConsumerConfig{
		AckPolicy:         jetstream.AckNonePolicy,
		HeadersOnly:       r.HeadersOnly,
		MemoryStorage:     true,
		InactiveThreshold: scanConsumerTTL,
		Replicas:          1,
		FilterSubject:     r.Subject,
		Description:       "idemq console scan",
	}
	switch {
	case r.From != 0:
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, r.From
	case !r.Since.IsZero():
		since := r.Since
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &since
	default:
		cfg.DeliverPolicy = jetstream.DeliverAllPolicy
	}
	cons, err := js.CreateConsumer(ctx, d.name, cfg)
	if err != nil {
		return 0, fmt.Errorf("scan %s: create consumer: %w", d.name, err)
	}
	name := cons.CachedInfo().Name
	defer func() {
		// The consumer is in memory and expires by itself; deleting it is
		// a courtesy, bounded so that a dead server cannot hold us up.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = js.DeleteConsumer(dctx, d.name, name)
	}()
	var last uint64
	for {
		if err := ctx.Err(); err != nil {
			return last, err
		}
		batch, err := cons.FetchNoWait(scanBatch)
		if err != nil {
			return last, fmt.Errorf("scan %s: fetch: %w", d.name, err)
		}
		n, more, done := 0, true, false
		var ferr error
		for m := range batch.Messages() { // drained to the end, so the fetch goroutine ends
			n++
			if !more || ferr != nil {
				continue
			}
			md, err := m.Metadata()
			if err != nil {
				ferr = fmt.Errorf("scan %s: %w", d.name, err)
				continue
			}
			if md.Sequence.Stream > r.Last {
				more = false
				continue
			}
			l := letter{Seq: md.Sequence.Stream, Subject: m.Subject(), Stored: md.Timestamp, Header: m.Headers()}
			if !r.HeadersOnly {
				l.Data = m.Data()
			}
			last = l.Seq
			if l.Seq == r.Last || md.NumPending == 0 {
				done = true
			}
			more, ferr = fn(l)
		}
		if ferr != nil {
			return last, ferr
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, jetstream.ErrNoHeartbeat) {
			return last, fmt.Errorf("scan %s: fetch: %w", d.name, err)
		}
		if !more || done || n == 0 {
			return last, nil
		}
	}
}

// count is one row of a breakdown: a value and how many letters have it.
type count struct {
	Value string
	N     int
}

// tally is the overview of one dead-letter stream.
type tally struct {
	Stream            string
	Msgs, Bytes       uint64
	FirstSeq, LastSeq uint64
	FirstTime         time.Time
	LastTime          time.Time
	// Reasons and Subjects break the dead letters down by Idemq-Reason and
	// by Idemq-Original-Subject, most frequent first; Subjects holds at
	// most maxSubjectsShown, OtherSubjects says how many more there are.
	Reasons, Subjects []count
	OtherSubjects     int
	// NotDeadLetters counts messages without the dead-letter headers.
	NotDeadLetters int
	// Scanned is how many messages were read, ScanTook how long it took.
	Scanned  int
	ScanTook time.Duration
	// Err is why the stream could not be (fully) counted.
	Err error
}

// maxSubjectsShown is how many original subjects the overview lists; the
// rest are summed up.
const maxSubjectsShown = 25

// tallyStream counts the dead letters of stream by reason and by original
// subject, reading headers only.
func tallyStream(ctx context.Context, js jetstream.JetStream, stream string) tally {
	t := tally{Stream: stream}
	start := time.Now()
	d, err := openDLQ(ctx, js, stream)
	if err != nil {
		t.Err = err
		return t
	}
	st := d.stream.CachedInfo().State
	t.Msgs, t.Bytes, t.FirstSeq, t.LastSeq, t.FirstTime, t.LastTime = st.Msgs, st.Bytes, st.FirstSeq, st.LastSeq, st.FirstTime, st.LastTime
	reasons, subjects := map[string]int{}, map[string]int{}
	_, err = consumerScan(ctx, js, d, scanRange{Last: d.last, HeadersOnly: true}, func(l letter) (bool, error) {
		t.Scanned++
		if !l.isDeadLetter() {
			t.NotDeadLetters++
			return true, nil
		}
		reasons[dash(l.reason())]++
		subjects[l.get(consumer.HeaderOriginalSubject)]++
		return true, nil
	})
	t.Err = err
	t.Reasons = sortedCounts(reasons)
	t.Subjects = sortedCounts(subjects)
	if len(t.Subjects) > maxSubjectsShown {
		t.OtherSubjects = len(t.Subjects) - maxSubjectsShown
		t.Subjects = t.Subjects[:maxSubjectsShown]
	}
	t.ScanTook = time.Since(start).Round(time.Millisecond)
	return t
}

// sortedCounts returns m's entries, most frequent first, then by value.
func sortedCounts(m map[string]int) []count {
	out := make([]count, 0, len(m))
	for v, n := range m {
		out = append(out, count{v, n})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].N != out[j].N {
			return out[i].N > out[j].N
		}
		return out[i].Value < out[j].Value
	})
	return out
}
