package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"regexp"
)

// ErrInvalidPayment is wrapped by every error decodePayment returns: the body
// is not a valid payment. The worker dead-letters such a message with reason
// "invalid"; the API answers 400.
var ErrInvalidPayment = errors.New("invalid payment")

// payment is the body of payments.requested, exactly as the contract in docs/ARCHITECTURE.md states it:
//
//	{"payment_id":"…","from":"acc-1","to":"acc-2","amount":100,"currency":"GBP","timestamp":1728468810}
//
// Amount is in minor units (pence for GBP); Timestamp is Unix seconds and is
// not part of the operation's fingerprint.
type payment struct {
	PaymentID string `json:"payment_id"`
	From      string `json:"from"`
	To        string `json:"to"`
	Amount    int64  `json:"amount"`
	Currency  string `json:"currency"`
	Timestamp int64  `json:"timestamp"`
}

// maxFieldLen bounds the length of the text fields of a payment, in bytes.
const maxFieldLen = 200

var currencyCode = regexp.MustCompile(`^[A-Z]{3}$`)

// decodePayment parses and validates a payments.requested body. Every field
// is required, unknown fields are refused, amount must be a positive integer,
// from and to must differ, currency is an ISO 4217-style code of three capital
// letters. Errors wrap ErrInvalidPayment.
func decodePayment(data []byte) (payment, error) {
	var p payment
	if err := strictDecode(data, &p, allFields); err != nil {
		return payment{}, err
	}
	if err := p.validate(true); err != nil {
		return payment{}, err
	}
	return p, nil
}

// allFields are the fields of a payments.requested body, all required.
var allFields = []string{"payment_id", "from", "to", "amount", "currency", "timestamp"}

// requestFields are the fields a PUT /payments body must have; payment_id and
// timestamp are optional there (the API fills them in).
var requestFields = []string{"from", "to", "amount", "currency"}

// decodeRequest parses and validates a PUT /payments body. It differs from
// decodePayment only in that payment_id and timestamp may be left out.
func decodeRequest(data []byte) (payment, error) {
	var p payment
	if err := strictDecode(data, &p, requestFields); err != nil {
		return payment{}, err
	}
	if err := p.validate(false); err != nil {
		return payment{}, err
	}
	return p, nil
}

// strictDecode decodes exactly one JSON object with only known fields into v
// and checks that the required fields are present and not null.
func strictDecode(data []byte, v *payment, required []string) error {
	var present map[string]json.RawMessage
	if err := json.Unmarshal(data, &present); err != nil {
		return fmt.Errorf("%w: body is not a JSON object: %v", ErrInvalidPayment, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrInvalidPayment, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: trailing data after the JSON object", ErrInvalidPayment)
	}
	for _, f := range required {
		if raw, ok := present[f]; !ok || string(raw) == "null" {
			return fmt.Errorf("%w: field %q is missing", ErrInvalidPayment, f)
		}
	}
	return nil
}

// validate checks the fields of p. requireID is false for the API, which
// derives a payment id from the idempotency key when the client sends none.
func (p payment) validate(requireID bool) error {
	switch {
	case requireID && p.PaymentID == "":
		return fmt.Errorf("%w: payment_id is empty", ErrInvalidPayment)
	case p.From == "" || p.To == "":
		return fmt.Errorf("%w: from and to are required", ErrInvalidPayment)
	case p.From == p.To:
		return fmt.Errorf("%w: from and to are the same account %q", ErrInvalidPayment, p.From)
	case p.Amount <= 0:
		return fmt.Errorf("%w: amount %d is not positive", ErrInvalidPayment, p.Amount)
	case !currencyCode.MatchString(p.Currency):
		return fmt.Errorf("%w: currency %q is not a three-letter code", ErrInvalidPayment, p.Currency)
	case p.Timestamp < 0:
		return fmt.Errorf("%w: timestamp %d is negative", ErrInvalidPayment, p.Timestamp)
	case len(p.PaymentID) > maxFieldLen || len(p.From) > maxFieldLen || len(p.To) > maxFieldLen:
		return fmt.Errorf("%w: a text field is longer than %d bytes", ErrInvalidPayment, maxFieldLen)
	}
	return nil
}

// paymentIDFor derives the payment id the API assigns when a request has no
// payment_id: a function of the idempotency key alone, so that a retry, or a
// second attempt after the API crashed mid-request, assigns the same id.
func paymentIDFor(key string) string {
	sum := sha256.Sum256([]byte("payments/payment-id\x00" + key))
	return "pay_" + hex.EncodeToString(sum[:10])
}
