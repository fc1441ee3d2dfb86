package memstore

import (
	"encoding/binary"
	"math/bits"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/idemq/idemq/dedupe"
)

// rec is one record, 24 bytes with no pointer. Its key and fingerprint are
// an arena entry; a completed record's result is another; an in-progress
// record's lease lives in the shard's leases table, which only in-progress
// records use.
type rec struct {
	exp  int64  // ExpiresAt, Unix nanoseconds: from then on the record counts as absent
	off  uint32 // the key entry in the arena
	res  uint32 // in progress: the lease's number; done or failed with a result: the result entry
	hash uint32 // the key's hash (the high half of what chose the shard)
	meta uint32 // the state (the low two bits) and hasResult
}

const (
	stateMask = 3
	// hasResult marks a completed record with a non-empty result.
	hasResult = 1 << 2
)

func (r *rec) state() dedupe.State { return dedupe.State(r.meta & stateMask) }

// lease is what an in-progress record holds besides its rec.
type lease struct {
	tok      uint64 // the current token's number; 0 after Release
	until    int64  // LeaseUntil, Unix nanoseconds
	fence    uint64 // the current (or last) lease's fence
	attempts int    // the current (or last) lease's attempt number
}

// shard is one independently locked part of a Store: records numbered
// densely (in pages), found through an open-addressing index of record
// numbers (linear probing, at most three quarters full, with a control byte
// per slot) or, for the fewer than pendBatch newest, among the pending
// records; their bytes in an arena.
type shard struct {
	mu      sync.Mutex
	idx     []uint32 // 0 for an empty slot, else a record number + 1 and a hash tag (see find)
	ctrl    []uint8  // per slot of idx: 0 for an empty one, else ctrlTag of its record's hash
	indexed int      // records 0 to indexed-1 are in idx; the later ones are pending (see add)
	pend    uint64   // pendBit of every pending record's hash
	recs    recs
	leases  []lease
	freeL   []uint32 // numbers of unused leases
	arena   arena
	inserts int    // since the last sweep
	num     uint64 // the shard's number
	tokSeq  uint64 // sequence number of the next token (from a random start, never 0)
	tokBase uint64 // sequence number of the first token in toks
	toks    string // the text of tokenBatch tokens, tokSeq's among them
	// The addresses of ctrl's and idx's first elements and len(idx)-1, for
	// hint, which reads them without the lock (reindex sets them).
	ctrlAt   atomic.Uintptr
	idxAt    atomic.Uintptr
	ctrlMask atomic.Uint32
	_        [64]byte
}

// find returns the number of key's record, or -1.
//
// An index slot of a table of 2^k slots holds the record number + 1 in its
// low k bits and the key hash's high 32-k bits above them (those that did
// not choose the slot), so that a probe reads a record only when 32 bits of
// the hash match. The table is at most three quarters full, so the number
// never reaches the high bits.
//
// A probe reads the control bytes, one per slot, and the slot itself only
// when its control byte holds the key's 7-bit ctrlTag. The control bytes are
// a quarter of the index's size, so that the lookup of a new key, which
// reads memory at a random place, more often finds it in a cache and within
// the reach of the TLB; and a new key does not go into the index at once
// (see add), so that its slot, another random place, is not written while
// the shard is locked for the claim.
func (sh *shard) find(key string, h uint32) int {
	if sh.pend&pendBit(h) != 0 {
		// Newest first: a Complete follows its Claim soon.
		for i := sh.recs.len() - 1; i >= sh.indexed; i-- {
			if r := sh.recs.at(i); r.hash == h {
				if k, _, _ := sh.arena.key(r.off); string(k) == key {
					return i
				}
			}
		}
	}
	if len(sh.idx) == 0 {
		return -1
	}
	m := uint32(len(sh.idx) - 1)
	tag := h &^ m
	tags := uint64(ctrlTag(h)) * ones
	ctrl := sh.ctrl[:m+1+ctrlGroup]
	// Eight control bytes at a time (the slots from p on, the clones at
	// the end standing for the first slots), with no branch per slot:
	// the slots before the group's first free one whose byte is the key's
	// tag.
	for p := h & m; ; p = (p + ctrlGroup) & m {
		g := binary.LittleEndian.Uint64(ctrl[p : p+ctrlGroup])
		x := g ^ tags
		match := ^((x&lows + lows) | x) & highs // the bytes of g equal to the tag
		free := ^g & highs
		if free != 0 {
			match &= free&-free - 1
		}
		for ; match != 0; match &= match - 1 {
			q := (p + uint32(bits.TrailingZeros64(match)/8)) & m
			if v := sh.idx[q]; v&^m == tag {
				i := int(v&m) - 1
				r := sh.recs.at(i)
				if r.hash == h {
					if k, _, _ := sh.arena.key(r.off); string(k) == key {
						return i
					}
				}
			}
		}
		if free != 0 {
			return -1
		}
	}
}

// hint starts fetching into the processor's caches the control bytes that
// find(key, h) reads first (both cache lines when the eight of them
// straddle two) and the index slot beside them, without waiting for them
// and without the lock. The operations on a key call it first, before
// they read the clock and take the lock, so that the cache misses of a new
// key (its lookup reads the control bytes at a random place of a large
// table, and the batch that indexes it later writes the slot) overlap that
// work instead of following it. The tables' addresses and size may be torn
// or stale (a reindex in between): the fetch is then merely useless, as
// prefetch never faults.
func (sh *shard) hint(h uint32) {
	if at := sh.ctrlAt.Load(); at != 0 {
		m := uintptr(h & sh.ctrlMask.Load())
		prefetch(at+m, at+m+ctrlGroup-1, sh.idxAt.Load()+4*m)
	}
}

// Control bytes are read ctrlGroup at a time; the ctrlGroup bytes after the
// last slot's are clones of the first slots', so that a group starting near
// the end reads on past it.
const (
	ctrlGroup = 8
	ones      = 0x0101010101010101
	highs     = 0x8080808080808080
	lows      = 0x7f7f7f7f7f7f7f7f
)

// setCtrl sets slot p's control byte to c, and its clone.
func (sh *shard) setCtrl(p uint32, c uint8) {
	sh.ctrl[p] = c
	if p < ctrlGroup {
		sh.ctrl[uint32(len(sh.idx))+p] = c
	}
}

// ctrlTag is the control byte of a slot holding a key of hash h: its top 7
// bits, and the top bit set so that it is never 0.
func ctrlTag(h uint32) uint8 { return uint8(0x80 | h>>25) }

// pendBit is the bit of shard.pend of a pending record of hash h.
func pendBit(h uint32) uint64 { return 1 << (h >> 26) }

// pendBatch is the number of pending records add lets accumulate before it
// indexes them.
const pendBatch = 32

// place puts record number i, of hash h, in the first free slot of its
// probe sequence.
func (sh *shard) place(i int, h uint32) {
	m := uint32(len(sh.idx) - 1)
	for p := h & m; ; p = (p + ctrlGroup) & m {
		if free := ^binary.LittleEndian.Uint64(sh.ctrl[p:p+ctrlGroup]) & highs; free != 0 {
			p = (p + uint32(bits.TrailingZeros64(free)/8)) & m
			sh.idx[p] = h&^m | uint32(i+1)
			sh.setCtrl(p, ctrlTag(h))
			return
		}
	}
}

// slot returns the index slot that holds record number i, of hash h, which
// is indexed.
func (sh *shard) slot(i int, h uint32) uint32 {
	m := uint32(len(sh.idx) - 1)
	p := h & m
	for sh.idx[p]&m != uint32(i+1) {
		p = (p + 1) & m
	}
	return p
}

// reindex rebuilds the index with n slots, a power of two, every record in
// it.
func (sh *shard) reindex(n int) {
	sh.idx = make([]uint32, n)
	sh.ctrl = make([]uint8, n+ctrlGroup)
	sh.ctrlAt.Store(uintptr(unsafe.Pointer(&sh.ctrl[0])))
	sh.idxAt.Store(uintptr(unsafe.Pointer(&sh.idx[0])))
	sh.ctrlMask.Store(uint32(n - 1))
	for i := range sh.recs.len() {
		sh.place(i, sh.recs.at(i).hash)
	}
	sh.indexed = sh.recs.len()
	sh.pend = 0
}

// add appends r, whose key is absent, and returns its number. The record
// is pending: find looks for it among the records after the indexed ones
// until pendBatch of them have accumulated and flush indexes them at once.
// The index has room for every record, pending ones included.
func (sh *shard) add(r rec) int {
	if n := sh.recs.len() + 1; n*4 > len(sh.idx)*3 {
		sh.reindex(max(8, 2*len(sh.idx)))
	}
	i := sh.recs.push(r)
	sh.pend |= pendBit(r.hash)
	if i+1-sh.indexed >= pendBatch {
		sh.flush()
	}
	return i
}

// flush indexes the pending records. Their slots' cache misses are
// independent of one another, so the processor waits for them together
// (a loop that read every slot ahead first measured no faster).
func (sh *shard) flush() {
	n := sh.recs.len()
	if sh.indexed == n {
		return
	}
	for i := sh.indexed; i < n; i++ {
		sh.place(i, sh.recs.at(i).hash)
	}
	sh.indexed = n
	sh.pend = 0
}

// newLease returns the number of an unused lease, set to l.
func (sh *shard) newLease(l lease) uint32 {
	if n := len(sh.freeL); n > 0 {
		i := sh.freeL[n-1]
		sh.freeL = sh.freeL[:n-1]
		sh.leases[i] = l
		return i
	}
	sh.leases = append(sh.leases, l)
	return uint32(len(sh.leases) - 1)
}

func (sh *shard) dropLease(i uint32) {
	sh.leases[i] = lease{}
	sh.freeL = append(sh.freeL, i)
}

// clear gives back what record r holds besides its key entry: its lease or
// its result.
func (sh *shard) clear(r *rec) {
	switch {
	case r.state() == dedupe.StateInProgress:
		sh.dropLease(r.res)
	case r.meta&hasResult != 0:
		_, n := sh.arena.result(r.res)
		sh.arena.release(r.res, n)
	}
	r.meta &^= hasResult
}

// remove deletes record number i: the last record takes its number.
func (sh *shard) remove(i int) {
	sh.flush()
	r := sh.recs.at(i)
	sh.clear(r)
	_, _, n := sh.arena.key(r.off)
	sh.arena.release(r.off, n)

	// Backward-shift deletion: move later members of the probe run into
	// the hole when the hole lies between their home slot and them.
	m := uint32(len(sh.idx) - 1)
	hole := sh.slot(i, r.hash)
	for q := (hole + 1) & m; sh.ctrl[q] != 0; q = (q + 1) & m {
		home := sh.recs.at(int(sh.idx[q]&m)-1).hash & m
		if (q-home)&m >= (q-hole)&m {
			sh.idx[hole] = sh.idx[q]
			sh.setCtrl(hole, sh.ctrl[q])
			hole = q
		}
	}
	sh.idx[hole] = 0
	sh.setCtrl(hole, 0)

	last := sh.recs.len() - 1
	if i != last {
		moved := sh.recs.at(last)
		p := sh.slot(last, moved.hash)
		sh.idx[p] = sh.idx[p]&^m | uint32(i+1)
		*r = *moved
	}
	sh.recs.pop()
	sh.indexed--
}

// setKey makes r's key entry hold key and fp, writing a new entry when fp
// is not the stored fingerprint. False when the arena is out of chunks.
func (sh *shard) setKey(r *rec, key, fp string) bool {
	_, stored, n := sh.arena.key(r.off)
	if string(stored) == fp {
		return true
	}
	off, ok := sh.arena.putKey(key, fp)
	if !ok {
		return false
	}
	sh.arena.release(r.off, n)
	r.off = off
	return true
}

// fingerprint returns r's fingerprint; given itself when they are equal, so
// that the common answer costs no copy.
func (sh *shard) fingerprint(r *rec, given string) string {
	_, fp, _ := sh.arena.key(r.off)
	if string(fp) == given {
		return given
	}
	return string(fp)
}

// maybeCompact compacts the arena when most of its shared bytes are dead
// (and at least two chunks' worth): every operation that lets arena bytes
// die calls it, so that records rewritten in place cannot grow the arena
// either. A compaction copies the live bytes, fewer than the dead bytes
// since the last one, so its cost is O(1) per byte written.
func (sh *shard) maybeCompact() {
	if d := sh.arena.dead(); d > sh.arena.live && d >= 2*sh.arena.chunk {
		sh.compact()
	}
}

// tidy returns memory once records have gone: it compacts the arena, and
// shrinks the index and the tables when they are mostly empty. Every step
// costs at most a pass over the shard's records, and only after that many
// records have gone.
func (sh *shard) tidy() {
	sh.maybeCompact()
	if n := sh.recs.len(); len(sh.idx) > 8 && n*8 < len(sh.idx) {
		size := 8
		for size*3 < n*8 { // at most three eighths full
			size *= 2
		}
		sh.reindex(size)
	}
	sh.recs.shrink()
	if free, n := len(sh.freeL), len(sh.leases); free*2 > n && n > 64 {
		sh.packLeases()
	}
}

// compact moves every live entry into a new arena.
func (sh *shard) compact() {
	old := sh.arena
	sh.arena = newArena(old.chunk)
	for i := range sh.recs.len() {
		r := sh.recs.at(i)
		_, _, n := old.key(r.off)
		r.off = sh.arena.move(&old, r.off, n)
		if r.state() != dedupe.StateInProgress && r.meta&hasResult != 0 {
			_, n := old.result(r.res)
			r.res = sh.arena.move(&old, r.res, n)
		}
	}
}

// packLeases renumbers the leases in use densely.
func (sh *shard) packLeases() {
	var packed []lease
	for i := range sh.recs.len() {
		r := sh.recs.at(i)
		if r.state() == dedupe.StateInProgress {
			packed = append(packed, sh.leases[r.res])
			r.res = uint32(len(packed) - 1)
		}
	}
	sh.leases = packed
	sh.freeL = nil
}
