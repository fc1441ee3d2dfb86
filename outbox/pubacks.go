package outbox

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// ackRouter publishes JetStreamPublisher's messages on a nats.go connection
// and collects their PubAcks: each Publish call is a batch with a number of
// its own, each message's reply subject is <inbox>.<batch>.<index>, and one
// subscription on <inbox>.*.* files every answer under its batch. It does
// for the relay what a jetstream context's PublishMsgAsync does, without
// that path's PubAckFuture, two channels, expiry timer and JSON decoding
// per message.
type ackRouter struct {
	nc     *nats.Conn
	prefix string // "<inbox>."
	sub    *nats.Subscription

	mu      sync.Mutex
	next    uint64
	batches map[uint64]*ackBatch
	// stream is the stream name of the last PubAck, reused while the
	// PubAcks name the same stream (touched only by the subscription's
	// handler, which runs one message at a time).
	stream string
}

// ackBatch is one Publish call's messages awaiting their answers; its
// fields are guarded by the router's mu.
type ackBatch struct {
	res  []PublishResult
	got  []bool
	left int
	done chan struct{} // closed when left reaches 0
}

// newAckRouter subscribes to a fresh inbox of nc for the PubAcks.
func newAckRouter(nc *nats.Conn) (*ackRouter, error) {
	a := &ackRouter{nc: nc, prefix: nc.NewInbox() + ".", batches: map[uint64]*ackBatch{}}
	sub, err := nc.Subscribe(a.prefix+"*.*", a.handle)
	if err != nil {
		return nil, err
	}
	// A round's PubAcks arrive together; never drop them as a slow
	// consumer (nats.go's default limit is 512k messages, 64MB).
	if err := sub.SetPendingLimits(-1, -1); err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	a.sub = sub
	return a, nil
}

// publish publishes msgs with Nats-Msg-Id and fills res from their PubAcks,
// waiting at most timeout after the last publish; a message without an
// answer by then gets ErrPublishTimeout. It returns ctx's error if ctx ends
// first.
func (a *ackRouter) publish(ctx context.Context, msgs []Outgoing, res []PublishResult, timeout time.Duration) error {
	b := &ackBatch{res: res, got: make([]bool, len(msgs)), left: len(msgs), done: make(chan struct{})}
	a.mu.Lock()
	a.next++
	id := a.next
	a.batches[id] = b
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.batches, id)
		for i, got := range b.got {
			if !got {
				b.got[i] = true
				res[i] = PublishResult{Err: ErrPublishTimeout}
			}
		}
		a.mu.Unlock()
	}()

	reply := make([]byte, 0, len(a.prefix)+40)
	reply = append(reply, a.prefix...)
	reply = strconv.AppendUint(reply, id, 10)
	reply = append(reply, '.')
	base := len(reply)
	for i, x := range msgs {
		h := nats.Header(x.Header)
		if h == nil {
			h = make(nats.Header, 1)
		}
		h[jetstream.MsgIDHeader] = []string{x.ID}
		reply = strconv.AppendInt(reply[:base], int64(i), 10)
		m := &nats.Msg{Subject: x.Subject, Reply: string(reply), Header: h, Data: x.Data}
		if err := a.nc.PublishMsg(m); err != nil {
			a.settle(b, i, publishFailed(err))
		}
	}

	timer := time.NewTimer(timeout)
	defer timer.Stop()
	select {
	case <-b.done:
		return nil
	case <-timer.C:
		return nil // the deferred function times out the rest
	case <-ctx.Done():
		return ctx.Err()
	}
}

// settle records message i's result unless it already has one.
func (a *ackRouter) settle(b *ackBatch, i int, r PublishResult) {
	a.mu.Lock()
	b.record(i, r)
	a.mu.Unlock()
}

// record sets message i's result unless it already has one (or i is out
// of range), and closes done with the batch's last; called with the
// router's mu held.
func (b *ackBatch) record(i int, r PublishResult) {
	if i >= len(b.got) || b.got[i] {
		return
	}
	b.got[i] = true
	b.res[i] = r
	if b.left--; b.left == 0 {
		close(b.done)
	}
}

// handle files one answer under its batch; answers of batches that gave
// up waiting, and anything else, are dropped.
func (a *ackRouter) handle(m *nats.Msg) {
	rest, ok := strings.CutPrefix(m.Subject, a.prefix)
	if !ok {
		return
	}
	bs, is, ok := strings.Cut(rest, ".")
	if !ok {
		return
	}
	id, err := strconv.ParseUint(bs, 10, 64)
	if err != nil {
		return
	}
	i, err := strconv.Atoi(is)
	if err != nil || i < 0 {
		return
	}
	r := a.pubAck(m)
	a.mu.Lock()
	if b := a.batches[id]; b != nil {
		b.record(i, r)
	}
	a.mu.Unlock()
}

// pubAck reads a publish's answer as nats.go's jetstream context does: a
// "no responders" status is ErrNoStreamResponse, an error in the PubAck is
// its *jetstream.APIError, a PubAck without a stream is ErrInvalidJSAck.
func (a *ackRouter) pubAck(m *nats.Msg) PublishResult {
	if len(m.Data) == 0 {
		if m.Header.Get("Status") == "503" {
			return PublishResult{Err: jetstream.ErrNoStreamResponse}
		}
		return PublishResult{Err: jetstream.ErrInvalidJSAck}
	}
	if stream, dup, ok := a.quickAck(m.Data); ok {
		return PublishResult{Stream: stream, Duplicate: dup}
	}
	var pa struct {
		Error     *jetstream.APIError `json:"error"`
		Stream    string              `json:"stream"`
		Duplicate bool                `json:"duplicate"`
	}
	if err := json.Unmarshal(m.Data, &pa); err != nil {
		return PublishResult{Err: jetstream.ErrInvalidJSAck}
	}
	if pa.Error != nil {
		return publishFailed(pa.Error)
	}
	if pa.Stream == "" {
		return PublishResult{Err: jetstream.ErrInvalidJSAck}
	}
	return PublishResult{Stream: pa.Stream, Duplicate: pa.Duplicate}
}

// quickAck reads the stream name and the duplicate flag of a PubAck in
// one of the forms nats-server writes for a stored message,
//
//	{"stream":"S","seq":1}
//	{"stream":"S","domain":"D","seq":1}
//	{"stream":"S","seq":1,"duplicate": true}
//
// (the duplicate flag also without the space, the domain with it), without
// a JSON decoder; ok is false for anything else (an error, an escaped name,
// other fields, other spacing), which the decoder then reads.
func (a *ackRouter) quickAck(data []byte) (stream string, duplicate, ok bool) {
	name, rest, ok := quotedField(data, `{"stream":"`)
	if !ok || len(name) == 0 {
		return "", false, false
	}
	if _, r, ok := quotedField(rest, `,"domain":"`); ok {
		rest = r
	}
	rest, ok = bytes.CutPrefix(rest, []byte(`,"seq":`))
	if !ok {
		return "", false, false
	}
	digits := 0
	for digits < len(rest) && rest[digits] >= '0' && rest[digits] <= '9' {
		digits++
	}
	if digits == 0 || digits > 20 {
		return "", false, false
	}
	switch string(rest[digits:]) {
	case `}`:
	case `,"duplicate": true}`, `,"duplicate":true}`:
		duplicate = true
	default:
		return "", false, false
	}
	if string(name) != a.stream {
		a.stream = string(name)
	}
	return a.stream, duplicate, true
}

// quotedField cuts prefix (ending in an opening quote) and a string up to
// its closing quote from data, and returns the string and what follows the
// quote; ok is false when data does not start with prefix or the string
// is not one the JSON decoder reads as it is (see plainJSONString).
func quotedField(data []byte, prefix string) (value, rest []byte, ok bool) {
	rest, ok = bytes.CutPrefix(data, []byte(prefix))
	if !ok {
		return nil, nil, false
	}
	end := bytes.IndexByte(rest, '"')
	if end < 0 || !plainJSONString(rest[:end]) {
		return nil, nil, false
	}
	return rest[:end], rest[end+1:], true
}

// plainJSONString reports whether b, the inside of a JSON string, reads as
// exactly its bytes: valid UTF-8, no escape, no control character.
func plainJSONString(b []byte) bool {
	for _, c := range b {
		if c < 0x20 || c == '\\' {
			return false
		}
	}
	return utf8.Valid(b)
}
