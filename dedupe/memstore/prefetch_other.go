//go:build !amd64 && !arm64

package memstore

// prefetch does nothing on this architecture: the lookup simply waits for
// its cache miss under the shard's lock (see shard.hint).
func prefetch(addr uintptr) {}
