package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"
)

// Job states.
const (
	jobSelecting = "selecting"
	jobRunning   = "running"
	jobDone      = "done"
	jobFailed    = "failed"
	jobCancelled = "cancelled"
)

// maxJobsKept is how many finished jobs the console remembers.
const maxJobsKept = 100

// maxJobLog bounds the lines a job keeps from replay's log.
const maxJobLog = 8 << 10

// errBusy is returned when a stream already has a running job.
var errBusy = errors.New("another replay or purge is running on this stream")

// job is a replay or purge the console runs in the background.
type job struct {
	ID      string
	Kind    string // "replay" or "purge"
	Stream  string
	Who     string
	What    string // the selection, in words
	Back    string // the list page to return to
	Started time.Time

	cancel context.CancelFunc
	done   chan struct{}

	mu       sync.Mutex
	state    string
	selected int
	stats    replayStats
	deleted  uint64
	err      string
	finished time.Time
	log      bytes.Buffer
}

// jobStatus is a job as the status endpoint and the job page show it.
type jobStatus struct {
	ID       string    `json:"id"`
	Kind     string    `json:"kind"`
	Stream   string    `json:"stream"`
	What     string    `json:"what"`
	State    string    `json:"state"`
	Finished bool      `json:"finished"`
	Selected int       `json:"selected"`
	Replayed int       `json:"replayed"`
	Deduped  int       `json:"deduped"`
	Deleted  uint64    `json:"deleted"`
	Skipped  int       `json:"skipped"`
	Gone     int       `json:"gone"`
	Done     int       `json:"done"` // messages dealt with so far
	Error    string    `json:"error,omitempty"`
	Summary  string    `json:"summary"`
	Log      string    `json:"log,omitempty"`
	Started  time.Time `json:"started"`
	Took     string    `json:"took"`
}

func (j *job) status() jobStatus {
	j.mu.Lock()
	defer j.mu.Unlock()
	s := jobStatus{ID: j.ID, Kind: j.Kind, Stream: j.Stream, What: j.What, State: j.state, Selected: j.selected,
		Replayed: j.stats.Replayed, Deduped: j.stats.Deduped, Skipped: j.stats.Skipped, Gone: j.stats.Gone,
		Error: j.err, Log: j.log.String(), Started: j.Started}
	s.Finished = j.state == jobDone || j.state == jobFailed || j.state == jobCancelled
	end := j.finished
	if end.IsZero() {
		end = time.Now()
	}
	s.Took = end.Sub(j.Started).Truncate(time.Millisecond).String()
	if j.Kind == "replay" {
		s.Deleted = uint64(j.stats.Deleted)
		s.Done = j.stats.Replayed + j.stats.Skipped + j.stats.Gone
		s.Summary = j.stats.String()
	} else {
		s.Deleted = j.deleted
		s.Done = int(j.deleted)
		s.Summary = fmt.Sprintf("deleted %d of %d", j.deleted, j.selected)
	}
	return s
}

// Write keeps replay's per-message log lines, up to maxJobLog bytes.
func (j *job) Write(p []byte) (int, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	if room := maxJobLog - j.log.Len(); room > 0 {
		j.log.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (j *job) set(f func(j *job)) {
	j.mu.Lock()
	defer j.mu.Unlock()
	f(j)
}

// jobRunner runs the console's jobs, one at a time per stream, and stops
// them on close.
type jobRunner struct {
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu    sync.Mutex
	jobs  map[string]*job
	order []string
	busy  map[string]string // stream → running job id
}

func newJobRunner(log *slog.Logger) *jobRunner {
	ctx, cancel := context.WithCancel(context.Background())
	return &jobRunner{log: log, ctx: ctx, cancel: cancel, jobs: map[string]*job{}, busy: map[string]string{}}
}

// start runs fn for j in the background; it returns errBusy when j's stream
// already has a running job.
func (jr *jobRunner) start(j *job, fn func(ctx context.Context, j *job) error) error {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return err
	}
	j.ID = hex.EncodeToString(b)
	j.Started = time.Now()
	j.state = jobSelecting
	j.done = make(chan struct{})
	jr.mu.Lock()
	if err := jr.ctx.Err(); err != nil {
		jr.mu.Unlock()
		return errors.New("the console is shutting down")
	}
	if id, ok := jr.busy[j.Stream]; ok {
		jr.mu.Unlock()
		return fmt.Errorf("%w (job %s)", errBusy, id)
	}
	jr.busy[j.Stream] = j.ID
	jr.jobs[j.ID] = j
	jr.order = append(jr.order, j.ID)
	for len(jr.order) > maxJobsKept {
		old := jr.jobs[jr.order[0]]
		if old.status().Finished {
			delete(jr.jobs, jr.order[0])
		}
		jr.order = jr.order[1:]
	}
	var ctx context.Context
	ctx, j.cancel = context.WithCancel(jr.ctx)
	jr.wg.Add(1)
	jr.mu.Unlock()

	jr.log.Info("console action started", "action", j.Kind, "who", j.Who, "stream", j.Stream, "selection", j.What, "job", j.ID)
	go func() {
		defer jr.wg.Done()
		defer close(j.done)
		defer j.cancel()
		err := fn(ctx, j)
		j.set(func(j *job) {
			j.finished = time.Now()
			switch {
			case err != nil && ctx.Err() != nil:
				j.state, j.err = jobCancelled, "stopped: "+err.Error()
			case err != nil:
				j.state, j.err = jobFailed, err.Error()
			default:
				j.state = jobDone
			}
		})
		jr.mu.Lock()
		delete(jr.busy, j.Stream)
		jr.mu.Unlock()
		st := j.status()
		attrs := []any{"action", j.Kind, "who", j.Who, "stream", j.Stream, "selection", j.What, "job", j.ID,
			"result", st.Summary, "state", st.State}
		if err != nil {
			jr.log.Warn("console action ended", append(attrs, "error", err)...)
		} else {
			jr.log.Info("console action done", attrs...)
		}
	}()
	return nil
}

// get returns the job with id, or nil.
func (jr *jobRunner) get(id string) *job {
	jr.mu.Lock()
	defer jr.mu.Unlock()
	return jr.jobs[id]
}

// recent returns the remembered jobs, newest first.
func (jr *jobRunner) recent() []*job {
	jr.mu.Lock()
	defer jr.mu.Unlock()
	out := make([]*job, 0, len(jr.order))
	for i := len(jr.order) - 1; i >= 0; i-- {
		if j, ok := jr.jobs[jr.order[i]]; ok {
			out = append(out, j)
		}
	}
	return out
}

// close cancels every running job and waits for them.
func (jr *jobRunner) close() {
	jr.mu.Lock()
	jr.cancel()
	jr.mu.Unlock()
	jr.wg.Wait()
}
