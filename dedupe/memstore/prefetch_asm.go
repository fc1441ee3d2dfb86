//go:build amd64 || arm64

package memstore

// prefetch asks the processor to bring the cache line at addr into its
// caches, and returns without waiting for it. It never faults: addr may be
// any address, even one no longer (or never) mapped, so a stale address
// costs nothing but a useless fetch. Go code never reads memory through
// addr.
func prefetch(addr uintptr)
