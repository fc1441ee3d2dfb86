package memstore

import (
	"sync"

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
// densely (in pages), found through an open-addressing index of record numbers (linear
// probing, at most three quarters full), their bytes in an arena.
type shard struct {
	mu      sync.Mutex
	idx     []uint32 // 0 for an empty slot, else a record number + 1 and a hash tag (see find)
	recs    recs
	leases  []lease
	freeL   []uint32 // numbers of unused leases
	arena   arena
	inserts int    // since the last sweep
	num     uint64 // the shard's number
	tokSeq  uint64 // sequence number of the next token (from a random start, never 0)
	tokBase uint64 // sequence number of the first token in toks
	toks    string // the text of tokenBatch tokens, tokSeq's among them
	_       [64]byte
}

// find returns the number of key's record, or -1.
//
// An index slot of a table of 2^k slots holds the record number + 1 in its
// low k bits and the key hash's high 32-k bits above them (those that did
// not choose the slot), so that a probe reads a record only when 32 bits of
// the hash match. The table is at most three quarters full, so the number
// never reaches the high bits.
func (sh *shard) find(key string, h uint32) int {
	i, _ := sh.lookup(key, h)
	return i
}

// lookup is find, also returning, when key is absent from a non-empty
// index, the free slot that ended the probe: where place would put it.
func (sh *shard) lookup(key string, h uint32) (int, uint32) {
	if len(sh.idx) == 0 {
		return -1, noSlot
	}
	m := uint32(len(sh.idx) - 1)
	tag := h &^ m
	for p := h & m; ; p = (p + 1) & m {
		v := sh.idx[p]
		if v == 0 {
			return -1, p
		}
		if v&^m == tag {
			i := int(v&m) - 1
			r := sh.recs.at(i)
			if r.hash == h {
				if k, _, _ := sh.arena.key(r.off); string(k) == key {
					return i, noSlot
				}
			}
		}
	}
}

// place puts record number i, of hash h, in the first free slot of its
// probe sequence.
func (sh *shard) place(i int, h uint32) {
	m := uint32(len(sh.idx) - 1)
	p := h & m
	for sh.idx[p] != 0 {
		p = (p + 1) & m
	}
	sh.idx[p] = h&^m | uint32(i+1)
}

// slot returns the index slot that holds record number i, of hash h.
func (sh *shard) slot(i int, h uint32) uint32 {
	m := uint32(len(sh.idx) - 1)
	p := h & m
	for sh.idx[p]&m != uint32(i+1) {
		p = (p + 1) & m
	}
	return p
}

// reindex rebuilds the index with n slots, a power of two.
func (sh *shard) reindex(n int) {
	sh.idx = make([]uint32, n)
	for i := range sh.recs.len() {
		sh.place(i, sh.recs.at(i).hash)
	}
}

// noSlot is lookup's slot when there is none.
const noSlot = ^uint32(0)

// add appends r, whose key is absent, and returns its number. p is the
// free slot lookup found for it, if the index has not changed since, else
// noSlot.
func (sh *shard) add(r rec, p uint32) int {
	if n := sh.recs.len() + 1; n*4 > len(sh.idx)*3 {
		sh.reindex(max(8, 2*len(sh.idx)))
		p = noSlot
	}
	i := sh.recs.push(r)
	if p == noSlot {
		sh.place(i, r.hash)
	} else {
		sh.idx[p] = r.hash&^uint32(len(sh.idx)-1) | uint32(i+1)
	}
	return i
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
	r := sh.recs.at(i)
	sh.clear(r)
	_, _, n := sh.arena.key(r.off)
	sh.arena.release(r.off, n)

	// Backward-shift deletion: move later members of the probe run into
	// the hole when the hole lies between their home slot and them.
	m := uint32(len(sh.idx) - 1)
	hole := sh.slot(i, r.hash)
	for q := (hole + 1) & m; sh.idx[q] != 0; q = (q + 1) & m {
		home := sh.recs.at(int(sh.idx[q]&m)-1).hash & m
		if (q-home)&m >= (q-hole)&m {
			sh.idx[hole] = sh.idx[q]
			hole = q
		}
	}
	sh.idx[hole] = 0

	last := sh.recs.len() - 1
	if i != last {
		moved := sh.recs.at(last)
		p := sh.slot(last, moved.hash)
		sh.idx[p] = sh.idx[p]&^m | uint32(i+1)
		*r = *moved
	}
	sh.recs.pop()
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
