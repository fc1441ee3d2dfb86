package outbox

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/idemq/idemq/dedupe/sqlstore"
)

// relayTx is a claim transaction: *sql.Tx on Postgres, BEGIN IMMEDIATE on a
// dedicated connection on SQLite (so the claim holds the write lock from the
// start instead of failing to upgrade a read lock).
type relayTx struct {
	q        Querier
	commit   func() error
	rollback func()
}

func (r *Relay) begin(ctx context.Context) (*relayTx, error) {
	if r.d.kind == sqlstore.Postgres {
		tx, err := r.db.BeginTx(ctx, nil)
		if err != nil {
			return nil, fmt.Errorf("outbox: begin: %w", err)
		}
		// The claim must walk the pending index in seq order and stop
		// after BatchSize rows. Without statistics (a new table), or with
		// statistics from when nothing was pending, the planner expects a
		// handful of pending rows and prefers a bitmap scan, which reads
		// and sorts every pending row: during a backlog, each claim would
		// cost the backlog's size. Only while the claims come back full
		// (see Relay.backlog), so that light traffic does not pay a round
		// trip on its way from commit to publish.
		if r.backlog.Load() {
			if _, err := tx.ExecContext(ctx, "SET LOCAL enable_bitmapscan TO off"); err != nil {
				_ = tx.Rollback()
				return nil, fmt.Errorf("outbox: begin: %w", err)
			}
		}
		return &relayTx{q: tx, commit: tx.Commit, rollback: func() { _ = tx.Rollback() }}, nil
	}
	conn, err := r.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("outbox: begin: %w", err)
	}
	if _, err := conn.ExecContext(ctx, "BEGIN IMMEDIATE"); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("outbox: begin: %w", err)
	}
	finished := false
	return &relayTx{
		q: conn,
		commit: func() error {
			finished = true
			if _, err := conn.ExecContext(context.WithoutCancel(ctx), "COMMIT"); err != nil {
				_, _ = conn.ExecContext(context.WithoutCancel(ctx), "ROLLBACK")
				_ = conn.Close()
				return fmt.Errorf("outbox: commit: %w", err)
			}
			return conn.Close()
		},
		rollback: func() {
			if finished {
				return
			}
			finished = true
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_, _ = conn.ExecContext(rctx, "ROLLBACK")
			_ = conn.Close()
		},
	}, nil
}

// claim selects up to BatchSize due pending rows with seq at least floor in
// sequence order; on Postgres they are locked (FOR UPDATE SKIP LOCKED), so
// concurrent relays take disjoint batches. created_at is read only for a
// RelayObserver (the lag it reports); without one the column is not
// fetched and CreatedAt stays invalid.
func (r *Relay) claim(ctx context.Context, q Querier, now time.Time, floor int64) ([]row, error) {
	created := "NULL"
	if r.obs != nil {
		created = "created_at"
	}
	query := `SELECT seq, id, subject, headers, data, ordering_key, attempts, ` + created + `, last_error FROM ` + r.o.Table +
		` WHERE state = 'pending' AND seq >= ` + r.d.ph(1) + ` AND (next_attempt_at IS NULL OR next_attempt_at <= ` + r.d.ph(2) +
		`) ORDER BY seq LIMIT ` + r.d.ph(3)
	if r.d.kind == sqlstore.Postgres {
		query += ` FOR UPDATE SKIP LOCKED`
	}
	rs, err := q.QueryContext(ctx, query, floor, r.d.ts(now), r.o.BatchSize)
	if err != nil {
		return nil, fmt.Errorf("outbox: claim: %w", err)
	}
	defer rs.Close()
	// While a backlog drains, claims come back full: room for a whole
	// batch at once instead of growing the slice through its doublings.
	size := 16
	if r.backlog.Load() {
		size = r.o.BatchSize
	}
	rows := make([]row, 0, size)
	// The bodies and headers of the batch are copied into one growing
	// buffer (the driver's bytes are valid only until the next row) rather
	// than into an allocation each.
	var buf []byte
	for rs.Next() {
		rows = append(rows, row{})
		x := &rows[len(rows)-1]
		var attempts int64
		if err := rs.Scan(intCol{&x.Seq}, &x.ID, &x.Subject, bytesCol{&x.Header, &buf, false}, bytesCol{&x.Data, &buf, true},
			&x.OrderingKey, intCol{&attempts}, &x.CreatedAt, &x.LastError); err != nil {
			return nil, fmt.Errorf("outbox: claim: %w", err)
		}
		x.Attempts = int(attempts)
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("outbox: claim: %w", err)
	}
	return rows, nil
}

// bytesCol scans a BYTEA/BLOB column into *v as a copy of the driver's
// bytes appended to *buf, so that the rows of one claim share a few
// allocations. The copy is capped at its length, so appending to it
// reallocates instead of overwriting the next row's bytes. NULL gives nil,
// or an empty slice with notNil.
type bytesCol struct {
	v      *[]byte
	buf    *[]byte
	notNil bool
}

// Scan implements sql.Scanner.
func (c bytesCol) Scan(src any) error {
	var b []byte
	switch x := src.(type) {
	case nil:
		if c.notNil {
			*c.v = []byte{}
		} else {
			*c.v = nil
		}
		return nil
	case []byte:
		b = x
	case string:
		b = []byte(x)
	default:
		return fmt.Errorf("outbox: cannot scan %T as bytes", src)
	}
	if len(b) == 0 {
		*c.v = []byte{}
		return nil
	}
	start := len(*c.buf)
	if cap(*c.buf)-start < len(b) {
		// A new buffer: the rows scanned so far keep the old one.
		*c.buf = make([]byte, 0, max(2*cap(*c.buf), len(b), 4096))
		start = 0
	}
	*c.buf = append(*c.buf, b...)
	*c.v = (*c.buf)[start : start+len(b) : start+len(b)]
	return nil
}

// intCol scans a NOT NULL integer column: the driver's int64 directly,
// where database/sql would convert it through reflection (into *int64) or
// a string (into *int).
type intCol struct{ v *int64 }

// Scan implements sql.Scanner.
func (c intCol) Scan(src any) error {
	if i, ok := src.(int64); ok {
		*c.v = i
		return nil
	}
	var n sql.NullInt64
	if err := n.Scan(src); err != nil {
		return err
	}
	if !n.Valid {
		return errors.New("outbox: NULL in an integer column")
	}
	*c.v = n.Int64
	return nil
}

// keepOrder drops the claimed rows that may not be published yet because an
// older row with the same ordering key is still pending and not in this
// batch (claimed by another relay, or waiting for a retry). For each key it
// keeps the longest run of claimed rows that starts at the key's oldest
// pending row and has no gap. The check reads committed state: another
// relay's rows stay pending until it has their PubAcks and commits, so two
// relays never hold publishable rows of one key at once.
func (r *Relay) keepOrder(ctx context.Context, q Querier, rows []row) ([]row, error) {
	mine := map[string][]int64{} // key → claimed seqs, ascending
	var maxSeq int64
	for _, x := range rows {
		if x.OrderingKey != "" {
			mine[x.OrderingKey] = append(mine[x.OrderingKey], x.Seq)
			maxSeq = max(maxSeq, x.Seq)
		}
	}
	if len(mine) == 0 {
		return rows, nil
	}
	keys := make([]string, 0, len(mine))
	for k := range mine {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	allowed := map[int64]bool{}
	for start := 0; start < len(keys); start += insertChunk {
		chunk := keys[start:min(start+insertChunk, len(keys))]
		args := make([]any, 0, len(chunk)+1)
		args = append(args, maxSeq)
		for _, k := range chunk {
			args = append(args, k)
		}
		rs, err := q.QueryContext(ctx, `SELECT ordering_key, seq FROM `+r.o.Table+
			` WHERE state = 'pending' AND ordering_key <> '' AND seq <= `+r.d.ph(1)+
			` AND ordering_key IN (`+r.d.list(2, len(chunk))+`) ORDER BY ordering_key, seq`, args...)
		if err != nil {
			return nil, fmt.Errorf("outbox: order check: %w", err)
		}
		cur, pos, blocked := "", 0, false
		for rs.Next() {
			var k string
			var seq int64
			if err := rs.Scan(&k, &seq); err != nil {
				rs.Close()
				return nil, fmt.Errorf("outbox: order check: %w", err)
			}
			if k != cur {
				cur, pos, blocked = k, 0, false
			}
			if blocked {
				continue
			}
			m := mine[k]
			if pos < len(m) && m[pos] == seq {
				allowed[seq] = true
				pos++
				continue
			}
			blocked = true // an older pending row of k is not ours
		}
		err = rs.Err()
		rs.Close()
		if err != nil {
			return nil, fmt.Errorf("outbox: order check: %w", err)
		}
	}
	kept := rows[:0]
	for _, x := range rows {
		if x.OrderingKey == "" || allowed[x.Seq] {
			kept = append(kept, x)
		}
	}
	return kept, nil
}

// mark records the outcome of a round in the claim transaction.
func (r *Relay) mark(ctx context.Context, q Querier, rows []row, outs []*outcome, now time.Time) (int, error) {
	var sent []int64
	done := 0
	for i, o := range outs {
		switch {
		case o == nil:
		case o.err == nil:
			sent = append(sent, rows[i].Seq)
		case o.permanent:
			done++
			msg := truncate(o.err.Error(), 1024)
			r.log.Warn("broker rejected outbox message; marked failed", "id", rows[i].ID, "subject", rows[i].Subject, "err", o.err)
			if _, err := q.ExecContext(ctx, `UPDATE `+r.o.Table+` SET state = 'failed', attempts = attempts + 1, last_error = `+
				r.d.ph(1)+` WHERE seq = `+r.d.ph(2), msg, rows[i].Seq); err != nil {
				return 0, fmt.Errorf("outbox: mark failed: %w", err)
			}
		default:
			attempt := rows[i].Attempts + 1
			next := now.Add(r.o.Backoff.Delay(attempt))
			if _, err := q.ExecContext(ctx, `UPDATE `+r.o.Table+` SET attempts = attempts + 1, last_error = `+r.d.ph(1)+
				`, next_attempt_at = `+r.d.ph(2)+` WHERE seq = `+r.d.ph(3), truncate(o.err.Error(), 1024), r.d.ts(next), rows[i].Seq); err != nil {
				return 0, fmt.Errorf("outbox: mark retry: %w", err)
			}
		}
	}
	if err := r.markSent(ctx, q, sent, now); err != nil {
		return 0, err
	}
	return done + len(sent), nil
}

// markSent marks the rows with the given seqs sent, or deletes them with
// DeleteSent.
func (r *Relay) markSent(ctx context.Context, q Querier, sent []int64, now time.Time) error {
	if len(sent) == 0 {
		return nil
	}
	if r.d.kind == sqlstore.Postgres {
		var err error
		if r.o.DeleteSent {
			_, err = q.ExecContext(ctx, `DELETE FROM `+r.o.Table+` WHERE seq = ANY($1::bigint[])`, sent)
		} else {
			_, err = q.ExecContext(ctx, `UPDATE `+r.o.Table+` SET state = 'sent', sent_at = $1, attempts = attempts + 1, last_error = NULL WHERE seq = ANY($2::bigint[])`,
				r.d.ts(now), sent)
		}
		if err != nil {
			return fmt.Errorf("outbox: mark sent: %w", err)
		}
		return nil
	}
	for start := 0; start < len(sent); start += insertChunk {
		chunk := sent[start:min(start+insertChunk, len(sent))]
		args := make([]any, 0, len(chunk)+1)
		if !r.o.DeleteSent {
			args = append(args, r.d.ts(now))
		}
		for _, seq := range chunk {
			args = append(args, seq)
		}
		var err error
		if r.o.DeleteSent {
			_, err = q.ExecContext(ctx, `DELETE FROM `+r.o.Table+` WHERE seq IN (`+r.d.list(1, len(chunk))+`)`, args...)
		} else {
			_, err = q.ExecContext(ctx, `UPDATE `+r.o.Table+` SET state = 'sent', sent_at = `+r.d.ph(1)+
				`, attempts = attempts + 1, last_error = NULL WHERE seq IN (`+r.d.list(2, len(chunk))+`)`, args...)
		}
		if err != nil {
			return fmt.Errorf("outbox: mark sent: %w", err)
		}
	}
	return nil
}

// markEarly reports whether rounds mark their rows sent while the PubAcks
// are awaited (see publishMarking): on Postgres, unless DeleteSent (a
// deleted row cannot be put back when its publish fails).
func (r *Relay) markEarly() bool {
	return r.d.kind == sqlstore.Postgres && !r.o.DeleteSent
}

// publishMarking publishes rows and, while the PubAcks are awaited, marks
// every row sent in the claim transaction q (uncommitted, so other
// transactions still see the rows pending and locked): the database's part
// of the round overlaps the broker's instead of following it. The caller
// corrects the rows whose outcome is not an acknowledgement with unmark
// before committing. markErr is the marking's error; err is publish's.
func (r *Relay) publishMarking(ctx context.Context, q Querier, rows []row) (outs []*outcome, markErr, err error) {
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type published struct {
		outs []*outcome
		err  error
	}
	ch := make(chan published, 1)
	go func() {
		outs, err := r.publish(pctx, rows)
		ch <- published{outs, err}
	}()
	markErr = r.asyncCommit(ctx, q)
	if markErr == nil {
		seqs := make([]int64, len(rows))
		for i := range rows {
			seqs[i] = rows[i].Seq
		}
		markErr = r.markSent(ctx, q, seqs, r.o.Now())
	}
	if markErr != nil {
		cancel() // the round fails: stop waiting for PubAcks
	}
	p := <-ch
	if markErr != nil {
		return nil, markErr, nil
	}
	return p.outs, nil, p.err
}

// unmark corrects, after publishMarking, the rows whose outcome is not an
// acknowledgement: a transient failure back to pending with its backoff, a
// rejection to failed, a row not attempted back to as it was claimed. It
// returns the number of rows sent or failed, as mark does.
func (r *Relay) unmark(ctx context.Context, q Querier, rows []row, outs []*outcome, now time.Time) (int, error) {
	done := 0
	for i, o := range outs {
		x := rows[i]
		switch {
		case o == nil:
			if _, err := q.ExecContext(ctx, `UPDATE `+r.o.Table+` SET state = 'pending', sent_at = NULL, attempts = attempts - 1, last_error = `+
				r.d.ph(1)+` WHERE seq = `+r.d.ph(2), x.LastError, x.Seq); err != nil {
				return 0, fmt.Errorf("outbox: unmark: %w", err)
			}
		case o.err == nil:
			done++
		case o.permanent:
			done++
			r.log.Warn("broker rejected outbox message; marked failed", "id", x.ID, "subject", x.Subject, "err", o.err)
			if _, err := q.ExecContext(ctx, `UPDATE `+r.o.Table+` SET state = 'failed', sent_at = NULL, last_error = `+
				r.d.ph(1)+` WHERE seq = `+r.d.ph(2), truncate(o.err.Error(), 1024), x.Seq); err != nil {
				return 0, fmt.Errorf("outbox: mark failed: %w", err)
			}
		default:
			next := now.Add(r.o.Backoff.Delay(x.Attempts + 1))
			if _, err := q.ExecContext(ctx, `UPDATE `+r.o.Table+` SET state = 'pending', sent_at = NULL, last_error = `+r.d.ph(1)+
				`, next_attempt_at = `+r.d.ph(2)+` WHERE seq = `+r.d.ph(3), truncate(o.err.Error(), 1024), r.d.ts(next), x.Seq); err != nil {
				return 0, fmt.Errorf("outbox: mark retry: %w", err)
			}
		}
	}
	return done, nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// Cleanup deletes sent rows older than the retention, in batches of
// CleanupBatch, and returns how many it deleted. Run calls it every
// CleanupInterval.
func (r *Relay) Cleanup(ctx context.Context) (int64, error) {
	if r.o.Retention < 0 {
		return 0, nil
	}
	cutoff := r.d.ts(r.o.Now().Add(-r.o.Retention))
	sub := `SELECT seq FROM ` + r.o.Table + ` WHERE state = 'sent' AND sent_at < ` + r.d.ph(1) + ` LIMIT ` + r.d.ph(2)
	if r.d.kind == sqlstore.Postgres {
		sub += ` FOR UPDATE SKIP LOCKED`
	}
	var total int64
	for {
		res, err := r.db.ExecContext(ctx, `DELETE FROM `+r.o.Table+` WHERE seq IN (`+sub+`)`, cutoff, r.o.CleanupBatch)
		if err != nil {
			return total, fmt.Errorf("outbox: cleanup: %w", err)
		}
		n, err := res.RowsAffected()
		if err != nil {
			return total, fmt.Errorf("outbox: cleanup: %w", err)
		}
		total += n
		r.deleted.Add(n)
		if n < int64(r.o.CleanupBatch) {
			return total, nil
		}
	}
}
