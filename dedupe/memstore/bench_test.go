package memstore_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
)

// reportCPU reports the process CPU time per operation since start as
// cpu-ns/op, when the platform tells it: unlike ns/op it leaves out the time
// the benchmark waited for a CPU that other processes held.
func reportCPU(b *testing.B, start time.Duration) {
	if end, ok := processCPU(); ok && b.N > 0 {
		b.ReportMetric(float64(end-start)/float64(b.N), "cpu-ns/op")
	}
}

// BenchmarkClaimComplete measures one claim of a fresh key followed by its
// completion, the work the store does per message. The store is sized so
// that it never fills.
func BenchmarkClaimComplete(b *testing.B) {
	s := memstore.New(memstore.Config{MaxKeys: b.N + 1024})
	ctx := context.Background()
	res := dedupe.Result{Data: []byte("ok")}
	keys := newKeys(b.N)
	b.ReportAllocs()
	b.ResetTimer()
	cpu, _ := processCPU()
	defer reportCPU(b, cpu)
	for i := 0; i < b.N; i++ {
		key := keys.at(i)
		c, err := s.Claim(ctx, key, "fp", 30*time.Second, time.Hour)
		if err != nil || c.Status != dedupe.Acquired {
			b.Fatalf("claim: %v %v", c.Status, err)
		}
		if err := s.Complete(ctx, key, c.Token, res, time.Hour); err != nil {
			b.Fatal(err)
		}
	}
}

// keyList is n distinct keys "msg-0", "msg-1", ... built before a
// benchmark's timer starts, held as one string and the keys' end offsets:
// no pointer per key, so that the garbage collector's marking of the
// benchmark's own key list, which a consumer does not have (its keys come
// one message at a time), stays out of the figures.
type keyList struct {
	all  string
	ends []uint32
}

func newKeys(n int) keyList {
	buf := make([]byte, 0, n*12)
	ends := make([]uint32, n)
	for i := range ends {
		buf = append(buf, "msg-"...)
		buf = strconv.AppendInt(buf, int64(i), 10)
		ends[i] = uint32(len(buf))
	}
	return keyList{all: string(buf), ends: ends}
}

// at returns key number i.
func (k keyList) at(i int) string {
	start := uint32(0)
	if i > 0 {
		start = k.ends[i-1]
	}
	return k.all[start:k.ends[i]]
}

// BenchmarkClaimCompleteParallel is BenchmarkClaimComplete from
// GOMAXPROCS goroutines, showing the effect of sharding. Its cpu-ns/op is
// the CPU time of all goroutines per pair.
func BenchmarkClaimCompleteParallel(b *testing.B) {
	s := memstore.New(memstore.Config{MaxKeys: b.N + 1024})
	ctx := context.Background()
	res := dedupe.Result{Data: []byte("ok")}
	var seq atomic.Uint64
	b.ReportAllocs()
	cpu, _ := processCPU()
	defer reportCPU(b, cpu)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			key := "msg-" + strconv.FormatUint(seq.Add(1), 10)
			c, err := s.Claim(ctx, key, "fp", 30*time.Second, time.Hour)
			if err != nil || c.Status != dedupe.Acquired {
				b.Errorf("claim: %v %v", c.Status, err)
				return
			}
			if err := s.Complete(ctx, key, c.Token, res, time.Hour); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkDuplicate measures the claim of a key that completed already.
func BenchmarkDuplicate(b *testing.B) {
	s := memstore.New(memstore.Config{})
	ctx := context.Background()
	c, _ := s.Claim(ctx, "k", "fp", 30*time.Second, time.Hour)
	if err := s.Complete(ctx, "k", c.Token, dedupe.Result{Data: []byte("ok")}, time.Hour); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	cpu, _ := processCPU()
	defer reportCPU(b, cpu)
	for i := 0; i < b.N; i++ {
		if c, err := s.Claim(ctx, "k", "fp", 30*time.Second, time.Hour); err != nil || c.Status != dedupe.Duplicate {
			b.Fatalf("claim: %v %v", c.Status, err)
		}
	}
}

// BenchmarkRetainedKeys1M fills a store with 1,000,000 completed records
// (keys like "msg-0000123", each with its own 64-character hex fingerprint,
// an empty result) and reports the heap they retain as B/key. Keys and
// fingerprints are built after the baseline heap snapshot and held only by
// the store, as a consumer's are (they come from each message), so B/key
// counts their bytes too. Each iteration builds and measures a new store, so
// run it with -benchtime=1x.
func BenchmarkRetainedKeys1M(b *testing.B) {
	const n = 1_000_000
	ctx := context.Background()
	b.ResetTimer()
	for it := 0; it < b.N; it++ {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		s := memstore.New(memstore.Config{MaxKeys: n})
		for i := range n {
			k := "msg-" + strconv.Itoa(10_000_000 + i)[1:]
			sum := sha256.Sum256([]byte(k))
			fp := hex.EncodeToString(sum[:])
			c, err := s.Claim(ctx, k, fp, 30*time.Second, time.Hour)
			if err != nil || c.Status != dedupe.Acquired {
				b.Fatalf("claim: %v %v", c.Status, err)
			}
			if err := s.Complete(ctx, k, c.Token, dedupe.Result{}, time.Hour); err != nil {
				b.Fatal(err)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if s.Len() != n {
			b.Fatalf("Len = %d, want %d", s.Len(), n)
		}
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/n, "B/key")
		runtime.KeepAlive(s)
	}
}
