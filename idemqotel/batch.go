package idemqotel

import (
	"context"
	"sync"
	"unsafe"

	"go.opentelemetry.io/otel/metric"
)

// The consumer's histogram measurements — every delivery makes two or
// more — are not handed to the SDK one by one on the worker that made
// them. They are appended to one of batchShards buffers and recorded into
// the SDK in runs of batchSize, by whichever worker fills the buffer, and
// at every collection by the collecting goroutine (the callback of the
// observable counters, which the SDK runs before it reads the
// aggregations), so that a collection sees every measurement made before
// it began, as with direct Record calls.
//
// This is about the SDK's cost, not its semantics: a synchronous Record
// resolves the attribute set and updates a data point that the workers on
// every core share, and measured inside a running consumer it cost about
// twice its cost in a tight loop, cache misses and the data points' cache
// lines moving between cores. A run of Records on one goroutine keeps them
// in one cache. Measurements whose context carries a sampled span are
// recorded directly, so that the SDK can keep that span as an exemplar.
//
// A buffer holds at most batchSize measurements: with no collection at all
// (no reader, or views that drop the observable counters so that the SDK
// never calls their callback) the last measurements of a quiet consumer
// wait in its buffers until traffic fills them.
const (
	// batchShards spreads the workers over buffers (by the address of the
	// delivery's Message), so that they rarely wait for one another's
	// lock.
	batchShards = 16
	// batchSize is how many measurements one buffer takes before they are
	// recorded.
	batchSize = 256
)

// histogram indexes the histograms that measurements are batched for.
type histogram uint8

const (
	histProcess histogram = iota
	histStore
	histHandler
	histRetry
	nHistograms
)

// sample is one batched measurement: its value, histogram and attributes.
type sample struct {
	v    float64
	attr *opts
	h    histogram
}

// batcher is the consumer's buffers of measurements.
type batcher struct {
	hists  [nHistograms]metric.Float64Histogram
	shards [batchShards]batchShard
}

type batchShard struct {
	mu    sync.Mutex
	buf   []sample
	spare []sample // a drained buffer for the next swap, nil while in use
	_     [64]byte // keep shards' locks on separate cache lines
}

// add queues one measurement of h. key picks the buffer: the address of
// the delivery's Message, so that one delivery's measurements share a
// shard and the workers spread over them.
func (b *batcher) add(key unsafe.Pointer, h histogram, v float64, attr *opts) {
	s := &b.shards[(uintptr(key)>>7)%batchShards]
	s.mu.Lock()
	if s.buf == nil {
		s.buf = s.take()
	}
	s.buf = append(s.buf, sample{v: v, attr: attr, h: h})
	if len(s.buf) < batchSize {
		s.mu.Unlock()
		return
	}
	full := s.buf
	s.buf = nil
	s.mu.Unlock()
	b.record(s, full)
}

// take returns an empty buffer: the spare one, or a new one. Called with
// s.mu held.
func (s *batchShard) take() []sample {
	if buf := s.spare; buf != nil {
		s.spare = nil
		return buf[:0]
	}
	return make([]sample, 0, batchSize)
}

// record hands the measurements in buf to the SDK and keeps buf as s's
// spare buffer.
func (b *batcher) record(s *batchShard, buf []sample) {
	ctx := context.Background()
	for i := range buf {
		smp := &buf[i]
		b.hists[smp.h].Record(ctx, smp.v, smp.attr.rec...)
	}
	clear(buf) // drop the attribute pointers
	s.mu.Lock()
	if s.spare == nil {
		s.spare = buf[:0]
	}
	s.mu.Unlock()
}

// flush records every buffered measurement; the collection's callback
// calls it.
func (b *batcher) flush() {
	for i := range b.shards {
		s := &b.shards[i]
		s.mu.Lock()
		buf := s.buf
		s.buf = nil
		s.mu.Unlock()
		if len(buf) > 0 {
			b.record(s, buf)
		}
	}
}
