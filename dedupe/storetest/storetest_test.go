package storetest_test

import (
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/dedupe/storetest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestClock(t *testing.T) {
	var c storetest.Clock
	if got := c.Now(); !got.Equal(storetest.Epoch) {
		t.Fatalf("zero Clock reads %v, want %v", got, storetest.Epoch)
	}
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c.Advance(time.Second)
			_ = c.Now()
		}()
	}
	wg.Wait()
	c.Advance(-time.Millisecond)
	if got, want := c.Now(), storetest.Epoch.Add(10*time.Second-time.Millisecond); !got.Equal(want) {
		t.Fatalf("Clock reads %v after advancing, want %v", got, want)
	}
}

// TestRunMemstore runs the suite against the reference in-memory store, so
// that a change to the suite is checked where it is made.
func TestRunMemstore(t *testing.T) {
	storetest.Run(t, func(t *testing.T, now func() time.Time) dedupe.Store {
		return memstore.New(memstore.Config{Now: now})
	})
}
