package natsjs

import (
	"strconv"
	"strings"
	"testing"
)

// FuzzAckFields checks that ackFields never panics, that it reads back the
// fields of any ack subject built from valid metadata (both server
// layouts), and that whatever it accepts is such a subject: "$JS.ACK." and 9
// or at least 11 tokens, with a non-empty stream and consumer and decimal
// delivery count and stream sequence at the positions of the layout.
func FuzzAckFields(f *testing.F) {
	f.Add("$JS.ACK.ORDERS.worker.3.1042.7.1728468810000000000.5", "ORDERS", "worker", uint64(3), uint64(1042), false)
	f.Add("$JS.ACK._.ACCHASH.ORDERS.worker.1.9.9.1728468810000000000.0", "S", "c", uint64(1), uint64(1), true)
	f.Add("$JS.ACK.hub.ACCHASH.ORDERS.worker.2.18446744073709551615.9.1728468810000000000.0.rAnD0m", "S", "c", uint64(0), uint64(18446744073709551615), true)
	f.Add("$JS.ACK.ORDERS.worker.-3.1042.7.1728468810000000000.5", "", "", uint64(0), uint64(0), false)
	f.Add("$JS.ACK.ORDERS.worker.+3.1042.7.1728468810000000000.5", "", "", uint64(0), uint64(0), false)
	f.Add("$JS.ACK.ORDERS.worker.3.18446744073709551616.7.1728468810000000000.5", "", "", uint64(0), uint64(0), false)
	f.Add("$JS.ACK.ORDERS..3.1042.7.1728468810000000000.5", "", "", uint64(0), uint64(0), false)
	f.Add("$JS.ACK.........", "", "", uint64(0), uint64(0), false)
	f.Add("$JS.ACK..........", "", "", uint64(0), uint64(0), false)
	f.Add("$JS.ACK.", "", "", uint64(0), uint64(0), false)
	f.Add("", "", "", uint64(0), uint64(0), false)
	f.Fuzz(func(t *testing.T, reply, stream, cons string, delivered, seq uint64, v2 bool) {
		got, d, q, ok := ackFields(reply)
		if ok != refOK(reply) {
			t.Fatalf("ackFields(%q) ok = %v, reference says %v", reply, ok, !ok)
		}
		if ok {
			tok := strings.Split(reply, ".")
			first := 2
			if len(tok) != 9 {
				first = 4
			}
			if got != tok[first] || strconv.FormatUint(d, 10) != tok[first+2] || strconv.FormatUint(q, 10) != tok[first+3] {
				t.Fatalf("ackFields(%q) = %q, %d, %d", reply, got, d, q)
			}
		} else if got != "" || d != 0 || q != 0 {
			t.Fatalf("ackFields(%q) = %q, %d, %d, false; want zero values", reply, got, d, q)
		}

		if !validToken(stream) || !validToken(cons) {
			return
		}
		var sb strings.Builder
		sb.WriteString("$JS.ACK.")
		if v2 {
			sb.WriteString("_.ACCHASH.")
		}
		sb.WriteString(stream + "." + cons + "." + strconv.FormatUint(delivered, 10) + "." +
			strconv.FormatUint(seq, 10) + ".7.1728468810000000000.0")
		if v2 {
			sb.WriteString(".rAnD0m")
		}
		built := sb.String()
		got, d, q, ok = ackFields(built)
		if !ok || got != stream || d != delivered || q != seq {
			t.Fatalf("ackFields(%q) = %q, %d, %d, %v; want %q, %d, %d, true", built, got, d, q, ok, stream, delivered, seq)
		}
	})
}

// refOK is a plain reimplementation of the subjects ackFields accepts.
func refOK(reply string) bool {
	tok := strings.Split(reply, ".")
	if len(tok) < 9 || len(tok) == 10 || tok[0] != "$JS" || tok[1] != "ACK" {
		return false
	}
	first := 2
	if len(tok) != 9 {
		first = 4
	}
	_, err1 := strconv.ParseUint(tok[first+2], 10, 64)
	_, err2 := strconv.ParseUint(tok[first+3], 10, 64)
	return tok[first] != "" && tok[first+1] != "" && err1 == nil && err2 == nil
}

// validToken reports whether s can be a stream or consumer name in a
// subject token.
func validToken(s string) bool {
	return s != "" && !strings.ContainsAny(s, ". \t\r\n*>")
}
