//go:build !amd64 && !arm64

package memstore

// prefetch does nothing on this architecture: a lookup simply waits for its
// cache misses under the shard's lock (see shard.hint).
func prefetch(a, b, c uintptr) {}
