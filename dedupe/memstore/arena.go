package memstore

import "encoding/binary"

// Offsets into an arena: chunk number in the high 16 bits, byte position in
// the chunk in the low 16 bits.
const (
	posBits   = 16
	maxChunks = 1 << 16
	// defaultChunk is the size of a shared chunk: 64 KiB, the most a 16-bit
	// position addresses.
	defaultChunk = 1 << posBits
)

// arena holds a shard's variable-length bytes: each record's key and
// fingerprint, and each stored result, as entries that start with their
// lengths as uvarints. Entries up to a quarter of a chunk are packed into
// shared chunks, larger ones get a chunk of their own. Bytes once written
// are never changed, and nothing outside the shard ever points into a
// chunk: the store copies what it returns. Dead entries of shared chunks are
// reclaimed by compact, private chunks as soon as their entry dies.
type arena struct {
	chunks [][]byte
	free   []uint32 // numbers of nil chunks, for reuse
	cur    int      // the shared chunk being filled, -1 for none
	chunk  int      // size of a shared chunk
	shared int      // number of shared chunks
	live   int      // bytes of live entries in shared chunks
}

func newArena(chunk int) arena {
	return arena{cur: -1, chunk: chunk}
}

// big reports whether an entry of n bytes gets a chunk of its own.
func (a *arena) big(n int) bool { return n > a.chunk/4 }

// dead is the number of bytes of shared chunks not held by live entries,
// the unfilled end of the current chunk included.
func (a *arena) dead() int { return a.shared*a.chunk - a.live }

// number returns a free chunk number, or false when all are in use.
func (a *arena) number() (uint32, bool) {
	if n := len(a.free); n > 0 {
		i := a.free[n-1]
		a.free = a.free[:n-1]
		return i, true
	}
	if len(a.chunks) >= maxChunks {
		return 0, false
	}
	a.chunks = append(a.chunks, nil)
	return uint32(len(a.chunks) - 1), true
}

// alloc reserves n bytes and returns their offset and the bytes to fill, or
// false when the arena has no chunk number left (4 GiB of live entries in
// one shard, or 65,536 private chunks).
func (a *arena) alloc(n int) (uint32, []byte, bool) {
	if a.big(n) {
		i, ok := a.number()
		if !ok {
			return 0, nil, false
		}
		b := make([]byte, n)
		a.chunks[i] = b
		return i << posBits, b, true
	}
	if a.cur < 0 || len(a.chunks[a.cur])+n > a.chunk {
		i, ok := a.number()
		if !ok {
			return 0, nil, false
		}
		a.chunks[i] = make([]byte, 0, a.chunk)
		a.cur = int(i)
		a.shared++
	}
	c := a.chunks[a.cur]
	pos := len(c)
	c = c[:pos+n]
	a.chunks[a.cur] = c
	a.live += n
	return uint32(a.cur)<<posBits | uint32(pos), c[pos:], true
}

// release gives back the n-byte entry at off.
func (a *arena) release(off uint32, n int) {
	if a.big(n) {
		i := off >> posBits
		a.chunks[i] = nil
		a.free = append(a.free, i)
		return
	}
	a.live -= n
}

func uvarintLen(v uint64) int {
	n := 1
	for v >= 0x80 {
		v >>= 7
		n++
	}
	return n
}

// uvarint decodes the uvarint at b[p:], returning it and the position after
// it. Entries are written by the arena itself, so it never fails.
func uvarint(b []byte, p int) (int, int) {
	if c := b[p]; c < 0x80 {
		return int(c), p + 1
	}
	v, n := binary.Uvarint(b[p:])
	return int(v), p + n
}

// putKey stores a key entry: uvarint key length, uvarint fingerprint
// length, key, fingerprint.
func (a *arena) putKey(key, fp string) (uint32, bool) {
	n := uvarintLen(uint64(len(key))) + uvarintLen(uint64(len(fp))) + len(key) + len(fp)
	off, b, ok := a.alloc(n)
	if !ok {
		return 0, false
	}
	p := binary.PutUvarint(b, uint64(len(key)))
	p += binary.PutUvarint(b[p:], uint64(len(fp)))
	p += copy(b[p:], key)
	copy(b[p:], fp)
	return off, true
}

// key returns the key and fingerprint of the key entry at off, and the
// entry's size.
func (a *arena) key(off uint32) (key, fp []byte, size int) {
	c := a.chunks[off>>posBits]
	start := int(off & (1<<posBits - 1))
	kl, p := uvarint(c, start)
	fl, p := uvarint(c, p)
	return c[p : p+kl], c[p+kl : p+kl+fl], p + kl + fl - start
}

// putResult stores a result entry: uvarint length, bytes.
func (a *arena) putResult(data []byte) (uint32, bool) {
	n := uvarintLen(uint64(len(data))) + len(data)
	off, b, ok := a.alloc(n)
	if !ok {
		return 0, false
	}
	p := binary.PutUvarint(b, uint64(len(data)))
	copy(b[p:], data)
	return off, true
}

// result returns the bytes of the result entry at off, and the entry's size.
func (a *arena) result(off uint32) (data []byte, size int) {
	c := a.chunks[off>>posBits]
	start := int(off & (1<<posBits - 1))
	n, p := uvarint(c, start)
	return c[p : p+n], p + n - start
}

// move copies the n-byte entry at off of old into a, or hands its private
// chunk over, and returns its offset in a. a has room: compaction builds a
// when old's shared chunks are less than half full, and packs at least three
// quarters of each chunk it fills.
func (a *arena) move(old *arena, off uint32, n int) uint32 {
	src := old.chunks[off>>posBits]
	if a.big(n) {
		i, _ := a.number()
		a.chunks[i] = src
		return i << posBits
	}
	start := int(off & (1<<posBits - 1))
	to, b, _ := a.alloc(n)
	copy(b, src[start:start+n])
	return to
}
