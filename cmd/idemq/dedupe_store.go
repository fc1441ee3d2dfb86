package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/redis/go-redis/v9"

	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/natskv"
	"github.com/idemq/idemq/dedupe/redisstore"
	"github.com/idemq/idemq/dedupe/sqlstore"
)

// recordSource is a dedupe store the dedupe commands read.
type recordSource interface {
	// describe names the store for messages: "the SQL table … in …".
	describe() string
	// get returns the live record of a stored key, or an error wrapping
	// errRecordNotFound.
	get(ctx context.Context, key string) (*dedupe.Record, error)
	// scan calls fn for each live record whose stored key starts with
	// prefix; hashed is the NATS KV key of a record whose key is stored
	// hashed (its Key is then empty).
	scan(ctx context.Context, prefix string, fn func(r *dedupe.Record, hashed string) error) error
	close()
}

// notFound is a store's not-found error that also matches
// errRecordNotFound, worded as the store words it.
type notFound struct{ err error }

func (e notFound) Error() string   { return e.err.Error() }
func (e notFound) Unwrap() []error { return []error{errRecordNotFound, e.err} }

// storeFlags are the flags that choose the store: exactly one of -db,
// -redis and -nats.
type storeFlags struct {
	db, table     *string
	redis, prefix *string
	nats, bucket  *string
}

func addStoreFlags(fs *flag.FlagSet) *storeFlags {
	return &storeFlags{
		db:     fs.String("db", "", "SQL dedupe store: database `URL`, postgres://… or sqlite:PATH"),
		table:  fs.String("table", sqlDefaultTable, "SQL dedupe `table`, optionally schema-qualified (with -db)"),
		redis:  fs.String("redis", "", "Redis dedupe store: server `URL`, redis://HOST:PORT/DB"),
		prefix: fs.String("redis-prefix", redisstore.DefaultPrefix, "Redis key `prefix` of the store (with -redis; redisstore.Config.Prefix)"),
		nats:   fs.String("nats", "", "NATS KV dedupe store: server `URL`, nats://HOST:PORT (with -bucket)"),
		bucket: fs.String("bucket", natskv.DefaultBucket, "NATS KV `bucket` of the store (with -nats)"),
	}
}

// check validates the store flags; the error names the flag to fix.
func (f *storeFlags) check(fs *flag.FlagSet) error {
	n := 0
	for _, v := range []string{*f.db, *f.redis, *f.nats} {
		if v != "" {
			n++
		}
	}
	switch {
	case n == 0:
		return usageErrorf(fs, "choose the store: -db URL (SQL), -redis URL or -nats URL (NATS KV)")
	case n > 1:
		return usageErrorf(fs, "-db, -redis and -nats exclude each other: give the one store to read")
	case *f.db != "" && !validDBURL(*f.db):
		return usageErrorf(fs, "-db: %v: got %q", errBadDBURL, *f.db)
	case *f.redis != "":
		if _, err := redis.ParseURL(*f.redis); err != nil {
			return usageErrorf(fs, "-redis: %v", err)
		}
	}
	return nil
}

// open connects to the chosen store without creating anything.
func (f *storeFlags) open(ctx context.Context) (recordSource, error) {
	switch {
	case *f.db != "":
		return openSQLSource(ctx, *f.db, *f.table)
	case *f.redis != "":
		return openRedisSource(ctx, *f.redis, *f.prefix)
	default:
		return openKVSource(ctx, *f.nats, *f.bucket)
	}
}

// sqlSource reads a dedupe/sqlstore table.
type sqlSource struct {
	db         *sql.DB
	store      *sqlstore.Store
	url, table string
}

func openSQLSource(ctx context.Context, dbURL, table string) (*sqlSource, error) {
	db, err := openDB(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	if err := requireTable(ctx, db, dbURL, "dedupe", table, "sqlstore.New (a consumer or API with a SQL dedupe store)"); err != nil {
		_ = db.Close()
		return nil, err
	}
	store, err := sqlstore.New(ctx, db, sqlstore.Config{Table: table})
	if err != nil {
		_ = db.Close()
		return nil, err
	}
	return &sqlSource{db: db, store: store, url: dbURL, table: table}, nil
}

func (s *sqlSource) describe() string {
	return fmt.Sprintf("the SQL table %s in %s", s.table, redactURL(s.url))
}

func (s *sqlSource) get(ctx context.Context, key string) (*dedupe.Record, error) {
	r, err := s.store.Get(ctx, key)
	if errors.Is(err, sqlstore.ErrNotFound) {
		return nil, notFound{err}
	}
	return r, err
}

func (s *sqlSource) scan(ctx context.Context, prefix string, fn func(*dedupe.Record, string) error) error {
	return s.store.Scan(ctx, prefix, func(r *dedupe.Record) error { return fn(r, "") })
}

func (s *sqlSource) close() { _ = s.db.Close() }

// redisSource reads a dedupe/redisstore prefix.
type redisSource struct {
	client      *redis.Client
	store       *redisstore.Store
	url, prefix string
}

func openRedisSource(ctx context.Context, raw, prefix string) (*redisSource, error) {
	opts, err := redis.ParseURL(raw)
	if err != nil {
		return nil, fmt.Errorf("-redis: %w", err)
	}
	opts.DialTimeout = connectTimeout
	opts.MaxRetries = -1
	c := redis.NewClient(opts)
	pctx, cancel := context.WithTimeout(ctx, pingTimeout)
	defer cancel()
	if err := c.Ping(pctx).Err(); err != nil {
		_ = c.Close()
		return nil, fmt.Errorf("connect to redis at %s (-redis): %w", redactURL(raw), err)
	}
	return &redisSource{client: c, store: redisstore.New(c, redisstore.Config{Prefix: prefix}), url: raw, prefix: prefix}, nil
}

func (s *redisSource) describe() string {
	return fmt.Sprintf("Redis at %s, key prefix %q", redactURL(s.url), s.prefix)
}

func (s *redisSource) get(ctx context.Context, key string) (*dedupe.Record, error) {
	r, err := s.store.Get(ctx, key)
	if errors.Is(err, redisstore.ErrNotFound) {
		return nil, notFound{err}
	}
	return r, err
}

func (s *redisSource) scan(ctx context.Context, prefix string, fn func(*dedupe.Record, string) error) error {
	return s.store.Scan(ctx, prefix, func(r *dedupe.Record) error { return fn(r, "") })
}

func (s *redisSource) close() { _ = s.client.Close() }

// kvSource reads a dedupe/natskv bucket.
type kvSource struct {
	nc          *nats.Conn
	store       *natskv.Store
	url, bucket string
}

// errNoBucket is returned when the -bucket does not exist.
var errNoBucket = errors.New("KV bucket not found")

func openKVSource(ctx context.Context, url, bucket string) (*kvSource, error) {
	nc, js, err := connectNATS(url)
	if err != nil {
		return nil, err
	}
	// natskv.New creates a missing bucket: look first.
	if _, err := js.KeyValue(ctx, bucket); errors.Is(err, jetstream.ErrBucketNotFound) {
		nc.Close()
		return nil, fmt.Errorf("%w: no bucket %q on the NATS server at %s; name the store's bucket with -bucket NAME "+
			"(natskv.Config.Bucket), or another server with -nats URL", errNoBucket, bucket, nc.ConnectedUrlRedacted())
	} else if err != nil {
		nc.Close()
		return nil, fmt.Errorf("bucket %q: %w", bucket, err)
	}
	store, err := natskv.New(ctx, js, natskv.Config{Bucket: bucket})
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &kvSource{nc: nc, store: store, url: url, bucket: bucket}, nil
}

func (s *kvSource) describe() string {
	return fmt.Sprintf("the NATS KV bucket %s at %s", s.bucket, redactURL(s.url))
}

func (s *kvSource) get(ctx context.Context, key string) (*dedupe.Record, error) {
	r, err := s.store.Get(ctx, key)
	if errors.Is(err, natskv.ErrNotFound) {
		return nil, notFound{err}
	}
	return r, err
}

func (s *kvSource) scan(ctx context.Context, prefix string, fn func(*dedupe.Record, string) error) error {
	return s.store.List(ctx, prefix, fn)
}

func (s *kvSource) close() { s.nc.Close() }
