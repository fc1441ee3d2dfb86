package outbox

import "context"

// SetAfterPublish installs a failpoint that runs after a round's PubAcks and
// before its rows are marked sent; an error aborts the round as a crash
// would (the claim transaction rolls back) and ends Run with that error.
func SetAfterPublish(r *Relay, f func(ids []string) error) { r.afterPublish = f }

// Round runs one claim-publish-mark round.
func Round(ctx context.Context, r *Relay) (claimed, done int, err error) { return r.round(ctx) }

// ErrHook is the error Run wraps around a failpoint's error.
var ErrHook = errHook
