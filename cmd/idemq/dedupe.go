package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"strings"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
)

// tableRE is the table name syntax sqlstore accepts: an identifier,
// optionally schema-qualified.
var tableRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// checkTable fails when table does not exist, so that inspecting never
// creates one (sqlstore.New creates a missing table). It only selects no
// rows: the record format stays sqlstore's business.
func checkTable(ctx context.Context, db *sql.DB, table string) error {
	if !tableRE.MatchString(table) {
		return fmt.Errorf("%w: %q", sqlstore.ErrInvalidTable, table)
	}
	parts := strings.Split(table, ".")
	for i, p := range parts {
		parts[i] = `"` + p + `"`
	}
	rows, err := db.QueryContext(ctx, `SELECT 1 FROM `+strings.Join(parts, ".")+` WHERE 1 = 0`)
	if err != nil {
		return fmt.Errorf("dedupe table %s: %w", table, err)
	}
	return rows.Close()
}

// recordView is a dedupe record as "dedupe get" prints it.
type recordView struct {
	Key         string    `json:"key"`
	State       string    `json:"state"`
	Fingerprint string    `json:"fingerprint"`
	Token       string    `json:"token"`
	LeaseUntil  time.Time `json:"lease_until"`
	LeaseAlive  bool      `json:"lease_alive"`
	CreatedAt   time.Time `json:"created_at"`
	ExpiresAt   time.Time `json:"expires_at"`
	ResultSize  int       `json:"result_size"`
}

// dedupeGet prints the live record stored under the namespaced key of raw
// (see dedupe.Guard.StoreKey). A missing record is an error wrapping
// sqlstore.ErrNotFound.
func dedupeGet(ctx context.Context, store *sqlstore.Store, g *dedupe.Guard, raw string, now time.Time, asJSON bool, w io.Writer) error {
	key, err := g.StoreKey(raw)
	if err != nil {
		return err
	}
	r, err := store.Get(ctx, key)
	if err != nil {
		return err
	}
	v := recordView{
		Key: r.Key, State: r.State.String(), Fingerprint: r.Fingerprint, Token: r.Token,
		LeaseUntil: r.LeaseUntil.UTC(), LeaseAlive: r.State == dedupe.StateInProgress && now.Before(r.LeaseUntil),
		CreatedAt: r.CreatedAt.UTC(), ExpiresAt: r.ExpiresAt.UTC(), ResultSize: len(r.Result),
	}
	if asJSON {
		return json.NewEncoder(w).Encode(v)
	}
	lease := "-"
	if !r.LeaseUntil.IsZero() {
		lease = v.LeaseUntil.Format(time.RFC3339Nano)
		if v.LeaseAlive {
			lease += fmt.Sprintf(" (alive, %s left)", r.LeaseUntil.Sub(now).Truncate(time.Millisecond))
		} else {
			lease += " (over)"
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "key:         %s\n", v.Key)
	fmt.Fprintf(&b, "state:       %s\n", v.State)
	fmt.Fprintf(&b, "fingerprint: %s\n", dash(v.Fingerprint))
	fmt.Fprintf(&b, "token:       %s\n", dash(v.Token))
	fmt.Fprintf(&b, "lease until: %s\n", lease)
	fmt.Fprintf(&b, "created:     %s\n", v.CreatedAt.Format(time.RFC3339Nano))
	fmt.Fprintf(&b, "expires:     %s (in %s)\n", v.ExpiresAt.Format(time.RFC3339Nano), r.ExpiresAt.Sub(now).Truncate(time.Second))
	fmt.Fprintf(&b, "result:      %d bytes\n", v.ResultSize)
	_, err = io.WriteString(w, b.String())
	return err
}

func (a *app) dedupeGet(ctx context.Context, args []string) error {
	fs := a.flagSet("dedupe get", "-db URL [-table idemq_dedupe] [-namespace NS] [-max-key-len 200] [-json] KEY",
		"Shows the dedupe record of idempotency key KEY in a SQL store (dedupe/sqlstore): state,\n"+
			"fingerprint, fencing token, lease, creation, expiry and stored result size. KEY is\n"+
			"namespaced and hashed as the consumer's dedupe.Guard does (-namespace, -max-key-len).\n"+
			"Redis and NATS KV stores have no inspection API and are not supported.")
	dbURL, table := dbFlags(fs, sqlstore.DefaultTable)
	var g dedupe.Guard
	fs.StringVar(&g.Namespace, "namespace", "", "the Guard's `namespace` (stored keys are NS:KEY)")
	fs.IntVar(&g.MaxKeyLen, "max-key-len", dedupe.DefaultMaxKeyLen, "the Guard's MaxKeyLen: longer keys are stored hashed, in `bytes`")
	asJSON := fs.Bool("json", false, "print the record as JSON")
	pos, err := a.parseDB(fs, args, dbURL, 1)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErrorf(fs, "want exactly one KEY")
	}
	if err := dedupe.CheckKey(pos[0]); err != nil {
		return usageErrorf(fs, "KEY: %v", err)
	}
	db, err := openDB(ctx, *dbURL)
	if err != nil {
		return err
	}
	defer db.Close()
	if err := checkTable(ctx, db, *table); err != nil {
		return err
	}
	store, err := sqlstore.New(ctx, db, sqlstore.Config{Table: *table})
	if err != nil {
		return err
	}
	return dedupeGet(ctx, store, &g, pos[0], a.now(), *asJSON, a.stdout)
}
