package natsjs

import (
	"errors"
	"fmt"
	"testing"

	"github.com/idemq/idemq/consumer"
)

func TestParseRoute(t *testing.T) {
	for _, tc := range []struct {
		template string
		ok       bool
		subject  string // for stream ORDERS, reason conflict, subject orders.created
		stream   string // default stream subjects
		patterns string
	}{
		{"dlq.orders", true, "dlq.orders", "[dlq.>]", "[dlq.orders]"},
		{"dead", true, "dead", "[dead]", "[dead]"},
		{"dlq.{stream}", true, "dlq.orders", "[dlq.>]", "[dlq.orders]"},
		{"dlq.{stream}.{reason}", true, "dlq.orders.conflict", "[dlq.>]",
			"[dlq.orders.permanent dlq.orders.exhausted dlq.orders.conflict dlq.orders.invalid]"},
		{"dlq.{reason}.{subject}", true, "dlq.conflict.orders.created", "[dlq.>]",
			"[dlq.permanent.> dlq.exhausted.> dlq.conflict.> dlq.invalid.>]"},
		{"{stream}.dead", true, "orders.dead", "[>]", "[orders.dead]"},
		{"", false, "", "", ""},
		{"dlq..x", false, "", "", ""},
		{"dlq.*", false, "", "", ""},
		{"dlq.>", false, "", "", ""},
		{"dlq.{subject}.x", false, "", "", ""},
		{"dlq.{nope}", false, "", "", ""},
		{"dlq.x{stream}", false, "", "", ""},
	} {
		r, err := parseRoute(tc.template)
		if (err == nil) != tc.ok {
			t.Errorf("parseRoute(%q) = %v, want ok %v", tc.template, err, tc.ok)
			continue
		}
		if !tc.ok {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("parseRoute(%q) = %v, want ErrInvalidConfig", tc.template, err)
			}
			continue
		}
		if got := r.subject("ORDERS", consumer.ReasonConflict, "orders.created"); got != tc.subject {
			t.Errorf("%q: subject %q, want %q", tc.template, got, tc.subject)
		}
		if got := fmt.Sprint(r.streamSubjects()); got != tc.stream {
			t.Errorf("%q: stream subjects %s, want %s", tc.template, got, tc.stream)
		}
		if got := fmt.Sprint(r.patterns("ORDERS")); got != tc.patterns {
			t.Errorf("%q: patterns %s, want %s", tc.template, got, tc.patterns)
		}
	}
}

func TestSubjectCovers(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want bool
	}{
		{"dlq.>", "dlq.orders", true},
		{"dlq.>", "dlq.orders.>", true},
		{"dlq.>", "dlq", false},
		{"dlq.*", "dlq.orders", true},
		{"dlq.*", "dlq.orders.>", false},
		{"dlq.*.x", "dlq.*.x", true},
		{"dlq.a.x", "dlq.*.x", false},
		{"dlq.orders", "dlq.orders", true},
		{"dlq.orders", "dlq.other", false},
		{">", "anything.at.all", true},
	} {
		if got := subjectCovers(tc.a, tc.b); got != tc.want {
			t.Errorf("subjectCovers(%q, %q) = %v, want %v", tc.a, tc.b, got, tc.want)
		}
	}
}
