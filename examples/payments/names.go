package main

import (
	"regexp"
	"strings"
)

// names are the stream, subject, consumer and table names of one
// deployment of the example. The zero value is the contract's names
// exactly (docs/ARCHITECTURE.md); a prefix, for a server or database shared
// with others, is put in front of each: PREFIX_PAYMENTS, PREFIX.payments.>,
// PREFIX_payments-worker, PREFIX_accounts, and so on. Message ids, headers
// and bodies do not change.
type names struct {
	prefix string
}

// prefixRE is what -prefix accepts: it must be valid in stream, consumer,
// subject and SQL table names alike.
var prefixRE = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9_]{0,31}$`)

// namesFor returns the names for prefix ("" for the contract's), or an
// error saying what -prefix accepts.
func namesFor(prefix string) (names, error) {
	if err := prefixError(prefix); err != nil {
		return names{}, checkFlag("-prefix", err)
	}
	return names{prefix: prefix}, nil
}

// name prefixes a stream, consumer or table name: PREFIX_name.
func (n names) name(s string) string {
	if n.prefix == "" {
		return s
	}
	return n.prefix + "_" + s
}

// subject prefixes a subject or subject filter: PREFIX.subject.
func (n names) subject(s string) string {
	if n.prefix == "" {
		return s
	}
	return n.prefix + "." + s
}

func (n names) paymentsStream() string   { return n.name(streamPayments) }
func (n names) paymentsSubjects() string { return n.subject(subjectsPayments) }
func (n names) requested() string        { return n.subject(subjRequested) }
func (n names) completed() string        { return n.subject(subjCompleted) }
func (n names) rejected() string         { return n.subject(subjRejected) }
func (n names) dlqStream() string        { return n.name(streamDLQ) }
func (n names) dlqSubjects() string      { return n.subject(subjectsDLQ) }
func (n names) dlqSubject() string       { return n.subject(subjDLQ) }
func (n names) durable() string          { return n.name(durableWorker) }

// table prefixes a table or index name.
func (n names) table(s string) string { return n.name(s) }

// exampleTables are the tables (and the index) the example's own queries
// name; database.q prefixes them.
var exampleTables = regexp.MustCompile(`\b(accounts|transfers|transfers_idempotency_key)\b`)

// tables rewrites the example's table names in query for the prefix.
func (n names) tables(query string) string {
	if n.prefix == "" {
		return query
	}
	return exampleTables.ReplaceAllStringFunc(query, n.name)
}

// describe lists the names for the demo's banner.
func (n names) describe() string {
	return strings.Join([]string{
		"streams " + n.paymentsStream() + " (" + n.paymentsSubjects() + ") and " + n.dlqStream() + " (" + n.dlqSubjects() + ")",
		"consumer " + n.durable(),
		"tables " + n.table("accounts") + ", " + n.table("transfers") + ", " + n.table("idemq_dedupe") + ", " + n.table("idemq_outbox"),
	}, "; ")
}
