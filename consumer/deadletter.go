package consumer

import (
	"strings"
	"unicode/utf8"
)

// Dead-letter headers: a wire format other tools (cmd/idemq, dashboards)
// read, the same for every transport. The names are fixed.
const (
	// HeaderReason carries Reason.String(): "permanent",
	// "exhausted", "conflict" or "invalid".
	HeaderReason = "Idemq-Reason"
	// HeaderError carries the error text, newlines replaced by "; ", capped
	// at MaxErrorLen bytes.
	HeaderError = "Idemq-Error"
	// HeaderOriginalSubject is the subject the message was published to.
	HeaderOriginalSubject = "Idemq-Original-Subject"
	// HeaderOriginalStream is the stream the message was stored in.
	HeaderOriginalStream = "Idemq-Original-Stream"
	// HeaderOriginalSequence is its stream sequence, in decimal.
	HeaderOriginalSequence = "Idemq-Original-Sequence"
	// HeaderConsumer is the durable consumer that gave up on it.
	HeaderConsumer = "Idemq-Consumer"
	// HeaderAttempts is how many times the handler ran for the message, in
	// decimal: with a dedupe guard the runs counted in the dedupe record;
	// without one, and for messages the server stopped redelivering
	// (MAX_DELIVERIES), the broker's delivery count.
	HeaderAttempts = "Idemq-Attempts"
	// HeaderFailedAt is when it was dead-lettered, RFC 3339 in UTC.
	HeaderFailedAt = "Idemq-Failed-At"
	// HeaderHost is the host name of the process that dead-lettered it.
	HeaderHost = "Idemq-Host"
	// HeaderOriginalMsgID keeps the original Nats-Msg-Id, which the dead
	// letter replaces with "<stream>:<sequence>"; absent when the original
	// had none. Replay tools restore it.
	HeaderOriginalMsgID = "Idemq-Original-Msg-Id"
)

// MaxErrorLen caps the Idemq-Error header: 1 KiB. Longer texts are cut at a
// UTF-8 boundary and end with "...".
const MaxErrorLen = 1024

// ErrorText renders err for the Idemq-Error header: line breaks (which a
// NATS header cannot hold) become "; ", and the text is capped at
// MaxErrorLen bytes at a UTF-8 boundary, ending with "..." when cut.
func ErrorText(err error) string {
	s := err.Error()
	s = strings.ReplaceAll(s, "\r\n", "; ")
	s = strings.NewReplacer("\n", "; ", "\r", "; ").Replace(s)
	if len(s) <= MaxErrorLen {
		return s
	}
	cut := MaxErrorLen - len("...")
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
