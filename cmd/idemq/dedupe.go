package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/sqlstore"
)

// errRecordNotFound is returned by "dedupe get" when no live record exists
// under the key; the stores' own ErrNotFound is wrapped too.
var errRecordNotFound = errors.New("record not found")

// hintScanLimit bounds how many records "dedupe get" reads, after a miss,
// looking for the key under another namespace: 100,000.
const hintScanLimit = 100_000

// maxHints is how many other stored keys a miss names at most.
const maxHints = 5

// recordView is a dedupe record as the dedupe commands print it.
type recordView struct {
	Key         string    `json:"key"`
	KVKey       string    `json:"kv_key,omitempty"` // NATS KV records under a hashed key only
	State       string    `json:"state"`
	Fingerprint string    `json:"fingerprint"`
	Token       string    `json:"token"`
	Fence       uint64    `json:"fence"`
	Attempts    int       `json:"attempts"`
	LeaseUntil  time.Time `json:"lease_until"`
	LeaseAlive  bool      `json:"lease_alive"`
	CreatedAt   time.Time `json:"created_at"`
	ExpiresAt   time.Time `json:"expires_at"`
	ResultSize  int       `json:"result_size"`
}

func viewOf(r *dedupe.Record, hashed string, now time.Time) recordView {
	return recordView{
		Key: r.Key, KVKey: hashed, State: r.State.String(), Fingerprint: r.Fingerprint, Token: r.Token,
		Fence: r.Fence, Attempts: r.Attempts,
		LeaseUntil: r.LeaseUntil.UTC(), LeaseAlive: r.State == dedupe.StateInProgress && r.Token != "" && now.Before(r.LeaseUntil),
		CreatedAt: r.CreatedAt.UTC(), ExpiresAt: r.ExpiresAt.UTC(), ResultSize: len(r.Result),
	}
}

// displayKey is the key column of a record: its key, or its KV key when
// the store keeps only a hash of it.
func (v recordView) displayKey() string {
	if v.Key == "" && v.KVKey != "" {
		return v.KVKey + " (hashed)"
	}
	return v.Key
}

// dedupeGet prints the live record stored under the namespaced key of raw
// (see dedupe.Guard.StoreKey). A missing record is an error wrapping
// errRecordNotFound that names the namespaces under which raw is stored,
// if any.
func dedupeGet(ctx context.Context, src recordSource, g *dedupe.Guard, raw string, now time.Time, asJSON bool, w io.Writer) error {
	key, err := g.StoreKey(raw)
	if err != nil {
		return err
	}
	r, err := src.get(ctx, key)
	if errors.Is(err, errRecordNotFound) {
		return notFoundHint(ctx, src, raw, key, err)
	}
	if err != nil {
		return err
	}
	v := viewOf(r, "", now)
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
	fmt.Fprintf(&b, "fence:       %s\n", numDash(v.Fence))
	fmt.Fprintf(&b, "attempts:    %d\n", v.Attempts)
	fmt.Fprintf(&b, "lease until: %s\n", lease)
	fmt.Fprintf(&b, "created:     %s\n", v.CreatedAt.Format(time.RFC3339Nano))
	fmt.Fprintf(&b, "expires:     %s (in %s)\n", v.ExpiresAt.Format(time.RFC3339Nano), r.ExpiresAt.Sub(now).Truncate(time.Second))
	fmt.Fprintf(&b, "result:      %d bytes\n", v.ResultSize)
	_, err = io.WriteString(w, b.String())
	return err
}

// notFoundHint looks for raw stored under another namespace (a stored key
// ending in ":" + raw, or raw itself without a namespace) and adds the
// -namespace flags that would find it to the not-found error.
func notFoundHint(ctx context.Context, src recordSource, raw, key string, miss error) error {
	var found []string
	seen := 0
	errEnough := errors.New("enough")
	err := src.scan(ctx, "", func(r *dedupe.Record, _ string) error {
		seen++
		if r.Key != key && (r.Key == raw || strings.HasSuffix(r.Key, ":"+raw)) {
			found = append(found, r.Key)
		}
		if len(found) >= maxHints || seen >= hintScanLimit {
			return errEnough
		}
		return nil
	})
	if err != nil && !errors.Is(err, errEnough) {
		return fmt.Errorf("%w (looking for it under other namespaces failed: %v)", miss, err)
	}
	stored := ""
	if key != raw {
		stored = fmt.Sprintf(" (stored key %q)", key)
	}
	if len(found) == 0 {
		where := "under no other namespace"
		if seen >= hintScanLimit {
			where = fmt.Sprintf("under no other namespace among the first %d records", seen)
		}
		return fmt.Errorf("%w%s; %s, looked %s. Keys are stored as NAMESPACE:KEY: pass the consumer's "+
			"or API's -namespace NS (the payments example uses payments-api and payments-worker); "+
			"\"idemq dedupe count\" lists the namespaces", miss, stored, src.describe(), where)
	}
	slices.Sort(found)
	var hints []string
	for _, k := range found {
		if k == raw {
			hints = append(hints, fmt.Sprintf("%q (no -namespace)", k))
			continue
		}
		ns := strings.TrimSuffix(k, ":"+raw)
		hints = append(hints, fmt.Sprintf("%q (-namespace %s)", k, ns))
	}
	return fmt.Errorf("%w%s in %s; the key is stored as %s", miss, stored, src.describe(), strings.Join(hints, ", "))
}

// recordFilter selects records for list and count.
type recordFilter struct {
	Prefix string       // stored-key prefix: "NS:" for -namespace NS
	State  dedupe.State // 0: every state
	Limit  int          // list only: most records printed; 0 means all
}

func (f recordFilter) match(r *dedupe.Record) bool {
	return f.State == 0 || r.State == f.State
}

// dedupeList prints the live records f selects: in key order for the SQL
// store, in scan order (then sorted) for the others. It returns how many it
// printed.
func dedupeList(ctx context.Context, src recordSource, f recordFilter, now time.Time, asJSON bool, width int, w io.Writer) (int, error) {
	var views []recordView
	errEnough := errors.New("enough")
	err := src.scan(ctx, f.Prefix, func(r *dedupe.Record, hashed string) error {
		if !f.match(r) {
			return nil
		}
		views = append(views, viewOf(r, hashed, now))
		if f.Limit > 0 && len(views) >= f.Limit {
			return errEnough
		}
		return nil
	})
	if err != nil && !errors.Is(err, errEnough) {
		return 0, err
	}
	slices.SortFunc(views, func(a, b recordView) int { return strings.Compare(a.displayKey(), b.displayKey()) })
	if asJSON {
		enc := json.NewEncoder(w)
		for _, v := range views {
			if err := enc.Encode(v); err != nil {
				return 0, err
			}
		}
		return len(views), nil
	}
	if len(views) == 0 {
		_, err := fmt.Fprintf(w, "no live records%s in %s\n", f.describe(), src.describe())
		return 0, err
	}
	rows := [][]string{{"STATE", "ATTEMPTS", "FENCE", "LEASE", "EXPIRES", "RESULT", "KEY"}}
	for _, v := range views {
		lease := "-"
		if v.LeaseAlive {
			lease = v.LeaseUntil.Sub(now).Truncate(time.Second).String() + " left"
		}
		rows = append(rows, []string{v.State, strconv.Itoa(v.Attempts), numDash(v.Fence), lease,
			v.ExpiresAt.Format(time.RFC3339), strconv.Itoa(v.ResultSize) + " B", v.displayKey()})
	}
	return len(views), writeColumns(w, rows, width)
}

func (f recordFilter) describe() string {
	var parts []string
	if f.Prefix != "" {
		parts = append(parts, fmt.Sprintf("with keys starting %q", f.Prefix))
	}
	if f.State != 0 {
		parts = append(parts, "in state "+f.State.String())
	}
	if len(parts) == 0 {
		return ""
	}
	return " " + strings.Join(parts, " ")
}

// countView is what "dedupe count" prints.
type countView struct {
	Total int `json:"total"`
	// ByState counts records per state name.
	ByState map[string]int `json:"by_state"`
	// ByNamespace counts records per namespace: the stored key up to its
	// first ":" ("" for keys without one, and for NATS KV keys stored
	// hashed, whose key is unknown).
	ByNamespace map[string]int `json:"by_namespace"`
}

// dedupeCount counts the live records with the prefix, by state and by
// namespace.
func dedupeCount(ctx context.Context, src recordSource, f recordFilter, asJSON bool, w io.Writer) error {
	c := countView{ByState: map[string]int{}, ByNamespace: map[string]int{}}
	err := src.scan(ctx, f.Prefix, func(r *dedupe.Record, _ string) error {
		if !f.match(r) {
			return nil
		}
		c.Total++
		c.ByState[r.State.String()]++
		ns, _, ok := strings.Cut(r.Key, ":")
		if !ok {
			ns = ""
		}
		c.ByNamespace[ns]++
		return nil
	})
	if err != nil {
		return err
	}
	if asJSON {
		return json.NewEncoder(w).Encode(c)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d live records%s in %s\n", c.Total, f.describe(), src.describe())
	for _, st := range []dedupe.State{dedupe.StateInProgress, dedupe.StateDone, dedupe.StateFailed} {
		fmt.Fprintf(&b, "  %-12s %d\n", st, c.ByState[st.String()])
	}
	if len(c.ByNamespace) > 0 {
		b.WriteString("by namespace (the key up to its first \":\"; pass it as -namespace):\n")
		names := make([]string, 0, len(c.ByNamespace))
		for ns := range c.ByNamespace {
			names = append(names, ns)
		}
		slices.Sort(names)
		for _, ns := range names {
			label := ns
			if ns == "" {
				label = "(none)"
			}
			fmt.Fprintf(&b, "  %-24s %d\n", label, c.ByNamespace[ns])
		}
	}
	_, err = io.WriteString(w, b.String())
	return err
}

const storeFlagsSynopsis = "(-db URL [-table idemq_dedupe] | -redis URL [-redis-prefix idemq:] | -nats URL [-bucket idemq_dedupe])"

const storeFlagsAbout = "The store is a SQL table (-db, dedupe/sqlstore), Redis (-redis, dedupe/redisstore; a single\n" +
	"server URL redis://[:PASSWORD@]HOST:PORT/DB) or a NATS KV bucket (-nats, dedupe/natskv): give exactly\n" +
	"one. Nothing is created: a missing table or bucket is an error (an older idemq's table gets the\n" +
	"columns this version reads)."

// guardFlags adds -namespace and -max-key-len, which turn a KEY into the
// stored key as the consumer's dedupe.Guard does.
func guardFlags(fs *flag.FlagSet, g *dedupe.Guard) {
	fs.StringVar(&g.Namespace, "namespace", "", "the Guard's `namespace`: stored keys are NS:KEY (payments example: payments-api, payments-worker)")
	fs.IntVar(&g.MaxKeyLen, "max-key-len", dedupe.DefaultMaxKeyLen, "the Guard's MaxKeyLen: longer keys are stored hashed, in `bytes`")
}

func (a *app) dedupeGet(ctx context.Context, args []string) error {
	fs := a.flagSet("dedupe get", storeFlagsSynopsis+" [-namespace NS] [-max-key-len 200] [-json] KEY",
		"Shows the dedupe record of idempotency key KEY: state, fingerprint, fencing token and fence,\n"+
			"attempts, lease, creation, expiry and stored result size. KEY is namespaced and hashed as the\n"+
			"consumer's dedupe.Guard does (-namespace, -max-key-len): a Guard with a Namespace stores\n"+
			"NS:KEY, so without the right -namespace the record is not found; the error then names the\n"+
			"namespaces under which KEY is stored.\n"+storeFlagsAbout)
	sf := addStoreFlags(fs)
	var g dedupe.Guard
	guardFlags(fs, &g)
	asJSON := fs.Bool("json", false, "print the record as JSON")
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErrorf(fs, "want exactly one KEY, got %d arguments", len(pos))
	}
	if err := dedupe.CheckKey(pos[0]); err != nil {
		return usageErrorf(fs, "KEY: %v", err)
	}
	if err := sf.check(fs); err != nil {
		return err
	}
	src, err := sf.open(ctx)
	if err != nil {
		return err
	}
	defer src.close()
	return dedupeGet(ctx, src, &g, pos[0], a.now(), *asJSON, a.stdout)
}

// listFlags adds -namespace, -prefix and -state.
func listFlags(fs *flag.FlagSet) (ns, prefix, state *string) {
	ns = fs.String("namespace", "", "only keys of this `namespace` (stored as NS:KEY)")
	prefix = fs.String("prefix", "", "only stored keys starting with this `text` (instead of -namespace)")
	state = fs.String("state", "", "only records in this `state`: in_progress, done or failed")
	return ns, prefix, state
}

// filterOf checks the list flags and returns the filter they select.
func filterOf(fs *flag.FlagSet, ns, prefix, state string) (recordFilter, error) {
	var f recordFilter
	switch {
	case ns != "" && prefix != "":
		return f, usageErrorf(fs, "-namespace and -prefix exclude each other")
	case ns != "":
		f.Prefix = ns + ":"
	default:
		f.Prefix = prefix
	}
	if state != "" {
		st, err := dedupe.ParseState(state)
		if err != nil {
			return f, usageErrorf(fs, "-state: %v (want in_progress, done or failed)", err)
		}
		f.State = st
	}
	return f, nil
}

func (a *app) dedupeList(ctx context.Context, args []string) error {
	fs := a.flagSet("dedupe list", storeFlagsSynopsis+" [-namespace NS | -prefix P] [-state S] [-limit 50] [-json]",
		"Lists live dedupe records: state, attempts, fence, lease left, expiry, result size and stored key.\n"+
			"Records are read in pages (SQL: in key order; Redis: SCAN; NATS KV: the bucket's key list).\n"+storeFlagsAbout)
	sf := addStoreFlags(fs)
	ns, prefix, state := listFlags(fs)
	limit := fs.Int("limit", 50, "print at most `N` records; 0 means all")
	asJSON := fs.Bool("json", false, "print one JSON object per line")
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErrorf(fs, "unexpected argument %q", pos[0])
	}
	f, err := filterOf(fs, *ns, *prefix, *state)
	if err != nil {
		return err
	}
	if *limit < 0 {
		return usageErrorf(fs, "-limit must not be negative")
	}
	f.Limit = *limit
	if err := sf.check(fs); err != nil {
		return err
	}
	src, err := sf.open(ctx)
	if err != nil {
		return err
	}
	defer src.close()
	_, err = dedupeList(ctx, src, f, a.now(), *asJSON, a.width, a.stdout)
	return err
}

func (a *app) dedupeCount(ctx context.Context, args []string) error {
	fs := a.flagSet("dedupe count", storeFlagsSynopsis+" [-namespace NS | -prefix P] [-state S] [-json]",
		"Counts live dedupe records by state and by namespace (the stored key up to its first \":\"),\n"+
			"reading every selected record.\n"+storeFlagsAbout)
	sf := addStoreFlags(fs)
	ns, prefix, state := listFlags(fs)
	asJSON := fs.Bool("json", false, "print the counts as JSON")
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErrorf(fs, "unexpected argument %q", pos[0])
	}
	f, err := filterOf(fs, *ns, *prefix, *state)
	if err != nil {
		return err
	}
	if err := sf.check(fs); err != nil {
		return err
	}
	src, err := sf.open(ctx)
	if err != nil {
		return err
	}
	defer src.close()
	return dedupeCount(ctx, src, f, *asJSON, a.stdout)
}

// sqlDefaultTable is the -table default of the dedupe commands.
const sqlDefaultTable = sqlstore.DefaultTable
