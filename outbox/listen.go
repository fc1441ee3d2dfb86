package outbox

import (
	"context"
	"database/sql/driver"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// pgxConn is the native connection the stdlib driver exposes.
type pgxConn = pgx.Conn

// errBadConn makes database/sql discard a connection after Raw.
var errBadConn = driver.ErrBadConn

func pgxConnect(ctx context.Context, url string) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("outbox: connect for LISTEN: %w", err)
	}
	return conn, nil
}

// waitNotifications LISTENs on channel, calls wake once (rows committed
// while no one listened), then on every notification until an error.
func waitNotifications(ctx context.Context, conn *pgx.Conn, channel string, wake func(), connected func()) error {
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{channel}.Sanitize()); err != nil {
		return fmt.Errorf("outbox: LISTEN %s: %w", channel, err)
	}
	connected()
	wake()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return fmt.Errorf("outbox: wait for notification: %w", err)
		}
		wake()
	}
}
