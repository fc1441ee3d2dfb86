package outbox_test

import (
	"bytes"
	"context"
	"database/sql"
	"os"
	"strconv"
	"time"

	"github.com/idemq/idemq/integration/harness"
)

// cpuSample is CPU time, from /proc, of the local processes a relay
// benchmark exercises: the Postgres backends serving the relay (pg), the
// Postgres server's own writers and vacuum (pgAux), every nats-server, and
// this process. ok is false where /proc cannot be read or the services run
// elsewhere (containers, other hosts); nothing is reported then. Backends
// that exit between two samples (connections a pool closes) take their CPU
// time with them.
type cpuSample struct {
	pg, pgAux, nats, self time.Duration
	ok                    bool
}

// sampleCPU reads the CPU time of this process, of every nats-server, and
// of the Postgres processes in pg and aux.
func sampleCPU(pg, aux []int) cpuSample {
	var s cpuSample
	self, err := harness.ProcCPU(os.Getpid())
	if err != nil {
		return s
	}
	s.self = self
	// A process that has exited (a connection the pool closed) is left
	// out: its CPU time is lost.
	sum := func(pids []int) (t time.Duration, found int) {
		for _, pid := range pids {
			if d, err := harness.ProcCPU(pid); err == nil {
				t += d
				found++
			}
		}
		return t, found
	}
	var n int
	s.pg, _ = sum(pg)
	s.pgAux, n = sum(aux)
	s.ok = n > 0
	ents, err := os.ReadDir("/proc")
	if err != nil {
		s.ok = false
		return s
	}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, err := os.ReadFile("/proc/" + e.Name() + "/comm")
		if err != nil || string(bytes.TrimSpace(comm)) != "nats-server" {
			continue
		}
		if d, err := harness.ProcCPU(pid); err == nil {
			s.nats += d
		}
	}
	return s
}

// pgPIDs returns the process ids of the Postgres backends whose
// application_name is app, and of the server's auxiliary processes
// (writers, checkpointer, autovacuum).
func pgPIDs(ctx context.Context, db *sql.DB, app string) (backends, aux []int, err error) {
	rs, err := db.QueryContext(ctx, `SELECT pid, application_name = $1 FROM pg_stat_activity
		WHERE application_name = $1 OR backend_type <> 'client backend'`, app)
	if err != nil {
		return nil, nil, err
	}
	defer rs.Close()
	for rs.Next() {
		var pid int
		var mine bool
		if err := rs.Scan(&pid, &mine); err != nil {
			return nil, nil, err
		}
		if mine {
			backends = append(backends, pid)
		} else {
			aux = append(aux, pid)
		}
	}
	return backends, aux, rs.Err()
}

// sub returns s - t.
func (s cpuSample) sub(t cpuSample) cpuSample {
	return cpuSample{pg: s.pg - t.pg, pgAux: s.pgAux - t.pgAux, nats: s.nats - t.nats, self: s.self - t.self, ok: s.ok && t.ok}
}

// add returns s + t; the zero cpuSample adds nothing.
func (s cpuSample) add(t cpuSample) cpuSample {
	if s == (cpuSample{}) {
		return t
	}
	return cpuSample{pg: s.pg + t.pg, pgAux: s.pgAux + t.pgAux, nats: s.nats + t.nats, self: s.self + t.self, ok: s.ok && t.ok}
}
