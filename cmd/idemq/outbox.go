package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/idemq/idemq/outbox"
)

// outboxPage is how many rows one List call reads.
const outboxPage = 500

// outboxStats prints the number of rows per state and the age of the oldest
// pending row.
func outboxStats(ctx context.Context, db *sql.DB, ob *outbox.Outbox, now time.Time, w io.Writer) error {
	counts, err := ob.Counts(ctx, db)
	if err != nil {
		return err
	}
	oldest, err := ob.List(ctx, db, &outbox.ListFilter{State: outbox.StatePending, Limit: 1})
	if err != nil {
		return err
	}
	var b strings.Builder
	fmt.Fprintf(&b, "table    %s (%s)\n", ob.Table(), ob.Dialect())
	for _, s := range []outbox.State{outbox.StatePending, outbox.StateSent, outbox.StateFailed} {
		fmt.Fprintf(&b, "%-8s %d\n", s, counts[s])
	}
	for s, n := range counts {
		if s != outbox.StatePending && s != outbox.StateSent && s != outbox.StateFailed {
			fmt.Fprintf(&b, "%-8s %d\n", s, n)
		}
	}
	if len(oldest) == 0 {
		b.WriteString("oldest pending: none\n")
	} else {
		r := oldest[0]
		fmt.Fprintf(&b, "oldest pending: %s (seq %d, id %s, created %s)\n",
			now.Sub(r.CreatedAt).Truncate(time.Millisecond), r.Seq, r.ID, r.CreatedAt.UTC().Format(time.RFC3339))
	}
	_, err = io.WriteString(w, b.String())
	return err
}

// eachFailed calls fn for each page of failed rows, in outbox order, until
// limit rows (0: all) have been passed.
func eachFailed(ctx context.Context, db *sql.DB, ob *outbox.Outbox, limit int, fn func([]outbox.Row) error) error {
	var after int64
	seen := 0
	for {
		n := outboxPage
		if limit > 0 {
			n = min(n, limit-seen)
		}
		if n <= 0 {
			return nil
		}
		rows, err := ob.List(ctx, db, &outbox.ListFilter{State: outbox.StateFailed, AfterSeq: after, Limit: n})
		if err != nil {
			return err
		}
		if len(rows) == 0 {
			return nil
		}
		if err := fn(rows); err != nil {
			return err
		}
		seen += len(rows)
		after = rows[len(rows)-1].Seq
		if len(rows) < n {
			return nil
		}
	}
}

// outboxFailed prints the failed rows, at most limit (0: all), and returns
// how many it printed.
func outboxFailed(ctx context.Context, db *sql.DB, ob *outbox.Outbox, limit, width int, w io.Writer) (int, error) {
	var all []outbox.Row
	err := eachFailed(ctx, db, ob, limit, func(rows []outbox.Row) error {
		all = append(all, rows...)
		return nil
	})
	if err != nil {
		return 0, err
	}
	if len(all) == 0 {
		_, err := io.WriteString(w, "no failed rows\n")
		return 0, err
	}
	table := [][]string{{"SEQ", "ID", "SUBJECT", "ATTEMPTS", "CREATED", "LAST-ERROR"}}
	for _, r := range all {
		table = append(table, []string{strconv.FormatInt(r.Seq, 10), r.ID, r.Subject, strconv.Itoa(r.Attempts),
			r.CreatedAt.UTC().Format(time.RFC3339), r.LastError})
	}
	return len(all), writeColumns(w, table, width)
}

// errNotRequeued is returned when some ids given to retry were not failed
// rows.
var errNotRequeued = errors.New("not requeued: no failed row with that id")

// outboxRetry puts failed rows back to pending through outbox.Requeue: the
// rows with ids, or with allFailed every failed row. It returns how many
// rows it changed; when ids were given and some were not failed rows, the
// error wraps errNotRequeued.
func outboxRetry(ctx context.Context, db *sql.DB, ob *outbox.Outbox, ids []string, allFailed bool) (int64, error) {
	if !allFailed {
		n, err := ob.Requeue(ctx, db, ids...)
		if err != nil {
			return n, err
		}
		if n < int64(len(ids)) {
			return n, fmt.Errorf("%d of %d ids: %w", int64(len(ids))-n, len(ids), errNotRequeued)
		}
		return n, nil
	}
	var total int64
	for {
		// Requeued rows leave the failed state, so each round lists the
		// first page again.
		rows, err := ob.List(ctx, db, &outbox.ListFilter{State: outbox.StateFailed, Limit: outboxPage})
		if err != nil || len(rows) == 0 {
			return total, err
		}
		page := make([]string, len(rows))
		for i, r := range rows {
			page[i] = r.ID
		}
		n, err := ob.Requeue(ctx, db, page...)
		total += n
		if err != nil {
			return total, err
		}
		if n == 0 {
			return total, nil
		}
	}
}

// writeColumns prints rows aligned, the last column cut so that a line fits
// width.
func writeColumns(w io.Writer, rows [][]string, width int) error {
	if len(rows) == 0 {
		return nil
	}
	cols := len(rows[0]) - 1
	widths := make([]int, cols)
	for _, r := range rows {
		for i := range cols {
			widths[i] = max(widths[i], len([]rune(r[i])))
		}
	}
	used := 0
	for _, wd := range widths {
		used += wd + 2
	}
	room := max(width-used, 20)
	var b strings.Builder
	for _, r := range rows {
		for i := range cols {
			b.WriteString(r[i])
			b.WriteString(strings.Repeat(" ", widths[i]-len([]rune(r[i]))+2))
		}
		b.WriteString(cut(r[cols], room))
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}
