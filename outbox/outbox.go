package outbox

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/idemq/idemq/dedupe/sqlstore"
)

// DefaultTable is the outbox table name when Config.Table is empty.
const DefaultTable = "idemq_outbox"

// Header names the outbox writes into every message it adds.
const (
	// HeaderCausationID carries the id of the message whose handling emitted
	// this one.
	HeaderCausationID = "Idemq-Causation-Id"
	// HeaderTraceparent is the W3C trace context header.
	HeaderTraceparent = "traceparent"
	// HeaderTracestate is the W3C trace state header.
	HeaderTracestate = "tracestate"
	// HeaderMsgID is the JetStream deduplication header; the relay sets it to
	// the outbox id.
	HeaderMsgID = "Nats-Msg-Id"
)

// ErrInvalidMessage is returned by AddTx for a message without a subject or
// with an id longer than MaxIDLen.
var ErrInvalidMessage = errors.New("outbox: invalid message")

// MaxIDLen is the longest outbox id AddTx accepts, in bytes.
const MaxIDLen = 1024

// Querier is sqlstore.Querier: *sql.Tx, *sql.Conn and *sql.DB satisfy it.
// Pass AddTx the transaction that holds the handler's own writes, so that
// the messages commit (or roll back) with them.
type Querier = sqlstore.Querier

// Message is one outgoing message written to the outbox.
type Message struct {
	// ID is the stable id the relay publishes as Nats-Msg-Id, so that the
	// broker drops a republished copy. Choose it from the operation
	// ("completed.<idempotency key>"), or leave it empty: AddTx then derives
	// it from the causing message (see WithCause) and the message's position
	// among the messages the handler added, so a retried handler emits the
	// same ids. With neither, AddTx uses a random id, which is still safe in a
	// transaction: only a committed row is ever published.
	ID string
	// Subject is the JetStream subject to publish to. Required.
	Subject string
	// Header holds the message headers. AddTx adds the causation id and the
	// trace context; it does not overwrite headers the caller set.
	Header map[string][]string
	// Data is the message body.
	Data []byte
	// OrderingKey, when not empty, makes the relay publish messages with the
	// same key in the order they were added (by outbox sequence), even when
	// several relays run. Messages without a key are published in any order.
	OrderingKey string
}

// Config configures an Outbox. Its zero value means defaults.
type Config struct {
	// Table is the outbox table name, optionally schema-qualified
	// ("app.idemq_outbox"). Default DefaultTable.
	Table string
	// Dialect selects the SQL dialect. Default: detected from the driver of
	// the *sql.DB ("pgx" → Postgres, modernc "sqlite" → SQLite).
	Dialect sqlstore.Dialect
	// Channel is the Postgres NOTIFY channel AddTx signals so that relays
	// wake on commit. Default: the table name without schema.
	Channel string
	// NoNotify disables the pg_notify in AddTx; relays then find new rows
	// by polling only.
	NoNotify bool
	// SkipCreate leaves the table alone at New; by default New creates the
	// table and its indexes if missing.
	SkipCreate bool
	// InjectTrace, when not nil, writes the trace context of ctx into the
	// headers of each added message (for example an OpenTelemetry
	// propagator's Inject with propagation.HeaderCarrier). It runs before the
	// WithTrace and causing-message fallbacks, which fill only what is still
	// missing.
	InjectTrace func(ctx context.Context, h http.Header)
	// Now is the clock. Default time.Now.
	Now func() time.Time
}

// Outbox writes outgoing messages into a table inside the caller's
// transaction. It is safe for concurrent use.
type Outbox struct {
	d       dialect
	table   string
	channel string
	notify  bool
	inject  func(ctx context.Context, h http.Header)
	now     func() time.Time
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// resolveTable fills the defaults that Config and RelayConfig share — the
// dialect detected from db, DefaultTable, a channel named after the table —
// validates the table name, and returns the dialect's SQL.
func resolveTable(db *sql.DB, kind *sqlstore.Dialect, table, channel *string) (dialect, error) {
	if *kind == sqlstore.Auto && db != nil {
		*kind = sqlstore.DetectDialect(db)
	}
	d, err := dialectFor(*kind)
	if err != nil {
		return dialect{}, err
	}
	if *table == "" {
		*table = DefaultTable
	}
	if !identRE.MatchString(*table) {
		return dialect{}, fmt.Errorf("outbox: table name %q is not a plain (optionally schema-qualified) identifier", *table)
	}
	if *channel == "" {
		*channel = unqualified(*table)
	}
	return d, nil
}

// New returns an Outbox on db and, unless Config.SkipCreate, creates the
// table and indexes if they are missing.
func New(ctx context.Context, db *sql.DB, cfg Config) (*Outbox, error) {
	if db == nil {
		return nil, errors.New("outbox: nil *sql.DB")
	}
	if cfg.Dialect == sqlstore.Auto {
		cfg.Dialect = sqlstore.DetectDialect(db)
	}
	return NewOn(ctx, sqlstore.SQLDB(db), cfg)
}

// NewOn is New on any sqlstore.DB: sqlstore.SQLDB(db), or
// pgxconn.Pool(pool) for a program on pgx, which then adds messages with
// AddIn on pgxconn.Tx(tx). Config.Dialect Auto asks db (pgxconn's adapters
// answer Postgres). The relay reads the same table through database/sql
// (NewRelay).
func NewOn(ctx context.Context, db sqlstore.DB, cfg Config) (*Outbox, error) {
	o := cfg
	if db == nil {
		return nil, errors.New("outbox: nil DB")
	}
	if o.Dialect == sqlstore.Auto {
		if d, ok := db.(interface{ Dialect() sqlstore.Dialect }); ok {
			o.Dialect = d.Dialect()
		}
	}
	d, err := resolveTable(nil, &o.Dialect, &o.Table, &o.Channel)
	if err != nil {
		return nil, err
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	ob := &Outbox{
		d:       d,
		table:   o.Table,
		channel: o.Channel,
		notify:  !o.NoNotify && d.kind == sqlstore.Postgres,
		inject:  o.InjectTrace,
		now:     o.Now,
	}
	if !o.SkipCreate {
		if err := createTable(ctx, db, d, o.Table); err != nil {
			return nil, err
		}
	}
	return ob, nil
}

// Table returns the table name the outbox writes to.
func (o *Outbox) Table() string { return o.table }

// Dialect returns the SQL dialect in use.
func (o *Outbox) Dialect() sqlstore.Dialect { return o.d.kind }

// Channel returns the Postgres NOTIFY channel ("" on SQLite or with NoNotify).
func (o *Outbox) Channel() string {
	if !o.notify {
		return ""
	}
	return o.channel
}

// AddTx writes msgs into the outbox through tx, the transaction that holds
// the handler's own writes. Nothing is published until tx commits; a relay
// then publishes each message with Nats-Msg-Id set to its id. Adding an id
// that already exists is a no-op, so a handler that runs again adds nothing
// twice. On Postgres AddTx also signals the relays' NOTIFY channel, which is
// delivered at commit, unless a relay is awake and will claim the rows
// without it (see "Coalesced wake-ups" in the package documentation).
//
// Called from a Batch handler on the batch transaction, AddTx checks msgs
// and derives their ids and headers at once but defers the insert: the
// batch writes every message of its messages' handlers with one statement
// just before it commits (see Batch).
func (o *Outbox) AddTx(ctx context.Context, tx Querier, msgs ...Message) error {
	if len(msgs) == 0 {
		return nil
	}
	now := o.now()
	rows, err := o.rows(ctx, msgs)
	if err != nil {
		return err
	}
	if buf := bufferFor(ctx, tx); buf != nil {
		buf.add(o, rows)
		return nil
	}
	return o.insert(ctx, sqlstore.SQL(tx), rows, now)
}

// AddIn is AddTx on any sqlstore.Conn: pgxconn.Tx(tx) adds the messages in
// a pgx transaction, so they commit with the handler's pgx writes (see
// Inbox.PgxHandler). The rows, ids and headers are AddTx's.
func (o *Outbox) AddIn(ctx context.Context, tx sqlstore.Conn, msgs ...Message) error {
	if len(msgs) == 0 {
		return nil
	}
	now := o.now()
	rows, err := o.rows(ctx, msgs)
	if err != nil {
		return err
	}
	return o.insert(ctx, tx, rows, now)
}

// rows checks msgs and derives their ids and headers.
func (o *Outbox) rows(ctx context.Context, msgs []Message) ([]row, error) {
	cause := causeFrom(ctx)
	rows := make([]row, len(msgs))
	for i, m := range msgs {
		if m.Subject == "" {
			return nil, fmt.Errorf("%w: message %d has no subject", ErrInvalidMessage, i)
		}
		id := m.ID
		if id == "" {
			id = cause.nextID()
		} else {
			cause.skip()
		}
		if len(id) > MaxIDLen {
			return nil, fmt.Errorf("%w: id of message %d is %d bytes, limit %d", ErrInvalidMessage, i, len(id), MaxIDLen)
		}
		h := o.headers(ctx, cause, m.Header)
		hb, err := encodeHeader(h)
		if err != nil {
			return nil, err
		}
		data := m.Data
		if data == nil {
			data = []byte{}
		}
		rows[i] = row{ID: id, Subject: m.Subject, Header: hb, Data: data, OrderingKey: m.OrderingKey}
	}
	return rows, nil
}

// insert writes rows on tx: one statement per up to insertChunk rows keeps
// the parameter count within both engines' limits.
func (o *Outbox) insert(ctx context.Context, tx sqlstore.Conn, rows []row, now time.Time) error {
	for start := 0; start < len(rows); start += insertChunk {
		end := min(start+insertChunk, len(rows))
		q, args := o.d.insertSQL(o.table, rows[start:end], now, o.notify && start == 0, o.channel)
		if _, err := tx.Exec(ctx, q, args...); err != nil {
			return fmt.Errorf("outbox: insert into %s: %w", o.table, err)
		}
	}
	return nil
}

// insertChunk is the most rows AddTx writes in one statement.
const insertChunk = 500

// headers builds the stored headers: the caller's, then the trace context
// and causation id where the caller did not set them.
func (o *Outbox) headers(ctx context.Context, c *Cause, in map[string][]string) http.Header {
	h := make(http.Header, len(in)+3)
	for k, v := range in {
		h[k] = append([]string(nil), v...)
	}
	if o.inject != nil {
		o.inject(ctx, h)
	}
	tc, _ := ctx.Value(traceKey{}).(TraceContext)
	if tc.Traceparent == "" && c != nil {
		tc.Traceparent = first(c.Header, HeaderTraceparent)
		tc.Tracestate = first(c.Header, HeaderTracestate)
	}
	if tc.Traceparent != "" && !has(h, HeaderTraceparent) {
		h[HeaderTraceparent] = []string{tc.Traceparent}
		if tc.Tracestate != "" && !has(h, HeaderTracestate) {
			h[HeaderTracestate] = []string{tc.Tracestate}
		}
	}
	if c != nil && c.ID != "" && !has(h, HeaderCausationID) {
		h[HeaderCausationID] = []string{c.ID}
	}
	return h
}

// has reports whether h holds name, exactly or in canonical form.
func has(h map[string][]string, name string) bool {
	if _, ok := h[name]; ok {
		return true
	}
	_, ok := h[http.CanonicalHeaderKey(name)]
	return ok
}

// first returns the first value of name in h, looked up exactly, then in
// canonical form.
func first(h map[string][]string, name string) string {
	if v := h[name]; len(v) > 0 {
		return v[0]
	}
	if v := h[http.CanonicalHeaderKey(name)]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func encodeHeader(h http.Header) ([]byte, error) {
	if len(h) == 0 {
		return nil, nil
	}
	b, err := json.Marshal(h)
	if err != nil {
		return nil, fmt.Errorf("outbox: encode headers: %w", err)
	}
	return b, nil
}

func decodeHeader(b []byte) (map[string][]string, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var h map[string][]string
	if err := json.Unmarshal(b, &h); err != nil {
		return nil, fmt.Errorf("outbox: decode headers: %w", err)
	}
	return h, nil
}

// Cause is the message whose handling emits outbox messages. Put it in the
// handler's context with WithCause (Inbox does this for you): AddTx then
// writes its ID as the Idemq-Causation-Id header, takes the W3C trace context
// from its headers when the context carries none, and derives the ids of
// messages added without one as ID + "#" + n, n counting from 0 over every
// message added under this Cause — deterministic as long as the handler adds
// the same messages in the same order when it runs again.
type Cause struct {
	// ID is the causing message's id: its Nats-Msg-Id or idempotency key,
	// namespaced where several consumers handle the same messages.
	ID string
	// Header is the causing message's headers.
	Header map[string][]string

	n atomic.Int64
}

// nextID returns the next derived id, or a random one without a cause id.
func (c *Cause) nextID() string {
	if c == nil || c.ID == "" {
		var b [16]byte
		_, _ = rand.Read(b[:])
		return hex.EncodeToString(b[:])
	}
	return c.ID + "#" + strconv.FormatInt(c.n.Add(1)-1, 10)
}

// skip advances the counter for a message with its own id, so that derived
// ids keep their positions.
func (c *Cause) skip() {
	if c != nil {
		c.n.Add(1)
	}
}

type causeKey struct{}
type traceKey struct{}

// WithCause returns ctx carrying a fresh Cause for the message with id and
// header. Call it once per handler attempt: the derived-id counter starts at
// zero in each returned context.
func WithCause(ctx context.Context, id string, header map[string][]string) context.Context {
	return context.WithValue(ctx, causeKey{}, &Cause{ID: id, Header: header})
}

// CauseFrom returns the Cause in ctx, or nil.
func CauseFrom(ctx context.Context) *Cause { return causeFrom(ctx) }

func causeFrom(ctx context.Context) *Cause {
	c, _ := ctx.Value(causeKey{}).(*Cause)
	return c
}

// TraceContext is a W3C trace context (https://www.w3.org/TR/trace-context/).
type TraceContext struct {
	// Traceparent is the traceparent header value.
	Traceparent string
	// Tracestate is the tracestate header value; optional.
	Tracestate string
}

// WithTrace returns ctx carrying tc; AddTx writes it into the headers of the
// messages it adds. It wins over the causing message's trace headers.
func WithTrace(ctx context.Context, tc TraceContext) context.Context {
	return context.WithValue(ctx, traceKey{}, tc)
}
