package natsjs_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/consumer/natsjs"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/redisstore"
	"github.com/idemq/idemq/integration/harness"
	"github.com/idemq/idemq/retry"
)

// The test binary doubles as a worker process: TestMain runs runWorker
// instead of the tests when envWorker is set.
const (
	envWorker     = "IDEMQ_NATSJS_TESTWORKER" // "block" or "run"
	envWorkerNATS = "IDEMQ_NATSJS_TESTWORKER_NATS"
	envWorkerRDB  = "IDEMQ_NATSJS_TESTWORKER_REDIS"
	envWorkerPfx  = "IDEMQ_NATSJS_TESTWORKER_PREFIX" // Redis key prefix
	envWorkerStr  = "IDEMQ_NATSJS_TESTWORKER_STREAM"
	envWorkerDLQ  = "IDEMQ_NATSJS_TESTWORKER_DLQ" // stream:subject
)

// runWorker consumes with a Redis-backed guard. In "block" mode the handler
// counts its start and blocks forever (until SIGKILL); in "run" mode it
// counts its start, then the effect, and returns. It prints "started" and
// "done" lines for the test to follow, and shuts down on SIGTERM.
func runWorker() int {
	mode := os.Getenv(envWorker)
	fail := func(err error) int { fmt.Println("error:", err); return 2 }
	nc, err := nats.Connect(os.Getenv(envWorkerNATS))
	if err != nil {
		return fail(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fail(err)
	}
	opts, err := redis.ParseURL(os.Getenv(envWorkerRDB))
	if err != nil {
		return fail(err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	prefix := os.Getenv(envWorkerPfx)
	dlqStream, dlqSubject, _ := strings.Cut(os.Getenv(envWorkerDLQ), ":")
	c, err := natsjs.New(js, natsjs.Config{
		Stream:     os.Getenv(envWorkerStr),
		Durable:    "worker",
		AckWait:    time.Second,
		PullWait:   200 * time.Millisecond,
		DeadLetter: natsjs.DeadLetterConfig{Stream: dlqStream, Subject: dlqSubject},
		Pipeline: consumer.Config{
			Guard: &dedupe.Guard{
				Store: redisstore.New(rdb, redisstore.Config{Prefix: prefix + "dedupe:"}),
				Key:   dedupe.HeaderKey("Idempotency-Key"),
				Lease: time.Second,
			},
			Retry: retry.Policy{MaxAttempts: 5, Backoff: retry.Constant(50 * time.Millisecond)},
		},
	}, func(ctx context.Context, m *consumer.Message) error {
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
	if err != nil {
		return fail(err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	if err := c.Run(ctx); err != nil {
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
	w := &worker{cmd: cmd, lines: make(chan string, 16)}
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
	})
	return w
}

// expect waits for the worker to print line.
func (w *worker) expect(t *testing.T, line string) {
	t.Helper()
	timeout := time.After(waitFor)
	for {
		select {
		case got, ok := <-w.lines:
			if !ok {
				t.Fatalf("worker exited before printing %q", line)
			}
			if strings.HasPrefix(got, "error:") {
				t.Fatalf("worker: %s", got)
			}
			if got == line {
				return
			}
		case <-timeout:
			t.Fatalf("worker did not print %q within %v", line, waitFor)
		}
	}
}

func TestWorkerKilledMidHandlerCompletesOnce(t *testing.T) {
	t.Parallel()
	eachServer(t, func(t *testing.T, env *harness.NATSEnv) {
		rd := harness.Redis(t)
		f := newFixture(t, env)
		workerEnv := []string{
			envWorkerNATS + "=" + env.URL,
			envWorkerRDB + "=" + rd.URL,
			envWorkerPfx + "=" + rd.Prefix,
			envWorkerStr + "=" + f.stream,
			envWorkerDLQ + "=" + f.dlqStream + ":" + f.dlqSubject,
		}
		f.publish(t, "pay-1", `{"amount":100}`, nil)

		w1 := startWorker(t, "block", workerEnv)
		w1.expect(t, "started")
		if err := w1.cmd.Process.Kill(); err != nil { // SIGKILL mid-handler
			t.Fatal(err)
		}
		_ = w1.cmd.Wait()

		w2 := startWorker(t, "run", workerEnv)
		w2.expect(t, "done")
		f.publish(t, "pay-1", `{"amount":100}`, nil) // and a publisher retry
		f.waitSettled(t)
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
