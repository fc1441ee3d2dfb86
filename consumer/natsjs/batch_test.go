package natsjs_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/retry"
)

func TestBatchModeOutcomes(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		f := newFixture(t, env)
		cfg := f.config()
		cfg.BatchSize = 8
		// Without a guard attempts are deliveries: the two failed batches
		// use two of them.
		cfg.Pipeline.Retry.MaxAttempts = 5
		var calls atomic.Int32
		var mu sync.Mutex
		seen := map[string]int{}
		h := func(ctx context.Context, msgs []*consumer.Message) ([]error, error) {
			switch calls.Add(1) {
			case 1:
				panic("batch handler bug") // the whole batch is handed back
			case 2:
				return nil, nil // wrong number of results: handed back too
			}
			errs := make([]error, len(msgs))
			mu.Lock()
			defer mu.Unlock()
			for i, m := range msgs {
				k := key(m)
				seen[k]++
				switch k {
				case "poison":
					errs[i] = retry.Permanent(errors.New("bad"))
				case "flaky":
					if seen[k] == 1 {
						errs[i] = errors.New("transient")
					}
				}
			}
			return errs, nil
		}
		c, err := natsjs.NewBatch(env.JS, cfg, h)
		if err != nil {
			t.Fatal(err)
		}
		for _, k := range []string{"a", "b", "poison", "flaky"} {
			f.publish(t, k, `{}`, nil)
		}
		start(t, c)
		f.waitSettled(t)
		dl := f.deadLetters(t, 1)
		if r := dl[0].Header.Get(consumer.HeaderReason); r != "permanent" {
			t.Errorf("dead letter reason %q, want permanent", r)
		}
		mu.Lock()
		defer mu.Unlock()
		if seen["a"] != 1 || seen["b"] != 1 || seen["flaky"] != 2 || seen["poison"] != 1 {
			t.Fatalf("messages seen by the handler after the failed batches: %v", seen)
		}
	})
}

func TestBatchModeRefusesAGuard(t *testing.T) {
	env := harness.EmbeddedNATS(t)
	cfg := validConfig()
	cfg.Pipeline.Guard = headerGuard(memstore.New(memstore.Config{}))
	_, err := natsjs.NewBatch(env.JS, cfg, func(context.Context, []*consumer.Message) ([]error, error) { return nil, nil })
	if !errors.Is(err, natsjs.ErrInvalidConfig) {
		t.Fatalf("NewBatch with a Guard = %v, want ErrInvalidConfig", err)
	}
}
