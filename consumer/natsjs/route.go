package natsjs

import (
	"fmt"
	"strings"

	"github.com/idemq/idemq/consumer"
)

// Placeholders of a dead-letter subject template (DeadLetterConfig.Subject),
// filled per dead letter.
const (
	// PlaceholderStream is replaced by the source stream's name in lower
	// case: "dlq.{stream}" routes stream PAYMENTS to "dlq.payments".
	PlaceholderStream = "{stream}"
	// PlaceholderReason is replaced by the dead letter's reason:
	// "permanent", "exhausted", "conflict" or "invalid".
	PlaceholderReason = "{reason}"
	// PlaceholderSubject is replaced by the original subject, all its
	// tokens; it may only be the last token of a template.
	PlaceholderSubject = "{subject}"
)

// reasons are every dead-letter reason, for checking a template at start.
var reasons = []consumer.Reason{consumer.ReasonPermanent, consumer.ReasonExhausted, consumer.ReasonConflict, consumer.ReasonInvalid}

// route is a parsed dead-letter subject template.
type route struct {
	template string
	dynamic  bool // has a placeholder
}

// parseRoute validates a dead-letter subject template: tokens that are
// literals or exactly one placeholder, no wildcards, {subject} only last.
func parseRoute(template string) (route, error) {
	if template == "" {
		return route{}, fmt.Errorf("%w: empty dead-letter subject", ErrInvalidConfig)
	}
	toks := strings.Split(template, ".")
	r := route{template: template}
	for i, t := range toks {
		switch {
		case t == "":
			return route{}, fmt.Errorf("%w: dead-letter subject %q has an empty token", ErrInvalidConfig, template)
		case t == "*" || t == ">" || strings.ContainsAny(t, " \t"):
			return route{}, fmt.Errorf("%w: dead-letter subject %q must not hold wildcards or spaces", ErrInvalidConfig, template)
		case t == PlaceholderSubject && i != len(toks)-1:
			return route{}, fmt.Errorf("%w: dead-letter subject %q: %s may only be the last token", ErrInvalidConfig, template, PlaceholderSubject)
		case t == PlaceholderStream || t == PlaceholderReason || t == PlaceholderSubject:
			r.dynamic = true
		case strings.ContainsAny(t, "{}"):
			return route{}, fmt.Errorf("%w: dead-letter subject %q: unknown placeholder in %q (use %s, %s or %s as whole tokens)",
				ErrInvalidConfig, template, t, PlaceholderStream, PlaceholderReason, PlaceholderSubject)
		}
	}
	return r, nil
}

// subject returns the dead-letter subject of a letter from stream with
// reason and original subject.
func (r route) subject(stream string, reason consumer.Reason, original string) string {
	if !r.dynamic {
		return r.template
	}
	s := strings.ReplaceAll(r.template, PlaceholderStream, strings.ToLower(stream))
	s = strings.ReplaceAll(s, PlaceholderReason, reason.String())
	return strings.ReplaceAll(s, PlaceholderSubject, original)
}

// patterns returns, for the start-up capture checks, the subjects the
// template can produce for stream: one per reason, with {subject} as ">".
func (r route) patterns(stream string) []string {
	if !r.dynamic {
		return []string{r.template}
	}
	var out []string
	for _, reason := range reasons {
		p := r.subject(stream, reason, ">")
		if len(out) == 0 || out[len(out)-1] != p {
			out = append(out, p)
		}
	}
	return out
}

// streamSubjects is the default subject list of a dead-letter stream for
// the template: the literal tokens before the first placeholder, then ">"
// ("dlq.>" for "dlq.{stream}.{reason}" and for "dlq.payments"); a
// one-token literal template is its own subject.
func (r route) streamSubjects() []string {
	toks := strings.Split(r.template, ".")
	n := len(toks) - 1 // a literal subject: its parent
	for i, t := range toks {
		if strings.HasPrefix(t, "{") {
			n = i
			break
		}
	}
	if n == 0 {
		if !r.dynamic {
			return []string{r.template}
		}
		return []string{">"}
	}
	return []string{strings.Join(toks[:n], ".") + ".>"}
}

// subjectCovers reports whether every subject matched by pattern b is
// matched by pattern a (both may hold '*' and '>').
func subjectCovers(a, b string) bool {
	at, bt := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; ; i++ {
		switch {
		case i < len(at) && at[i] == ">":
			return len(bt) > i
		case i == len(at) || i == len(bt):
			return len(at) == len(bt)
		case bt[i] == ">":
			return false // b matches more tokens than a can
		case at[i] == "*":
		case at[i] != bt[i]:
			return false
		}
	}
}

// coveredBy returns the first pattern of subjects that covers p, or "".
func coveredBy(subjects []string, p string) string {
	for _, s := range subjects {
		if subjectCovers(s, p) {
			return s
		}
	}
	return ""
}
