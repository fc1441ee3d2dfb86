//go:build amd64 || arm64

package memstore

// prefetch asks the processor to bring the cache lines at addresses a, b
// and c into its caches, and returns without waiting for them. It never
// faults: an address may be any, even one no longer (or never) mapped, so
// a stale one costs nothing but a useless fetch. Go code never reads
// memory through them.
func prefetch(a, b, c uintptr)
