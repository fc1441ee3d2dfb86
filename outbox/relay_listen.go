package outbox

import (
	"context"
	"fmt"
	"time"
)

// listen keeps a LISTEN connection open and calls wake on every
// notification and after every (re)connect. It reconnects with backoff until
// ctx is done.
func (r *Relay) listen(ctx context.Context, wake func()) {
	failures := 0
	for {
		connected := false
		err := r.listenOnce(ctx, wake, func() { connected = true })
		if ctx.Err() != nil {
			return
		}
		if connected {
			failures = 0
		}
		failures++
		delay := r.o.Backoff.Delay(failures)
		r.log.Warn("LISTEN connection lost; polling until it is back", "err", err, "retry_in", delay)
		if !sleep(ctx, delay) {
			return
		}
	}
}

func signal(wake chan<- struct{}) {
	select {
	case wake <- struct{}{}:
	default:
	}
}

// listenOnce opens a connection, LISTENs and forwards notifications until
// the connection fails or ctx is done.
func (r *Relay) listenOnce(ctx context.Context, wake func(), connected func()) error {
	if r.o.ListenURL != "" {
		conn, err := pgxConnect(ctx, r.o.ListenURL)
		if err != nil {
			return err
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			_ = conn.Close(cctx)
		}()
		return waitNotifications(ctx, conn, r.o.Channel, wake, connected)
	}
	c, err := r.db.Conn(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	var inner error
	_ = c.Raw(func(dc any) error {
		pc, ok := dc.(interface{ Conn() *pgxConn })
		if !ok {
			inner = fmt.Errorf("outbox: LISTEN needs the pgx stdlib driver, got %T (set RelayConfig.ListenURL or NoListen)", dc)
			return nil
		}
		inner = waitNotifications(ctx, pc.Conn(), r.o.Channel, wake, connected)
		// The connection holds a LISTEN registration: never give it back to
		// the pool.
		return errBadConn
	})
	return inner
}
