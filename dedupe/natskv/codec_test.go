package natskv

import (
	"testing"

	"github.com/idemq/idemq/dedupe"
)

// TestDecodeEarlierVersions checks that values written before the fence
// (version 2) and before the attempt count (version 1) still decode, with
// those fields 0, so that a lease continues from the clock.
func TestDecodeEarlierVersions(t *testing.T) {
	// state done, no flags, lease 0, created 1 ns, expires 2 ns (zigzag
	// varints), then the version's own fields, token "T", fingerprint "F",
	// result "R".
	head := []byte{byte(dedupe.StateDone), 0, 0, 2, 4}
	tail := []byte{1, 'T', 1, 'F', 'R'}
	for _, tc := range []struct {
		name     string
		value    []byte
		attempts int
	}{
		{"version 1", append(append([]byte{codecV1}, head...), tail...), 0},
		{"version 2", append(append(append([]byte{codecV2}, head...), 3), tail...), 3},
	} {
		r, ch, err := decode("k", tc.value)
		if err != nil || ch != nil {
			t.Fatalf("%s: decode: %v (chunks %v)", tc.name, err, ch)
		}
		if r.State != dedupe.StateDone || r.Attempts != tc.attempts || r.Fence != 0 || r.Token != "T" || r.Fingerprint != "F" || string(r.Result) != "R" {
			t.Fatalf("%s: decoded %+v, want done, %d attempts, fence 0, token T, fingerprint F, result R", tc.name, r, tc.attempts)
		}
		if r.CreatedAt.UnixNano() != 1 || r.ExpiresAt.UnixNano() != 2 {
			t.Fatalf("%s: times %v %v", tc.name, r.CreatedAt, r.ExpiresAt)
		}
	}
}
