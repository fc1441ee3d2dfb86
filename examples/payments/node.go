package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/outbox"
)

// node is what the api and the worker both stand on: the database with its
// dedupe store and outbox, a NATS connection with the streams in place, and
// the outbox relay that publishes committed rows.
type node struct {
	db    *database
	nc    *nats.Conn
	js    jetstream.JetStream
	store *sqlstore.Store
	ob    *outbox.Outbox
	relay *outbox.Relay
	log   *slog.Logger
	nm    names
	tel   *telemetry // -metrics; nil without
}

// openNode connects to the database and NATS as name, creates the streams
// when they are missing, and prepares the dedupe store, the outbox and its
// relay, all under the names nm, observed by tel (-metrics; nil for none).
// On error everything it opened is closed again.
func openNode(ctx context.Context, name, dbURL, natsURL string, nm names, log *slog.Logger, tel *telemetry) (_ *node, err error) {
	// n is not the named result: "return nil, err" must not clear what the
	// deferred close needs.
	n := &node{log: log, nm: nm, tel: tel}
	defer func() {
		if err != nil {
			n.close()
		}
	}()
	if n.db, err = openDB(ctx, dbURL); err != nil {
		return nil, err
	}
	n.db.nm = nm
	if n.nc, err = nats.Connect(natsURL, nats.Name(name), nats.MaxReconnects(-1)); err != nil {
		return nil, fmt.Errorf("connect to nats at %s: %w", natsURL, err)
	}
	if n.js, err = jetstream.New(n.nc); err != nil {
		return nil, err
	}
	if err = ensureStreams(ctx, n.js, nm); err != nil {
		return nil, err
	}
	if n.store, err = sqlstore.New(ctx, n.db.DB, sqlstore.Config{Table: nm.table(sqlstore.DefaultTable)}); err != nil {
		return nil, fmt.Errorf("dedupe store: %w", err)
	}
	if n.ob, err = outbox.New(ctx, n.db.DB, outbox.Config{Table: nm.table(outbox.DefaultTable)}); err != nil {
		return nil, fmt.Errorf("outbox: %w", err)
	}
	relayCfg := outbox.RelayConfig{Table: nm.table(outbox.DefaultTable), Streams: []string{nm.paymentsStream()}, Logger: log, Observer: tel.relay()}
	if n.relay, err = outbox.NewRelay(n.db.DB, outbox.JetStream(n.js), relayCfg); err != nil {
		return nil, fmt.Errorf("outbox relay: %w", err)
	}
	if err = tel.observeOutbox(n.db.DB, n.ob); err != nil {
		return nil, err
	}
	return n, nil
}

// close stops the metrics server and closes the NATS connection and the
// database.
func (n *node) close() {
	n.tel.close()
	if n.nc != nil {
		n.nc.Close()
	}
	if n.db != nil {
		_ = n.db.Close()
	}
}
