package main

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDecodePayment(t *testing.T) {
	valid := `{"payment_id":"p1","from":"acc-1","to":"acc-2","amount":100,"currency":"GBP","timestamp":1728468810}`
	p, err := decodePayment([]byte(valid))
	if err != nil {
		t.Fatalf("valid payment: %v", err)
	}
	want := payment{PaymentID: "p1", From: "acc-1", To: "acc-2", Amount: 100, Currency: "GBP", Timestamp: 1728468810}
	if p != want {
		t.Fatalf("decoded %+v, want %+v", p, want)
	}
	for _, m := range malformedBodies {
		if m.noKey {
			continue // a valid body: it is invalid for want of a key
		}
		if _, err := decodePayment([]byte(m.body)); !errors.Is(err, ErrInvalidPayment) {
			t.Errorf("decodePayment(%q) = %v, want ErrInvalidPayment", m.body, err)
		}
	}
	for _, body := range []string{
		`{"payment_id":"","from":"a","to":"b","amount":1,"currency":"GBP","timestamp":1}`,
		`{"payment_id":"p","from":"a","to":"b","amount":0,"currency":"GBP","timestamp":1}`,
		`{"payment_id":"p","from":"a","to":"b","amount":1,"currency":"GBP","timestamp":null}`,
		`{"payment_id":"p","from":"a","to":"b","amount":1,"currency":"GBP","timestamp":1} {}`,
		`{"payment_id":"p","from":"a","to":"b","amount":1,"currency":"GBP","timestamp":-1}`,
	} {
		if _, err := decodePayment([]byte(body)); !errors.Is(err, ErrInvalidPayment) {
			t.Errorf("decodePayment(%q) = %v, want ErrInvalidPayment", body, err)
		}
	}
}

func TestDecodeRequest(t *testing.T) {
	p, err := decodeRequest([]byte(`{"from":"acc-1","to":"acc-2","amount":100,"currency":"GBP"}`))
	if err != nil {
		t.Fatalf("request without payment_id and timestamp: %v", err)
	}
	if p.PaymentID != "" || p.Timestamp != 0 {
		t.Fatalf("decoded %+v, want empty payment_id and timestamp", p)
	}
	if _, err := decodeRequest([]byte(`{"from":"acc-1","amount":100,"currency":"GBP"}`)); !errors.Is(err, ErrInvalidPayment) {
		t.Fatalf("request without to: %v, want ErrInvalidPayment", err)
	}
}

func TestPaymentIDForIsStable(t *testing.T) {
	first, again := paymentIDFor("456"), paymentIDFor("456")
	if first != again {
		t.Fatal("paymentIDFor is not a function of the key")
	}
	if paymentIDFor("456") == paymentIDFor("457") {
		t.Fatal("paymentIDFor gives two keys the same id")
	}
}

func TestQueryRebind(t *testing.T) {
	pg := &database{dialect: postgres}
	if got := pg.q(`UPDATE a SET b = b - ? WHERE id = ?`); got != `UPDATE a SET b = b - $1 WHERE id = $2` {
		t.Fatalf("postgres rebind: %s", got)
	}
	lite := &database{dialect: sqlite}
	if got := lite.q(`WHERE id = ?`); got != `WHERE id = ?` {
		t.Fatalf("sqlite rebind: %s", got)
	}
}

func TestPounds(t *testing.T) {
	for in, want := range map[int64]string{0: "0.00", 5: "0.05", 50000: "500.00", -123: "-1.23"} {
		if got := pounds(in); got != want {
			t.Errorf("pounds(%d) = %q, want %q", in, got, want)
		}
	}
}

func TestOpenNodeFailsCleanlyWhenNATSIsDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := openNode(ctx, "test", "sqlite:"+filepath.Join(t.TempDir(), "db.sqlite"), "nats://"+addr, names{}, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	if err == nil {
		n.close()
		t.Fatal("openNode succeeded with NATS down")
	}
	if n != nil {
		t.Fatalf("openNode returned a node with its error %v", err)
	}
	if !strings.Contains(err.Error(), addr) {
		t.Errorf("error %q does not name the NATS address", err)
	}
}
