package idemqwm_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"

	"github.com/ThreeDotsLabs/watermill/message"

	idemqwm "github.com/idemq/idemq/consumer/watermill"
	"github.com/idemq/idemq/dedupe"
	"github.com/idemq/idemq/dedupe/memstore"
	"github.com/idemq/idemq/dedupe/natskv"
	"github.com/idemq/idemq/dedupe/redisstore"
	"github.com/idemq/idemq/dedupe/sqlstore"
	"github.com/idemq/idemq/integration/harness"
)

// Every idemq store works under the adapter: a handler that fails once is
// applied once, and the publisher's retry is acked from the record.
func TestEveryStore(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		store func(t *testing.T) dedupe.Store
	}{
		{"memstore", func(*testing.T) dedupe.Store { return memstore.New(memstore.Config{}) }},
		{"redisstore", func(t *testing.T) dedupe.Store {
			rd := harness.Redis(t)
			return redisstore.New(rd.Client, redisstore.Config{Prefix: rd.Prefix})
		}},
		{"sqlstore-postgres", func(t *testing.T) dedupe.Store { return newSQLStore(t, harness.Postgres(t).DB) }},
		{"sqlstore-sqlite", func(t *testing.T) dedupe.Store { return newSQLStore(t, openSQLite(t)) }},
		{"natskv", func(t *testing.T) dedupe.Store {
			env := harness.NATS(t)
			s, err := natskv.New(context.Background(), env.JS, natskv.Config{Bucket: env.Name("dedupe")})
			if err != nil {
				t.Fatal(err)
			}
			return s
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := gochannelBus(t)
			a, err := idemqwm.New(testConfig(b, tc.store(t)))
			if err != nil {
				t.Fatal(err)
			}
			c := newCounter()
			runRouter(t, b.sub, b.w.Topic, "orders", a.NoPublishHandler(func(m *message.Message) error {
				if c.run("k") == 1 {
					return errors.New("bank timed out")
				}
				c.apply("k")
				return nil
			}))
			publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`)
			publishKey(t, b.pub, b.w.Topic, "pay-1", `{"amount":100}`)
			if runs, applied := c.get("k"); runs != 2 || applied != 1 {
				t.Fatalf("handler ran %d, applied %d; want 2 and 1", runs, applied)
			}
			if s := a.Stats(); s.Duplicates != 1 {
				t.Fatalf("stats %+v: want the publisher's retry acked as a duplicate", s)
			}
		})
	}
}

func newSQLStore(t *testing.T, db *sql.DB) dedupe.Store {
	t.Helper()
	s, err := sqlstore.New(context.Background(), db, sqlstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}
