package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/idemq/idemq/outbox"
)

// maxScanPerPage bounds how many messages one list page reads when the
// filters match few: the page then offers to continue from where it
// stopped.
const maxScanPerPage = 20000

// reasonHelp says what each dead-letter reason means and what to do; the
// README's operator's guide says the same at more length.
var reasonHelp = map[string]string{
	"permanent": "The handler rejected the message for good (retry.Permanent): a business refusal such as a declined card. Replaying repeats the refusal unless its cause was fixed; replay after the fix, purge when the refusal stands.",
	"exhausted": "Transient failures used up the retry policy (or the broker's MaxDeliver): usually a dependency was down or slow. Check that it is healthy again, then replay.",
	"conflict":  "The idempotency key was already completed with a different body: a producer reusing keys. Replaying conflicts again; fix the producer, then purge (or republish under a new key).",
	"invalid":   "The message cannot be processed as sent: no usable idempotency key, a body that is not the expected JSON, or the handler said Invalid. Replaying the same bytes fails the same way; fix the producer, then purge.",
}

// reasons are the dead-letter reasons in the order the console lists them.
var reasons = []string{"permanent", "exhausted", "conflict", "invalid"}

// templateFuncs are the helpers the page templates use.
func templateFuncs() template.FuncMap {
	return template.FuncMap{
		"utc": func(t time.Time) string {
			if t.IsZero() {
				return "-"
			}
			return t.UTC().Format(time.RFC3339)
		},
		"cut":        cut,
		"dash":       dash,
		"num":        numDash,
		"reasonHelp": func(r string) string { return reasonHelp[r] },
		"bytes":      humanBytes,
		"pct": func(n, total int) int {
			if total <= 0 {
				return 0
			}
			return int(math.Round(100 * float64(n) / float64(total)))
		},
	}
}

// parsePages parses each page template together with the layout.
func parsePages() (map[string]*template.Template, error) {
	entries, err := webFS.ReadDir("web")
	if err != nil {
		return nil, err
	}
	pages := map[string]*template.Template{}
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".html") || name == "layout.html" {
			continue
		}
		t, err := template.New(name).Funcs(templateFuncs()).ParseFS(webFS, "web/layout.html", "web/"+name)
		if err != nil {
			return nil, fmt.Errorf("console template %s: %w", name, err)
		}
		pages[name] = t
	}
	return pages, nil
}

// render executes page with data (a map) plus the fields every page uses.
func (c *console) render(w http.ResponseWriter, r *http.Request, page string, data map[string]any) {
	data["CSRF"], _ = r.Context().Value(csrfKeyCtx{}).(string)
	data["Streams"] = c.cfg.Streams
	data["Outbox"] = c.db != nil
	data["ShowBodies"] = c.cfg.ShowBodies
	data["Now"] = c.cfg.Now().UTC().Format(time.RFC3339)
	var b bytes.Buffer
	if err := c.pages[page].ExecuteTemplate(&b, "layout", data); err != nil {
		c.cfg.Logger.Error("console render", "page", page, "error", err)
		http.Error(w, "render "+page+": "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_, _ = w.Write(b.Bytes())
}

// fail answers with an error page.
func (c *console) fail(w http.ResponseWriter, r *http.Request, status int, err error) {
	w.WriteHeader(status)
	c.render(w, r, "error.html", map[string]any{"Title": http.StatusText(status), "Status": status, "Error": err.Error()})
}

// stream returns the {stream} path value when it is one of the console's
// streams; otherwise it answers 404.
func (c *console) stream(w http.ResponseWriter, r *http.Request) (string, bool) {
	s := r.PathValue("stream")
	if !slices.Contains(c.cfg.Streams, s) {
		c.fail(w, r, http.StatusNotFound, fmt.Errorf("stream %q is not one of the console's dead-letter streams (-stream)", s))
		return "", false
	}
	return s, true
}

// age formats how long ago t was.
func (c *console) age(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return humanDuration(c.cfg.Now().Sub(t))
}

// humanDuration rounds d for a person: 3d4h, 2h5m, 4m10s, 12s, 350ms.
func humanDuration(d time.Duration) string {
	switch {
	case d < 0:
		return "in " + humanDuration(-d)
	case d < time.Second:
		return d.Truncate(time.Millisecond).String()
	case d < time.Hour:
		return d.Truncate(time.Second).String()
	case d < 48*time.Hour:
		return strings.TrimSuffix(d.Truncate(time.Minute).String(), "0s")
	}
	days := d / (24 * time.Hour)
	return fmt.Sprintf("%dd%dh", days, (d-days*24*time.Hour)/time.Hour)
}

func humanBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// --- overview ---------------------------------------------------------------

// streamView is one dead-letter stream on the overview.
type streamView struct {
	tally
	OldestAge, NewestAge string
	Error                string
}

// outboxView is the outbox on the overview and the outbox page.
type outboxView struct {
	Table, Dialect          string
	Pending, Sent, Failed   int64
	Other                   map[string]int64
	OldestPending           *outbox.Row
	OldestPendingAge        string
	OldestPendingCreatedUTC string
	Error                   string
}

func (c *console) outboxSummary(ctx context.Context) outboxView {
	v := outboxView{Table: c.ob.Table(), Dialect: c.ob.Dialect().String()}
	counts, err := c.ob.Counts(ctx, c.db)
	if err != nil {
		v.Error = err.Error()
		return v
	}
	v.Pending, v.Sent, v.Failed = counts[outbox.StatePending], counts[outbox.StateSent], counts[outbox.StateFailed]
	for s, n := range counts {
		if s != outbox.StatePending && s != outbox.StateSent && s != outbox.StateFailed {
			if v.Other == nil {
				v.Other = map[string]int64{}
			}
			v.Other[string(s)] = n
		}
	}
	oldest, err := c.ob.List(ctx, c.db, &outbox.ListFilter{State: outbox.StatePending, Limit: 1})
	if err != nil {
		v.Error = err.Error()
		return v
	}
	if len(oldest) > 0 {
		v.OldestPending = &oldest[0]
		v.OldestPendingAge = c.age(oldest[0].CreatedAt)
		v.OldestPendingCreatedUTC = oldest[0].CreatedAt.UTC().Format(time.RFC3339)
	}
	return v
}

func (c *console) overview(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	var streams []streamView
	for _, s := range c.cfg.Streams {
		t := tallyStream(ctx, c.js, s)
		v := streamView{tally: t}
		if t.Msgs > 0 {
			v.OldestAge, v.NewestAge = c.age(t.FirstTime), c.age(t.LastTime)
		}
		if t.Err != nil {
			v.Error = t.Err.Error()
		}
		streams = append(streams, v)
	}
	data := map[string]any{"Title": "Overview", "DLQs": streams, "Reasons": reasons}
	if c.db != nil {
		data["OutboxView"] = c.outboxSummary(ctx)
	}
	var jobs []jobStatus
	for _, j := range c.jobs.recent() {
		jobs = append(jobs, j.status())
	}
	data["Jobs"] = jobs
	c.render(w, r, "overview.html", data)
}

// --- dead letters -------------------------------------------------------------

// listFilter is the list page's filter as the form sent it and as resolved.
type listFilter struct {
	Reason, OriginalSubject, Since, Until string
	// From is the first sequence of the page; 0 means the start.
	From uint64
	// N is the page size.
	N   int
	sel selector
}

// parseWhen reads a time filter: empty, a duration meaning that long ago
// ("90m", "2h", "3d"), RFC 3339, or "2006-01-02[T15:04[:05]]" in UTC.
func parseWhen(s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, nil
	}
	if n, ok := strings.CutSuffix(s, "d"); ok {
		if days, err := strconv.ParseFloat(n, 64); err == nil && days >= 0 {
			return now.Add(-time.Duration(days * float64(24*time.Hour))), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil && d >= 0 {
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02 15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.UTC); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%q is not a time: use 2006-01-02T15:04 (UTC), RFC 3339, or a duration ago such as 90m or 2d", s)
}

// parseFilter reads the list filter from q.
func (c *console) parseFilter(q url.Values) (listFilter, error) {
	f := listFilter{Reason: q.Get("reason"), OriginalSubject: strings.TrimSpace(q.Get("subject")),
		Since: q.Get("since"), Until: q.Get("until"), N: c.cfg.PageSize}
	if err := checkReason(f.Reason); err != nil {
		return f, fmt.Errorf("reason: %w", err)
	}
	now := c.cfg.Now()
	var err error
	if f.sel.Since, err = parseWhen(f.Since, now); err != nil {
		return f, fmt.Errorf("since: %w", err)
	}
	if f.sel.Until, err = parseWhen(f.Until, now); err != nil {
		return f, fmt.Errorf("until: %w", err)
	}
	if v := q.Get("from"); v != "" {
		if f.From, err = strconv.ParseUint(v, 10, 64); err != nil {
			return f, fmt.Errorf("from: %q is not a sequence", v)
		}
	}
	if v := q.Get("n"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 || n > maxPageSize {
			return f, fmt.Errorf("n: want a page size between 1 and %d", maxPageSize)
		}
		f.N = n
	}
	f.sel.Reason, f.sel.OriginalSubject = f.Reason, f.OriginalSubject
	return f, nil
}

// query encodes the filter (not the page position) as list page
// parameters.
func (f listFilter) query() string {
	q := url.Values{}
	for k, v := range map[string]string{"reason": f.Reason, "subject": f.OriginalSubject, "since": f.Since, "until": f.Until} {
		if v != "" {
			q.Set(k, v)
		}
	}
	return q.Encode()
}

// describe says in words what the filter selects.
func (f listFilter) describe() string {
	var parts []string
	if f.Reason != "" {
		parts = append(parts, "reason="+f.Reason)
	}
	if f.OriginalSubject != "" {
		parts = append(parts, "original-subject="+f.OriginalSubject)
	}
	if !f.sel.Since.IsZero() {
		parts = append(parts, "since="+f.sel.Since.UTC().Format(time.RFC3339))
	}
	if !f.sel.Until.IsZero() {
		parts = append(parts, "until="+f.sel.Until.UTC().Format(time.RFC3339))
	}
	if len(parts) == 0 {
		return "every message in the stream"
	}
	return "every dead letter with " + strings.Join(parts, " ")
}

// listRow is one dead letter on the list page.
type listRow struct {
	listEntry
	Age      string
	NotDL    bool
	ErrShort string
}

// msgSize returns the body size of a letter read headers only (the server
// adds Nats-Msg-Size), else of its body.
func msgSize(l letter) int {
	if v := l.Header.Get("Nats-Msg-Size"); v != "" {
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
	}
	return len(l.Data)
}

func (c *console) list(w http.ResponseWriter, r *http.Request) {
	stream, ok := c.stream(w, r)
	if !ok {
		return
	}
	f, err := c.parseFilter(r.URL.Query())
	if err != nil {
		c.fail(w, r, http.StatusBadRequest, err)
		return
	}
	ctx := r.Context()
	d, err := openDLQ(ctx, c.js, stream)
	if err != nil {
		c.fail(w, r, http.StatusBadGateway, err)
		return
	}
	var rows []listRow
	scanned, pastUntil := 0, false
	start := time.Now()
	last, err := consumerScan(ctx, c.js, d, scanRange{From: f.From, Since: f.sel.Since, Last: d.last, HeadersOnly: true},
		func(l letter) (bool, error) {
			scanned++
			if !f.sel.Until.IsZero() && !l.Stored.Before(f.sel.Until) {
				pastUntil = true
				return false, nil
			}
			if f.sel.matches(l) {
				e := entryOf(l)
				e.Size = msgSize(l)
				rows = append(rows, listRow{listEntry: e, Age: c.age(l.Stored), NotDL: !l.isDeadLetter(), ErrShort: cut(e.Error, 140)})
			}
			return len(rows) < f.N && scanned < maxScanPerPage, nil
		})
	if err != nil {
		c.fail(w, r, http.StatusBadGateway, err)
		return
	}
	var next uint64
	if !pastUntil && last != 0 && last < d.last && (len(rows) >= f.N || scanned >= maxScanPerPage) {
		next = last + 1
	}
	q := f.query()
	listURL := func(from uint64) string {
		v, _ := url.ParseQuery(q)
		if from != 0 {
			v.Set("from", strconv.FormatUint(from, 10))
		}
		if f.N != c.cfg.PageSize {
			v.Set("n", strconv.Itoa(f.N))
		}
		return listPath(stream, v)
	}
	data := map[string]any{
		"FirstURL": listURL(0), "NextURL": listURL(next),
		"Title": stream + " dead letters", "Stream": stream, "Filter": f, "Query": q, "Rows": rows, "Reasons": reasons,
		"Next": next, "From": f.From, "Scanned": scanned, "ScannedTo": last, "Budget": scanned >= maxScanPerPage,
		"Msgs": d.msgs, "FirstSeq": d.first, "LastSeq": d.last, "Took": time.Since(start).Truncate(time.Millisecond).String(),
		"Describe": f.describe(), "Filtered": f.sel.filtered(), "Rate": c.cfg.Rate,
		"SinceUTC": timeField(f.sel.Since), "UntilUTC": timeField(f.sel.Until),
	}
	c.render(w, r, "list.html", data)
}

// listPath is the list page of stream with the query q.
func listPath(stream string, q url.Values) string {
	p := "/dlq/" + url.PathEscape(stream)
	if len(q) > 0 {
		p += "?" + q.Encode()
	}
	return p
}

func timeField(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// header is one header line of the detail page.
type header struct {
	Key, Value string
}

func (c *console) letter(w http.ResponseWriter, r *http.Request) {
	stream, ok := c.stream(w, r)
	if !ok {
		return
	}
	seq, err := strconv.ParseUint(r.PathValue("seq"), 10, 64)
	if err != nil || seq == 0 {
		c.fail(w, r, http.StatusBadRequest, fmt.Errorf("%q is not a stream sequence", r.PathValue("seq")))
		return
	}
	ctx := r.Context()
	d, err := openDLQ(ctx, c.js, stream)
	if err != nil {
		c.fail(w, r, http.StatusBadGateway, err)
		return
	}
	l, err := d.get(ctx, seq)
	if errors.Is(err, errNoLetter) {
		c.fail(w, r, http.StatusNotFound, fmt.Errorf("%w (replayed and deleted, or purged)", err))
		return
	}
	if err != nil {
		c.fail(w, r, http.StatusBadGateway, err)
		return
	}
	var headers []header
	keys := make([]string, 0, len(l.Header))
	for k := range l.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		for _, v := range l.Header[k] {
			headers = append(headers, header{k, v})
		}
	}
	e := entryOf(l)
	kind, text := bodyView(l.Data)
	back, err := url.ParseQuery(r.URL.Query().Get("back"))
	if err != nil {
		back = url.Values{}
	}
	data := map[string]any{
		"Title": fmt.Sprintf("%s:%d", stream, seq), "Stream": stream, "Letter": e, "Headers": headers,
		"StoredUTC": l.Stored.UTC().Format(time.RFC3339Nano), "Age": c.age(l.Stored), "IsDeadLetter": l.isDeadLetter(),
		"BodyKind": kind, "BodySize": len(l.Data), "Back": back.Encode(), "BackURL": listPath(stream, back), "Rate": c.cfg.Rate,
		"ReplayID": replayMsgID(stream, seq), "ReasonHelp": reasonHelp[e.Reason],
	}
	if c.cfg.ShowBodies {
		data["Body"] = text
	}
	c.render(w, r, "letter.html", data)
}

// --- actions ----------------------------------------------------------------

// postedSeqs reads the seq form values.
func postedSeqs(r *http.Request) ([]uint64, error) {
	if err := r.ParseForm(); err != nil {
		return nil, err
	}
	var seqs []uint64
	for _, v := range r.PostForm["seq"] {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("%q is not a stream sequence", v)
		}
		if !slices.Contains(seqs, n) {
			seqs = append(seqs, n)
		}
	}
	return seqs, nil
}

// describeSeqs says which sequences were selected.
func describeSeqs(seqs []uint64) string {
	if len(seqs) == 1 {
		return "sequence " + strconv.FormatUint(seqs[0], 10)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d selected: ", len(seqs))
	for i, s := range seqs {
		if i == 10 {
			fmt.Fprintf(&b, " … (%d more)", len(seqs)-i)
			break
		}
		if i > 0 {
			b.WriteString(",")
		}
		b.WriteString(strconv.FormatUint(s, 10))
	}
	return b.String()
}

// postedFilter reads the filter an action form carries (resolved times).
func (c *console) postedFilter(r *http.Request) (listFilter, error) {
	return c.parseFilter(url.Values{"reason": {r.PostFormValue("reason")}, "subject": {r.PostFormValue("subject")},
		"since": {r.PostFormValue("since")}, "until": {r.PostFormValue("until")}})
}

func (c *console) replay(w http.ResponseWriter, r *http.Request) {
	stream, ok := c.stream(w, r)
	if !ok {
		return
	}
	perSecond := c.cfg.Rate
	if v := r.PostFormValue("rate"); v != "" {
		var err error
		if perSecond, err = strconv.ParseFloat(v, 64); err != nil || perSecond < 0 || math.IsNaN(perSecond) {
			c.fail(w, r, http.StatusBadRequest, fmt.Errorf("rate %q: want messages per second, 0 for unlimited", v))
			return
		}
	}
	opts := replayOptions{Stream: stream, Delete: r.PostFormValue("delete") == "on", Limiter: newLimiter(perSecond)}
	j := &job{Kind: "replay", Stream: stream, Who: who(r), Back: r.PostFormValue("back")}
	switch scope := r.PostFormValue("scope"); scope {
	case "seqs":
		seqs, err := postedSeqs(r)
		if err == nil && len(seqs) == 0 {
			err = errors.New("select at least one dead letter")
		}
		if err != nil {
			c.fail(w, r, http.StatusBadRequest, err)
			return
		}
		opts.Seqs, j.What = seqs, describeSeqs(seqs)
	case "filter":
		f, err := c.postedFilter(r)
		if err != nil {
			c.fail(w, r, http.StatusBadRequest, err)
			return
		}
		opts.All, opts.Reason, opts.Filter = true, f.Reason, f.sel
		opts.Filter.Reason = ""
		j.What = f.describe()
	default:
		c.fail(w, r, http.StatusBadRequest, fmt.Errorf("scope %q: want seqs or filter", scope))
		return
	}
	if perSecond > 0 {
		j.What += fmt.Sprintf(", at most %g/s", perSecond)
	}
	if opts.Delete {
		j.What += ", each deleted from the DLQ once replayed"
	} else {
		j.What += ", kept in the DLQ"
	}
	err := c.jobs.start(j, func(ctx context.Context, j *job) error {
		opts.Observe = func(st replayStats) {
			j.set(func(j *job) { j.state, j.selected, j.stats = jobRunning, st.Selected, st })
		}
		st, err := replay(ctx, c.js, opts, j)
		j.set(func(j *job) { j.selected, j.stats = st.Selected, st })
		return err
	})
	c.started(w, r, j, err)
}

// started redirects to a job's page, or explains why it did not start.
func (c *console) started(w http.ResponseWriter, r *http.Request, j *job, err error) {
	if errors.Is(err, errBusy) {
		c.fail(w, r, http.StatusConflict, err)
		return
	}
	if err != nil {
		c.fail(w, r, http.StatusServiceUnavailable, err)
		return
	}
	http.Redirect(w, r, "/jobs/"+j.ID, http.StatusSeeOther)
}

func (c *console) purge(w http.ResponseWriter, r *http.Request) {
	stream, ok := c.stream(w, r)
	if !ok {
		return
	}
	if got := strings.TrimSpace(r.PostFormValue("confirm")); got != stream {
		c.cfg.Logger.Warn("console action refused: purge not confirmed", "who", who(r), "stream", stream, "typed", got)
		c.fail(w, r, http.StatusBadRequest, fmt.Errorf("purge not confirmed: type the stream name %q into the confirmation field", stream))
		return
	}
	opts := purgeOptions{Stream: stream}
	j := &job{Kind: "purge", Stream: stream, Who: who(r), Back: r.PostFormValue("back")}
	switch scope := r.PostFormValue("scope"); scope {
	case "seqs":
		seqs, err := postedSeqs(r)
		if err == nil && len(seqs) == 0 {
			err = errors.New("select at least one dead letter")
		}
		if err != nil {
			c.fail(w, r, http.StatusBadRequest, err)
			return
		}
		opts.Seqs, j.What = seqs, describeSeqs(seqs)
	case "filter":
		f, err := c.postedFilter(r)
		if err != nil {
			c.fail(w, r, http.StatusBadRequest, err)
			return
		}
		opts.All, opts.Select, j.What = !f.sel.filtered(), f.sel, f.describe()
	default:
		c.fail(w, r, http.StatusBadRequest, fmt.Errorf("scope %q: want seqs or filter", scope))
		return
	}
	err := c.jobs.start(j, func(ctx context.Context, j *job) error {
		opts.Observe = func(selected int, deleted uint64) {
			j.set(func(j *job) { j.state, j.selected, j.deleted = jobRunning, selected, deleted })
		}
		n, err := purgeLetters(ctx, c.js, opts)
		j.set(func(j *job) { j.deleted = n })
		return err
	})
	c.started(w, r, j, err)
}

func (c *console) jobFor(w http.ResponseWriter, r *http.Request) (*job, bool) {
	j := c.jobs.get(r.PathValue("id"))
	if j == nil {
		c.fail(w, r, http.StatusNotFound, errors.New("no such job (the console keeps the last 100)"))
		return nil, false
	}
	return j, true
}

func (c *console) job(w http.ResponseWriter, r *http.Request) {
	j, ok := c.jobFor(w, r)
	if !ok {
		return
	}
	back, err := url.ParseQuery(j.Back)
	if err != nil {
		back = url.Values{}
	}
	c.render(w, r, "job.html", map[string]any{"Title": j.Kind + " " + j.Stream, "Job": j.status(), "Who": j.Who,
		"BackURL": listPath(j.Stream, back)})
}

func (c *console) jobStatus(w http.ResponseWriter, r *http.Request) {
	j := c.jobs.get(r.PathValue("id"))
	if j == nil {
		http.Error(w, `{"error":"no such job"}`, http.StatusNotFound)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(j.status())
}

func (c *console) cancelJob(w http.ResponseWriter, r *http.Request) {
	j, ok := c.jobFor(w, r)
	if !ok {
		return
	}
	c.cfg.Logger.Info("console action", "action", "cancel", "who", who(r), "job", j.ID, "stream", j.Stream)
	j.cancel()
	<-j.done
	http.Redirect(w, r, "/jobs/"+j.ID, http.StatusSeeOther)
}

// --- outbox -------------------------------------------------------------------

func (c *console) needOutbox(w http.ResponseWriter, r *http.Request) bool {
	if c.db == nil {
		c.fail(w, r, http.StatusNotFound, errors.New("no outbox: start the console with -db URL"))
		return false
	}
	return true
}

func (c *console) outboxPage(w http.ResponseWriter, r *http.Request) {
	if !c.needOutbox(w, r) {
		return
	}
	ctx := r.Context()
	var after int64
	if v := r.URL.Query().Get("after"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			c.fail(w, r, http.StatusBadRequest, fmt.Errorf("after: %q is not an outbox seq", v))
			return
		}
		after = n
	}
	rows, err := c.ob.List(ctx, c.db, &outbox.ListFilter{State: outbox.StateFailed, AfterSeq: after, Limit: c.cfg.PageSize + 1})
	if err != nil {
		c.fail(w, r, http.StatusBadGateway, err)
		return
	}
	var next int64
	if len(rows) > c.cfg.PageSize {
		rows = rows[:c.cfg.PageSize]
		next = rows[len(rows)-1].Seq
	}
	c.render(w, r, "outbox.html", map[string]any{"Title": "Outbox", "OutboxView": c.outboxSummary(ctx), "Rows": rows,
		"Next": next, "After": after, "Requeued": r.URL.Query().Get("requeued")})
}

func (c *console) outboxRetry(w http.ResponseWriter, r *http.Request) {
	if !c.needOutbox(w, r) {
		return
	}
	if err := r.ParseForm(); err != nil {
		c.fail(w, r, http.StatusBadRequest, err)
		return
	}
	ids := r.PostForm["id"]
	all := r.PostFormValue("scope") == "all-failed"
	if !all && len(ids) == 0 {
		c.fail(w, r, http.StatusBadRequest, errors.New("select at least one failed row, or retry all failed rows"))
		return
	}
	what := "all failed rows"
	if !all {
		what = "ids " + strings.Join(ids, ",")
	}
	n, err := outboxRetry(r.Context(), c.db, c.ob, ids, all)
	attrs := []any{"action", "outbox-retry", "who", who(r), "table", c.ob.Table(), "selection", what, "requeued", n}
	if err != nil {
		c.cfg.Logger.Warn("console action ended", append(attrs, "error", err)...)
		status := http.StatusBadGateway
		if errors.Is(err, errNotRequeued) {
			status = http.StatusConflict
		}
		c.fail(w, r, status, fmt.Errorf("requeued %d rows: %w", n, err))
		return
	}
	c.cfg.Logger.Info("console action done", attrs...)
	http.Redirect(w, r, "/outbox?requeued="+strconv.FormatInt(n, 10), http.StatusSeeOther)
}
