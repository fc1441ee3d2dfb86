package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/consumer"
)

// errNoLetter is returned when the requested DLQ sequence holds no message.
var errNoLetter = errors.New("no message at that sequence")

// errNotDeadLetter is returned for a message without the idemq dead-letter
// headers (no Idemq-Original-Subject): it cannot be replayed.
var errNotDeadLetter = errors.New("not an idemq dead letter (no " + consumer.HeaderOriginalSubject + " header)")

// connectTimeout bounds the initial connection to NATS.
const connectTimeout = 5 * time.Second

// connectNATS connects to url for a CLI command; the caller closes the
// connection.
func connectNATS(url string) (*nats.Conn, jetstream.JetStream, error) {
	nc, err := nats.Connect(url, nats.Name("idemq-cli"), nats.Timeout(connectTimeout))
	if err != nil {
		return nil, nil, fmt.Errorf("connect to nats at %s: %w", url, err)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// errStreamNotFound is returned when the dead-letter stream named by
// -stream does not exist on the server named by -nats.
var errStreamNotFound = errors.New("dead-letter stream not found")

// streamNotFound explains a missing dead-letter stream: which server was
// asked, which streams it has, and the flags that name another stream or
// another server.
func streamNotFound(ctx context.Context, js jetstream.JetStream, name string) error {
	server := js.Conn().ConnectedUrlRedacted()
	var names []string
	lister := js.StreamNames(ctx)
	for n := range lister.Name() {
		names = append(names, n)
	}
	slices.Sort(names)
	have := "it has no streams"
	switch {
	case lister.Err() != nil:
		have = fmt.Sprintf("its streams could not be listed: %v", lister.Err())
	case len(names) > 20:
		have = fmt.Sprintf("it has %d streams: %s, …", len(names), strings.Join(names[:20], ", "))
	case len(names) > 0:
		have = "its streams: " + strings.Join(names, ", ")
	}
	return fmt.Errorf("%w: no stream %q on the NATS server at %s (%s); name the dead-letter stream with -stream NAME, "+
		"or another server with -nats URL (an embedded server, like the payments demo's, is gone once its program exits)",
		errStreamNotFound, name, server, have)
}

// letter is one message stored in a dead-letter stream.
type letter struct {
	Seq     uint64
	Subject string
	Stored  time.Time
	Header  nats.Header
	Data    []byte
}

// directGetHeaders are the headers a direct get adds to describe the stored
// message; they are not part of it.
var directGetHeaders = []string{
	jetstream.StreamHeader, jetstream.SequenceHeader, jetstream.TimeStampHeaer,
	jetstream.SubjectHeader, "Nats-Last-Sequence", "Nats-Num-Pending",
}

// get returns the first value of header name, matched case-insensitively.
func (l *letter) get(name string) string {
	if v := l.Header.Get(name); v != "" {
		return v
	}
	for k, v := range l.Header {
		if strings.EqualFold(k, name) && len(v) > 0 {
			return v[0]
		}
	}
	return ""
}

// reason returns the Idemq-Reason header.
func (l *letter) reason() string { return l.get(consumer.HeaderReason) }

// isDeadLetter reports whether the message carries the idemq dead-letter
// format (it knows where it came from).
func (l *letter) isDeadLetter() bool { return l.get(consumer.HeaderOriginalSubject) != "" }

// dlq reads a dead-letter stream without consuming anything: every read is
// a JetStream message get by sequence, so no consumer, ack or redelivery is
// involved and the messages stay where they are.
type dlq struct {
	name   string
	stream jetstream.Stream
	direct bool
	first  uint64
	last   uint64
	msgs   uint64
}

// openDLQ looks the stream up and takes a snapshot of its bounds: scans stop
// at the last sequence seen here, so messages added meanwhile (say, replays
// that failed again and were dead-lettered anew) are not visited.
func openDLQ(ctx context.Context, js jetstream.JetStream, name string) (*dlq, error) {
	s, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, streamNotFound(ctx, js, name)
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	info := s.CachedInfo()
	return &dlq{
		name:   name,
		stream: s,
		direct: info.Config.AllowDirect,
		first:  info.State.FirstSeq,
		last:   info.State.LastSeq,
		msgs:   info.State.Msgs,
	}, nil
}

func (d *dlq) letter(m *jetstream.RawStreamMsg) letter {
	h := m.Header
	if d.direct && h != nil {
		c := make(nats.Header, len(h))
		for k, v := range h {
			if !slices.Contains(directGetHeaders, k) {
				c[k] = v
			}
		}
		h = c
	}
	return letter{Seq: m.Sequence, Subject: m.Subject, Stored: m.Time, Header: h, Data: m.Data}
}

// get returns the message at seq, or an error wrapping errNoLetter.
func (d *dlq) get(ctx context.Context, seq uint64) (letter, error) {
	m, err := d.stream.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return letter{}, fmt.Errorf("%s:%d: %w", d.name, seq, errNoLetter)
	}
	if err != nil {
		return letter{}, fmt.Errorf("get %s:%d: %w", d.name, seq, err)
	}
	return d.letter(m), nil
}

// delete removes the message at seq. It reports false, and no error, when
// the message was already gone (the server's delete error carries no code
// to test, so a failed delete is followed by a get).
func (d *dlq) delete(ctx context.Context, seq uint64) (bool, error) {
	err := d.stream.DeleteMsg(ctx, seq)
	if err == nil {
		return true, nil
	}
	if _, gerr := d.stream.GetMsg(ctx, seq); errors.Is(gerr, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	return false, err
}

// scan calls fn for each message on subject (every subject when empty) from
// the first to the snapshot's last sequence, in order, until fn returns
// false or an error. Deleted sequences are skipped by the server.
func (d *dlq) scan(ctx context.Context, subject string, fn func(letter) (bool, error)) error {
	if d.msgs == 0 {
		return nil
	}
	if subject == "" {
		subject = ">"
	}
	for seq := d.first; seq <= d.last; {
		m, err := d.stream.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read %s from sequence %d: %w", d.name, seq, err)
		}
		if m.Sequence > d.last {
			return nil
		}
		more, err := fn(d.letter(m))
		if err != nil || !more {
			return err
		}
		seq = m.Sequence + 1
	}
	return nil
}

// selector picks dead letters; empty (zero) fields match everything.
type selector struct {
	// Subject is the subject the dead letter is stored on in the DLQ
	// stream (wildcards allowed); the server filters on it.
	Subject string
	// Reason is the Idemq-Reason wire value.
	Reason string
	// OriginalSubject matches Idemq-Original-Subject, with NATS wildcards
	// (* for one token, > for the rest).
	OriginalSubject string
	// Since and Until bound the time the dead letter was stored in the
	// DLQ stream: Since <= stored < Until.
	Since, Until time.Time
}

// matches reports whether l passes the filters other than Subject (which
// the server applies when reading).
func (sel selector) matches(l letter) bool {
	switch {
	case sel.Reason != "" && l.reason() != sel.Reason:
		return false
	case sel.OriginalSubject != "" && !subjectMatches(sel.OriginalSubject, l.get(consumer.HeaderOriginalSubject)):
		return false
	case !sel.Since.IsZero() && l.Stored.Before(sel.Since):
		return false
	case !sel.Until.IsZero() && !l.Stored.Before(sel.Until):
		return false
	}
	return true
}

// filtered reports whether sel selects less than the whole stream.
func (sel selector) filtered() bool { return sel != selector{} }

// subjectMatches reports whether subject matches the NATS subject pattern
// (tokens separated by dots, * matching one token, > the remaining ones).
func subjectMatches(pattern, subject string) bool {
	if subject == "" {
		return false
	}
	pt, st := strings.Split(pattern, "."), strings.Split(subject, ".")
	for i, p := range pt {
		if p == ">" && i == len(pt)-1 {
			return len(st) > i
		}
		if i >= len(st) || (p != "*" && p != st[i]) {
			return false
		}
	}
	return len(pt) == len(st)
}

// seqs returns the sequences of the messages sel picks, in order.
func (d *dlq) seqs(ctx context.Context, sel selector) ([]uint64, error) {
	var out []uint64
	err := d.scan(ctx, sel.Subject, func(l letter) (bool, error) {
		if sel.matches(l) {
			out = append(out, l.Seq)
		}
		return true, nil
	})
	return out, err
}

// checkReason validates a -reason value against the dead-letter wire values.
func checkReason(r string) error {
	if r == "" {
		return nil
	}
	_, err := consumer.ParseReason(r)
	return err
}

// listEntry is one dead letter as list prints it (-json prints it as is).
type listEntry struct {
	Seq             uint64    `json:"seq"`
	Subject         string    `json:"subject"`
	StoredAt        time.Time `json:"stored_at"`
	Reason          string    `json:"reason"`
	OriginalSubject string    `json:"original_subject"`
	OriginalStream  string    `json:"original_stream"`
	// OriginalSequence and Attempts are the headers' numbers; 0 when the
	// header is missing or not a number (no stream sequence is 0, and a
	// dead letter has run at least once).
	OriginalSequence uint64 `json:"original_sequence"`
	Consumer         string `json:"consumer"`
	Attempts         uint64 `json:"attempts"`
	FailedAt         string `json:"failed_at"`
	Host             string `json:"host"`
	Error            string `json:"error"`
	Size             int    `json:"size"`
}

func entryOf(l letter) listEntry {
	return listEntry{
		Seq:              l.Seq,
		Subject:          l.Subject,
		StoredAt:         l.Stored.UTC(),
		Reason:           l.reason(),
		OriginalSubject:  l.get(consumer.HeaderOriginalSubject),
		OriginalStream:   l.get(consumer.HeaderOriginalStream),
		OriginalSequence: headerNumber(l.get(consumer.HeaderOriginalSequence)),
		Consumer:         l.get(consumer.HeaderConsumer),
		Attempts:         headerNumber(l.get(consumer.HeaderAttempts)),
		FailedAt:         l.get(consumer.HeaderFailedAt),
		Host:             l.get(consumer.HeaderHost),
		Error:            l.get(consumer.HeaderError),
		Size:             len(l.Data),
	}
}

// listOptions configures listLetters.
type listOptions struct {
	selector
	// Limit is the most letters printed; 0 means all.
	Limit int
	// JSON prints one JSON object per line instead of columns.
	JSON bool
	// Width is the line width the error column is cut to, in columns.
	Width int
}

// listLetters prints the dead letters of stream that opts selects, oldest
// first, and returns how many it printed.
func listLetters(ctx context.Context, js jetstream.JetStream, stream string, opts listOptions, w io.Writer) (int, error) {
	d, err := openDLQ(ctx, js, stream)
	if err != nil {
		return 0, err
	}
	var entries []listEntry
	enc := json.NewEncoder(w)
	err = d.scan(ctx, opts.Subject, func(l letter) (bool, error) {
		if !opts.matches(l) {
			return true, nil
		}
		e := entryOf(l)
		if opts.JSON {
			if err := enc.Encode(e); err != nil {
				return false, err
			}
		}
		entries = append(entries, e)
		return opts.Limit <= 0 || len(entries) < opts.Limit, nil
	})
	if err != nil {
		return len(entries), err
	}
	if !opts.JSON {
		if err := writeTable(w, entries, opts.Width); err != nil {
			return len(entries), err
		}
	}
	return len(entries), nil
}

// writeTable prints entries in aligned columns, the error last and cut so
// that a line fits width.
func writeTable(w io.Writer, entries []listEntry, width int) error {
	head := []string{"SEQ", "REASON", "SUBJECT", "ORIGIN", "ATTEMPTS", "FAILED-AT", "ERROR"}
	rows := [][]string{head}
	for _, e := range entries {
		origin := dash(e.OriginalStream) + ":" + numDash(e.OriginalSequence)
		if e.OriginalStream == "" && e.OriginalSequence == 0 {
			origin = "-"
		}
		rows = append(rows, []string{
			strconv.FormatUint(e.Seq, 10), dash(e.Reason), dash(e.OriginalSubject), origin,
			numDash(e.Attempts), dash(e.FailedAt), e.Error,
		})
	}
	return writeColumns(w, rows, width)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// numDash formats n, or "-" for 0 (unknown).
func numDash(n uint64) string {
	if n == 0 {
		return "-"
	}
	return strconv.FormatUint(n, 10)
}

// headerNumber parses a numeric dead-letter header; 0 when it is missing or
// not a decimal number.
func headerNumber(v string) uint64 {
	n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0
	}
	return n
}

// cut shortens s to at most n runes, ending with "…" when it was cut.
func cut(s string, n int) string {
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

// showLetter prints every header of the message at seq and its body: JSON
// indented, text as is, anything else as a hex dump.
func showLetter(ctx context.Context, js jetstream.JetStream, stream string, seq uint64, w io.Writer) error {
	d, err := openDLQ(ctx, js, stream)
	if err != nil {
		return err
	}
	l, err := d.get(ctx, seq)
	if err != nil {
		return err
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "Stream:    %s\nSequence:  %d\nSubject:   %s\nStored-At: %s\n", stream, l.Seq, l.Subject,
		l.Stored.UTC().Format(time.RFC3339Nano))
	if !l.isDeadLetter() {
		fmt.Fprintf(&b, "Note:      %v\n", errNotDeadLetter)
	}
	b.WriteString("\nHeaders:\n")
	keys := make([]string, 0, len(l.Header))
	for k := range l.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if len(keys) == 0 {
		b.WriteString("  (none)\n")
	}
	for _, k := range keys {
		for _, v := range l.Header[k] {
			fmt.Fprintf(&b, "  %s: %s\n", k, v)
		}
	}
	writeBody(&b, l.Data)
	_, err = w.Write(b.Bytes())
	return err
}

// Body kinds, as bodyView names them.
const (
	bodyEmpty  = "empty"
	bodyJSON   = "JSON"
	bodyText   = "text"
	bodyBinary = "binary"
)

// bodyView renders a message body for a person: its kind and the text to
// show — JSON indented, text as is, anything else as a hex dump. show and
// the console both use it.
func bodyView(data []byte) (kind, text string) {
	switch {
	case len(data) == 0:
		return bodyEmpty, ""
	case json.Valid(data):
		var ind bytes.Buffer
		if err := json.Indent(&ind, data, "", "  "); err != nil {
			ind.Reset()
			ind.Write(data)
		}
		return bodyJSON, ind.String()
	case printable(data):
		return bodyText, string(data)
	default:
		return bodyBinary, hex.Dump(data)
	}
}

// writeBody renders a message body for a person.
func writeBody(b *bytes.Buffer, data []byte) {
	kind, text := bodyView(data)
	switch kind {
	case bodyEmpty:
		b.WriteString("\nBody: (empty)\n")
		return
	case bodyBinary:
		fmt.Fprintf(b, "\nBody (binary, %d bytes):\n", len(data))
		b.WriteString(text)
		return
	}
	fmt.Fprintf(b, "\nBody (%s, %d bytes):\n", kind, len(data))
	b.WriteString(text)
	if kind == bodyJSON || !strings.HasSuffix(text, "\n") {
		b.WriteByte('\n')
	}
}

// printable reports whether data is UTF-8 text without control characters
// other than tab, newline and carriage return.
func printable(data []byte) bool {
	if !utf8.Valid(data) {
		return false
	}
	for _, r := range string(data) {
		if r == '\n' || r == '\t' || r == '\r' {
			continue
		}
		if !unicode.IsPrint(r) && !unicode.IsSpace(r) {
			return false
		}
	}
	return true
}
