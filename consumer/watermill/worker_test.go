package idemqwm_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/redis/go-redis/v9"

	"github.com/idemq/idemq/consumer"
	idemqwm "github.com/idemq/idemq/consumer/watermill"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/redisstore"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/retry"
)

// The test binary doubles as a worker process: TestMain runs runWorker
// instead of the tests when envWorker is set.
const (
	envWorker       = "IDEMQ_WM_TESTWORKER" // "block" or "run"
	envWorkerWiring = "IDEMQ_WM_TESTWORKER_WIRING"
	envWorkerRedis  = "IDEMQ_WM_TESTWORKER_REDIS"
	envWorkerPrefix = "IDEMQ_WM_TESTWORKER_PREFIX"
)

// workerKey is the idempotency key of the message the test follows.
const workerKey = "pay-killed"

// runWorker runs a router with the idemq middleware and a Redis-backed
// guard on the wiring in the environment. In "block" mode the handler
// counts its start and blocks forever (until SIGKILL); in "run" mode it
// counts its start, then the effect, and returns. It prints "started",
// "done" and "acked <uuid>" lines for the test to follow, and shuts down
// on SIGTERM. With gochannel, which lives in the process, the worker
// publishes the message itself: once in "block" mode, twice (a publisher's
// retry after the crash, and a duplicate) in "run" mode.
func runWorker() int {
	mode := os.Getenv(envWorker)
	fail := func(err error) int { fmt.Println("error:", err); return 2 }
	var w wiring
	if err := json.Unmarshal([]byte(os.Getenv(envWorkerWiring)), &w); err != nil {
		return fail(err)
	}
	opts, err := redis.ParseURL(os.Getenv(envWorkerRedis))
	if err != nil {
		return fail(err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	prefix := os.Getenv(envWorkerPrefix)
	b, err := open(w)
	if err != nil {
		return fail(err)
	}
	defer b.close()
	a, err := idemqwm.New(idemqwm.Config{
		Pipeline: consumer.Config{
			Guard: &dedupe.Guard{
				Store: redisstore.New(rdb, redisstore.Config{Prefix: prefix + "dedupe:"}),
				Key:   dedupe.HeaderKey("Idempotency-Key"),
				Lease: time.Second,
			},
			Retry:  retry.Policy{MaxAttempts: 5, Backoff: retry.Constant(50 * time.Millisecond)},
			Logger: quiet(),
		},
		PoisonPublisher: b.pub,
		PoisonTopic:     w.Poison,
		MaxWait:         300 * time.Millisecond,
	})
	if err != nil {
		return fail(err)
	}
	router, err := message.NewRouter(message.RouterConfig{CloseTimeout: 5 * time.Second}, watermill.NopLogger{})
	if err != nil {
		return fail(err)
	}
	report := func(h message.HandlerFunc) message.HandlerFunc {
		return func(m *message.Message) ([]*message.Message, error) {
			out, err := h(m)
			if err == nil {
				fmt.Println("acked", m.UUID)
			}
			return out, err
		}
	}
	router.AddMiddleware(report, a.Middleware)
	router.AddConsumerHandler("orders", w.Topic, b.sub, func(m *message.Message) error {
		ctx := m.Context()
		if err := rdb.Incr(ctx, prefix+"started").Err(); err != nil {
			return err
		}
		fmt.Println("started")
		if mode == "block" {
			select {} // stuck until SIGKILL, like a crashed or hung worker
		}
		if err := rdb.Incr(ctx, prefix+"effect").Err(); err != nil {
			return err
		}
		fmt.Println("done")
		return nil
	})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- router.Run(ctx) }()
	select {
	case <-router.Running():
	case err := <-done:
		return fail(err)
	}
	if w.Kind == "gochannel" {
		n := 1
		if mode == "run" {
			n = 2
		}
		for range n {
			m := message.NewMessage(watermill.NewUUID(), []byte(`{"amount":100}`))
			m.Metadata.Set("Idempotency-Key", workerKey)
			if err := b.pub.Publish(w.Topic, m); err != nil {
				return fail(err)
			}
		}
	}
	if err := <-done; err != nil {
		return fail(err)
	}
	return 0
}

// worker is a running worker process.
type worker struct {
	cmd   *exec.Cmd
	lines chan string
}

func startWorker(t *testing.T, mode string, env []string) *worker {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), append(env, envWorker+"="+mode)...)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w := &worker{cmd: cmd, lines: make(chan string, 64)}
	go func() {
		defer close(w.lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			w.lines <- sc.Text()
		}
		_, _ = io.Copy(io.Discard, out)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		for range w.lines { // let the reader end
		}
	})
	return w
}

// expect waits for the worker to print n lines starting with prefix.
func (w *worker) expect(t *testing.T, prefix string, n int) {
	t.Helper()
	timeout := time.After(waitFor)
	for n > 0 {
		select {
		case got, ok := <-w.lines:
			if !ok {
				t.Fatalf("worker exited before printing %q", prefix)
			}
			if strings.HasPrefix(got, "error:") {
				t.Fatalf("worker: %s", got)
			}
			if strings.HasPrefix(got, prefix) {
				n--
			}
		case <-timeout:
			t.Fatalf("worker did not print %q within %v", prefix, waitFor)
		}
	}
}

// A worker SIGKILLed in the middle of the handler leaves a claim whose lease
// lapses; the redelivery (by the broker, or a publisher's resend with
// gochannel) runs the handler again in a second worker, and the effect is
// applied once; a later duplicate is acked from the Redis record.
func TestWorkerKilledMidHandlerAppliedOnce(t *testing.T) {
	t.Parallel()
	eachBroker(t, func(t *testing.T, br broker) {
		rd := harness.Redis(t)
		w := br.setup(t, time.Second)
		raw, err := json.Marshal(w)
		if err != nil {
			t.Fatal(err)
		}
		env := []string{
			envWorkerWiring + "=" + string(raw),
			envWorkerRedis + "=" + rd.URL,
			envWorkerPrefix + "=" + rd.Prefix,
		}
		if w.Kind == "nats" {
			// watermill-nats v2.1.3's Subscriber closes its output channel
			// while a late delivery's processMessage may still send on it
			// (subscriber.go: close(output) after Unsubscribe), which the
			// race detector reports in a worker shutting down while the
			// broker redelivers. That is third-party code: under -race the
			// report is still printed (the worker's stderr is the test's),
			// but it does not fail the worker's exit. The adapter itself
			// runs under -race in this package's in-process tests.
			env = append(env, "GORACE=exitcode=0")
		}
		var b *bus
		if w.Kind != "gochannel" {
			b = openBus(t, w)
			publishKey(t, b.pub, w.Topic, workerKey, `{"amount":100}`)
		}

		w1 := startWorker(t, "block", env)
		w1.expect(t, "started", 1)
		if err := w1.cmd.Process.Kill(); err != nil { // SIGKILL mid-handler
			t.Fatal(err)
		}
		_ = w1.cmd.Wait()

		w2 := startWorker(t, "run", env)
		w2.expect(t, "done", 1)
		if b != nil {
			publishKey(t, b.pub, w.Topic, workerKey, `{"amount":100}`) // a publisher's retry
		}
		w2.expect(t, "acked", 2)
		if err := w2.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := w2.cmd.Wait(); err != nil {
			t.Fatalf("worker 2 did not shut down cleanly: %v", err)
		}

		ctx := context.Background()
		started, _ := rd.Client.Get(ctx, rd.Prefix+"started").Int()
		effect, _ := rd.Client.Get(ctx, rd.Prefix+"effect").Int()
		if effect != 1 || started != 2 {
			t.Fatalf("handler started %d times, effect applied %d times; want 2 starts (killed, redelivered) and 1 effect", started, effect)
		}
	})
}
