package natsjs

import "testing"

func TestAckFields(t *testing.T) {
	tests := []struct {
		reply     string
		stream    string
		delivered uint64
		seq       uint64
		ok        bool
	}{
		{"$JS.ACK.ORDERS.worker.3.1042.7.1728468810000000000.5", "ORDERS", 3, 1042, true},
		{"$JS.ACK._.ACCHASH.ORDERS.worker.1.9.9.1728468810000000000.0", "ORDERS", 1, 9, true},
		{"$JS.ACK.hub.ACCHASH.ORDERS.worker.2.18446744073709551615.9.1728468810000000000.0.rAnD0m", "ORDERS", 2, 18446744073709551615, true},
		{"$JS.ACK.ORDERS.worker.x.1042.7.1728468810000000000.5", "", 0, 0, false},   // delivered not a number
		{"$JS.ACK.ORDERS.worker.3.1042.7.1728468810000000000", "", 0, 0, false},     // 8 tokens
		{"$JS.ACK._.H.ORDERS.worker.3.1042.7.1728468810000000000", "", 0, 0, false}, // 10 tokens
		{"$JS.NAK.ORDERS.worker.3.1042.7.1728468810000000000.5", "", 0, 0, false},   // not an ack subject
		{"$JS.ACK..worker.3.1042.7.1728468810000000000.5", "", 0, 0, false},         // empty stream
		{"", "", 0, 0, false},
		{"_INBOX.abc", "", 0, 0, false},
	}
	for _, tc := range tests {
		stream, delivered, seq, ok := ackFields(tc.reply)
		if stream != tc.stream || delivered != tc.delivered || seq != tc.seq || ok != tc.ok {
			t.Errorf("ackFields(%q) = %q, %d, %d, %v; want %q, %d, %d, %v",
				tc.reply, stream, delivered, seq, ok, tc.stream, tc.delivered, tc.seq, tc.ok)
		}
	}
}

func BenchmarkAckFields(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, _, _, ok := ackFields("$JS.ACK._.ACCHASH.ORDERS.worker.1.9.9.1728468810000000000.0.tok"); !ok {
			b.Fatal("not parsed")
		}
	}
}
