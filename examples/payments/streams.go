package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Names fixed by the contract in docs/ARCHITECTURE.md.
const (
	streamPayments   = "PAYMENTS"
	subjectsPayments = "payments.>"
	subjRequested    = "payments.requested"
	subjCompleted    = "payments.completed"
	subjRejected     = "payments.rejected"
	streamDLQ        = "DLQ"
	subjectsDLQ      = "dlq.>"
	subjDLQ          = "dlq.payments"
	headerKey        = "Idempotency-Key"
	durableWorker    = "payments-worker"
)

// duplicateWindow is the streams' Nats-Msg-Id dedupe window. An outbox relay
// that republishes a row after a crash does so within seconds, well inside it.
const duplicateWindow = 10 * time.Minute

// ensureStreams creates the PAYMENTS and DLQ streams (named by nm) when they
// are missing and leaves existing ones as they are (an operator may have
// tuned them).
func ensureStreams(ctx context.Context, js jetstream.JetStream, nm names) error {
	for _, cfg := range []jetstream.StreamConfig{
		{
			Name:        nm.paymentsStream(),
			Description: "idemq examples/payments: payment requests and their outcomes",
			Subjects:    []string{nm.paymentsSubjects()},
			Storage:     jetstream.FileStorage,
			Duplicates:  duplicateWindow,
		},
		{
			Name:        nm.dlqStream(),
			Description: "idemq dead letters",
			Subjects:    []string{nm.dlqSubjects()},
			Storage:     jetstream.FileStorage,
			Duplicates:  duplicateWindow,
		},
	} {
		if _, err := js.Stream(ctx, cfg.Name); err == nil {
			continue
		} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("look up stream %s: %w", cfg.Name, err)
		}
		if _, err := js.CreateStream(ctx, cfg); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return fmt.Errorf("create stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}
