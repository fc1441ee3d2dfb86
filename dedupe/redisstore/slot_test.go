package redisstore_test

import (
	"testing"

	"github.com/idemq/idemq/dedupe/redisstore"
)

// TestSlot checks the hash slot against values of the Redis Cluster
// specification: CRC16-XMODEM of "123456789" is 0x31C3, CLUSTER KEYSLOT
// foo is 12182, and a hash tag's braces pick the part hashed.
// TestConformanceRedisCluster compares it with a live cluster.
func TestSlot(t *testing.T) {
	for key, want := range map[string]uint16{
		"123456789":          0x31C3,
		"foo":                12182,
		"{foo}bar":           12182,
		"x{foo}{bar}":        12182,
		"{}foo":              redisstore.Slot("{}foo"), // empty tag: the whole key
		"foo{":               redisstore.Slot("foo{"),
		"idemq:{123456789}:": 0x31C3,
		"":                   0,
	} {
		if got := redisstore.Slot(key); got != want {
			t.Errorf("Slot(%q) = %d, want %d", key, got, want)
		}
	}
	if redisstore.Slot("{}foo") == redisstore.Slot("foo") {
		t.Errorf("an empty hash tag must hash the whole key")
	}
}
