package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"strings"

	"github.com/idemq/idemq/outbox"
)

// stringList is a flag that may be repeated; each value may also hold
// comma-separated items.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// dbFlags adds -db and -table (default table) to fs.
func dbFlags(fs *flag.FlagSet, table string) (dbURL, tbl *string) {
	dbURL = fs.String("db", "", "database `URL`: postgres://… or sqlite:PATH (required)")
	tbl = fs.String("table", table, "`table` name, optionally schema-qualified")
	return dbURL, tbl
}

// openOutbox opens the database and the outbox on it without creating
// anything.
func openOutbox(ctx context.Context, dbURL, table string) (*sql.DB, *outbox.Outbox, error) {
	db, err := openDB(ctx, dbURL)
	if err != nil {
		return nil, nil, err
	}
	if err := requireTable(ctx, db, dbURL, "outbox", table, "outbox.New (a program that writes to the outbox)"); err != nil {
		_ = db.Close()
		return nil, nil, err
	}
	ob, err := outbox.New(ctx, db, outbox.Config{Table: table, SkipCreate: true})
	if err != nil {
		_ = db.Close()
		return nil, nil, err
	}
	return db, ob, nil
}

// parseDB parses a db subcommand's flags and checks -db and that there are
// no more positional arguments than want.
func (a *app) parseDB(fs *flag.FlagSet, args []string, dbURL *string, want int) ([]string, error) {
	pos, err := a.parse(fs, args)
	if err != nil {
		return nil, err
	}
	if len(pos) > want {
		return nil, usageErrorf(fs, "unexpected argument %q", pos[want])
	}
	if *dbURL == "" {
		return nil, usageErrorf(fs, "-db is required")
	}
	if !validDBURL(*dbURL) {
		return nil, usageErrorf(fs, "%v: got %q", errBadDBURL, *dbURL)
	}
	return pos, nil
}

func (a *app) outboxStats(ctx context.Context, args []string) error {
	fs := a.flagSet("outbox stats", "-db URL [-table idemq_outbox]",
		"Prints the number of outbox rows in each state (pending, sent, failed) and the age of the\n"+
			"oldest pending row.")
	dbURL, table := dbFlags(fs, outbox.DefaultTable)
	if _, err := a.parseDB(fs, args, dbURL, 0); err != nil {
		return err
	}
	db, ob, err := openOutbox(ctx, *dbURL, *table)
	if err != nil {
		return err
	}
	defer db.Close()
	return outboxStats(ctx, db, ob, a.now(), a.stdout)
}

func (a *app) outboxFailed(ctx context.Context, args []string) error {
	fs := a.flagSet("outbox failed", "-db URL [-table idemq_outbox] [-limit N]",
		"Lists the outbox rows the broker rejected permanently (state failed) with their last error.\n"+
			"Fix the cause, then move them back with \"idemq outbox retry\".")
	dbURL, table := dbFlags(fs, outbox.DefaultTable)
	limit := fs.Int("limit", 0, "print at most `N` rows; 0 means all")
	if _, err := a.parseDB(fs, args, dbURL, 0); err != nil {
		return err
	}
	if *limit < 0 {
		return usageErrorf(fs, "-limit must not be negative")
	}
	db, ob, err := openOutbox(ctx, *dbURL, *table)
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = outboxFailed(ctx, db, ob, *limit, a.width, a.stdout)
	return err
}

func (a *app) outboxRetry(ctx context.Context, args []string) error {
	fs := a.flagSet("outbox retry", "-db URL [-table idemq_outbox] (-id ID ... | -all-failed)",
		"Moves failed outbox rows back to pending, due now, so the relay publishes them again\n"+
			"(outbox.Outbox.Requeue; on Postgres the relays are woken by NOTIFY). Exits 1 when an -id\n"+
			"is not a failed row.")
	dbURL, table := dbFlags(fs, outbox.DefaultTable)
	var ids stringList
	fs.Var(&ids, "id", "outbox `ID` to retry (repeatable, or comma-separated)")
	allFailed := fs.Bool("all-failed", false, "retry every failed row")
	if _, err := a.parseDB(fs, args, dbURL, 0); err != nil {
		return err
	}
	if (len(ids) == 0) == !*allFailed {
		return usageErrorf(fs, "choose exactly one of -id ID and -all-failed")
	}
	db, ob, err := openOutbox(ctx, *dbURL, *table)
	if err != nil {
		return err
	}
	defer db.Close()
	n, err := outboxRetry(ctx, db, ob, ids, *allFailed)
	fmt.Fprintf(a.stdout, "requeued %d rows\n", n)
	return err
}
