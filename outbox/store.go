package outbox

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// State is the state of an outbox row.
type State string

const (
	// StatePending: committed, not yet acknowledged by the broker.
	StatePending State = "pending"
	// StateSent: published and acknowledged; deleted after the relay's
	// retention.
	StateSent State = "sent"
	// StateFailed: rejected permanently by the broker (see Permanent); kept
	// until requeued or deleted by an operator.
	StateFailed State = "failed"
)

// Row is an outbox row as List returns it.
type Row struct {
	// Seq is the row's position in the outbox: increasing in insertion
	// order; the relay publishes rows of one ordering key in Seq order.
	Seq int64
	// ID is the Nats-Msg-Id the row is published with.
	ID          string
	Subject     string
	Header      map[string][]string
	Data        []byte
	OrderingKey string
	State       State
	// Attempts counts publish attempts that reached an outcome.
	Attempts int
	// LastError is the last publish error, empty once sent.
	LastError string
	// CreatedAt is when AddTx ran.
	CreatedAt time.Time
	// NextAttemptAt is when a pending row becomes due after a transient
	// failure; zero for a row that is due at once. It is set from the
	// relay's clock, so producers' clocks never delay publishing.
	NextAttemptAt time.Time
	// SentAt is when the relay marked the row sent, in the round that
	// received its PubAck (on Postgres while that round awaited the
	// PubAcks); zero unless sent.
	SentAt time.Time
}

// ListFilter selects rows for List. A nil *ListFilter lists the first 100
// rows of any state.
type ListFilter struct {
	// State restricts the listing to one state; empty means any.
	State State
	// AfterSeq lists rows with Seq greater than it (paging).
	AfterSeq int64
	// IDs restricts the listing to these ids.
	IDs []string
	// Limit is the most rows returned. Default 100.
	Limit int
}

// List returns outbox rows in Seq order, for inspection and tests.
func (o *Outbox) List(ctx context.Context, q Querier, f *ListFilter) ([]Row, error) {
	var lf ListFilter
	if f != nil {
		lf = *f
	}
	if lf.Limit <= 0 {
		lf.Limit = 100
	}
	var where []string
	var args []any
	add := func(cond string, vals ...any) {
		where = append(where, fmt.Sprintf(cond, o.d.list(len(args)+1, len(vals))))
		args = append(args, vals...)
	}
	add("seq > %s", lf.AfterSeq)
	if lf.State != "" {
		add("state = %s", string(lf.State))
	}
	if len(lf.IDs) > 0 {
		vals := make([]any, len(lf.IDs))
		for i, id := range lf.IDs {
			vals[i] = id
		}
		add("id IN (%s)", vals...)
	}
	args = append(args, lf.Limit)
	rs, err := q.QueryContext(ctx, `SELECT seq, id, subject, headers, data, ordering_key, state, attempts, COALESCE(last_error, ''),
		created_at, next_attempt_at, sent_at FROM `+o.table+` WHERE `+strings.Join(where, " AND ")+` ORDER BY seq LIMIT `+o.d.ph(len(args)), args...)
	if err != nil {
		return nil, fmt.Errorf("outbox: list: %w", err)
	}
	defer rs.Close()
	var out []Row
	for rs.Next() {
		var x Row
		var hdr []byte
		var state string
		created, next, sent := nullTime{d: o.d}, nullTime{d: o.d}, nullTime{d: o.d}
		if err := rs.Scan(&x.Seq, &x.ID, &x.Subject, &hdr, &x.Data, &x.OrderingKey, &state, &x.Attempts, &x.LastError,
			&created, &next, &sent); err != nil {
			return nil, fmt.Errorf("outbox: list: %w", err)
		}
		if x.Header, err = decodeHeader(hdr); err != nil {
			return nil, err
		}
		if x.Data == nil {
			x.Data = []byte{}
		}
		x.State = State(state)
		x.CreatedAt, x.NextAttemptAt, x.SentAt = created.Time, next.Time, sent.Time
		out = append(out, x)
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("outbox: list: %w", err)
	}
	return out, nil
}

// Counts returns the number of rows in each state (states without rows are
// absent from the map).
func (o *Outbox) Counts(ctx context.Context, q Querier) (map[State]int64, error) {
	rs, err := q.QueryContext(ctx, `SELECT state, COUNT(*) FROM `+o.table+` GROUP BY state`)
	if err != nil {
		return nil, fmt.Errorf("outbox: counts: %w", err)
	}
	defer rs.Close()
	out := map[State]int64{}
	for rs.Next() {
		var s string
		var n int64
		if err := rs.Scan(&s, &n); err != nil {
			return nil, fmt.Errorf("outbox: counts: %w", err)
		}
		out[State(s)] = n
	}
	if err := rs.Err(); err != nil {
		return nil, fmt.Errorf("outbox: counts: %w", err)
	}
	return out, nil
}

// Requeue puts failed rows with the given ids back to pending, due now, so
// the relay publishes them again (after the operator fixed the cause, say
// created the missing stream). It returns how many rows it changed.
func (o *Outbox) Requeue(ctx context.Context, q Querier, ids ...string) (int64, error) {
	if len(ids) == 0 {
		return 0, nil
	}
	args := make([]any, 0, len(ids))
	for _, id := range ids {
		args = append(args, id)
	}
	res, err := q.ExecContext(ctx, `UPDATE `+o.table+` SET state = 'pending', next_attempt_at = NULL
		WHERE state = 'failed' AND id IN (`+o.d.list(1, len(ids))+`)`, args...)
	if err != nil {
		return 0, fmt.Errorf("outbox: requeue: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, fmt.Errorf("outbox: requeue: %w", err)
	}
	if n > 0 && o.notify {
		if _, err := q.ExecContext(ctx, `SELECT pg_notify($1, '')`, o.channel); err != nil {
			return n, fmt.Errorf("outbox: requeue: %w", err)
		}
	}
	return n, nil
}
