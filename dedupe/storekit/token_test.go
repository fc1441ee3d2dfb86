package storekit

import (
	"encoding/hex"
	"sync"
	"testing"
)

func TestNewTokenUniqueAndHex(t *testing.T) {
	const goroutines, each = 8, 2000
	seen := make(map[string]bool, goroutines*each)
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			toks := make([]string, each)
			for i := range toks {
				toks[i] = NewToken()
			}
			mu.Lock()
			defer mu.Unlock()
			for _, tok := range toks {
				if seen[tok] {
					t.Errorf("token %q issued twice", tok)
				}
				seen[tok] = true
			}
		}()
	}
	wg.Wait()
	for tok := range seen {
		if len(tok) != 32 {
			t.Fatalf("token %q has %d characters, want 32", tok, len(tok))
		}
		if _, err := hex.DecodeString(tok); err != nil {
			t.Fatalf("token %q is not hex: %v", tok, err)
		}
		if tok[:16] != NewToken()[:16] {
			t.Fatalf("token %q does not share the process prefix", tok)
		}
	}
}

func BenchmarkNewToken(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = NewToken()
	}
}
