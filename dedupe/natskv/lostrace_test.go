package natskv

import (
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// TestLostRace: a compare-and-set that lost is recognised in every form the
// server and nats.go give it — replicated buckets answer 10164 where
// single-replica ones answer 10071 — and nothing else is.
func TestLostRace(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"key exists", fmt.Errorf("create: %w", jetstream.ErrKeyExists), true},
		{"revision mismatch", fmt.Errorf("update: %w", jetstream.ErrKeyRevisionMismatch), true},
		{"wrong last sequence (R1)", &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequence, Description: "wrong last sequence: 7"}, true},
		{"wrong last sequence (R3)", fmt.Errorf("claim: %w", &jetstream.APIError{Code: 400, ErrorCode: jetstream.JSErrCodeStreamWrongLastSequenceConstant, Description: "wrong last sequence"}), true},
		{"another API error", &jetstream.APIError{Code: 503, ErrorCode: jetstream.JSErrCodeJetStreamNotEnabled}, false},
		{"timeout", errors.New("context deadline exceeded"), false},
	} {
		if got := lostRace(tc.err); got != tc.want {
			t.Errorf("%s: lostRace(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}
