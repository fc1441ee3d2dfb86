//go:build !linux

package bench

func loadAvg() string { return "unknown" }
