// Command idemq is the operator tool for idemq: it inspects and replays the
// dead-letter queue, and inspects the transactional outbox and the SQL dedupe
// store.
//
// Usage:
//
//	idemq dlq list    [-nats URL] [-stream DLQ] [-subject S] [-reason R] [-limit N] [-json]
//	idemq dlq show    [-nats URL] [-stream DLQ] SEQ
//	idemq dlq replay  [-nats URL] [-stream DLQ] [-reason R] (-seq N | -all) [-rate 50] [-dry-run] [-delete] [-keep-msg-id]
//	idemq dlq purge   [-nats URL] [-stream DLQ] (-reason R | -all) -yes
//	idemq outbox stats  -db URL [-table idemq_outbox]
//	idemq outbox failed -db URL [-table idemq_outbox] [-limit N]
//	idemq outbox retry  -db URL [-table idemq_outbox] (-id ID ... | -all-failed)
//	idemq dedupe get    STORE [-namespace NS] [-max-key-len 200] [-json] KEY
//	idemq dedupe list   STORE [-namespace NS | -prefix P] [-state S] [-limit 50] [-json]
//	idemq dedupe count  STORE [-namespace NS | -prefix P] [-state S] [-json]
//	idemq console -nats URL [-stream DLQ ...] [-db URL] [-addr 127.0.0.1:8089] [-token T | -basic-auth U:P] [-show-bodies]
//
// where STORE is -db URL [-table idemq_dedupe] (dedupe/sqlstore), -redis URL
// [-redis-prefix idemq:] (dedupe/redisstore) or -nats URL [-bucket idemq_dedupe]
// (dedupe/natskv).
//
// Every command takes -h. The dlq commands connect to -nats URL (default
// nats://127.0.0.1:4222) and read -stream NAME (default DLQ); a stream the
// server does not have is an error that lists the streams it has and names
// both flags. -db is postgres://… or sqlite:PATH. The exit status
// is 0 on success, 1 on an error, 2 on a usage error (including purge
// without -yes). SIGINT and SIGTERM cancel the command's context: a replay
// stops at once, says how many it replayed and exits 1. A publish cut short
// may or may not have been stored; its dead letter is kept either way (it is
// deleted only after a PubAck), and running the replay again within the
// duplicate window does not store it twice.
//
// # Dead letters
//
// A dead letter is the original message plus the Idemq-* headers the
// consumer/natsjs dead-letter publisher writes (Idemq-Reason, Idemq-Error,
// Idemq-Original-Subject, -Stream, -Sequence, Idemq-Consumer,
// Idemq-Attempts, Idemq-Failed-At, Idemq-Host, Idemq-Original-Msg-Id). The
// dlq commands read the stream by sequence with JetStream message gets: no
// consumer is created and nothing is acked or consumed, so listing is safe
// while workers run. Scans stop at the stream's last sequence when the
// command starts.
//
// list prints one line per dead letter — DLQ sequence, reason, original
// subject, original stream:sequence, attempts, failed-at and the error cut
// to the terminal width — or one JSON object per line with -json. show prints
// every header and the body (indented JSON, text, or a hex dump).
//
// replay republishes each selected dead letter to its Idemq-Original-Subject
// with its body unchanged and its original headers minus the dead-letter
// headers and the DLQ's Nats-Msg-Id, adding
//
//	Idemq-Replayed-From: <dlq stream>:<dlq sequence>
//	Nats-Msg-Id:         replay.<dlq stream>.<dlq sequence>
//
// and waits for each PubAck. Because the message id is stable, replaying the
// same dead letter twice within the target stream's duplicate window
// (Duplicates, 2 minutes by default) stores it once: the second PubAck is a
// duplicate, counted as "deduped". After the window a second replay is
// published again. -keep-msg-id restores the original Nats-Msg-Id instead.
// Publishes are paced by -rate (messages per second, a token bucket without
// bursts); a progress bar is drawn on stderr when it is a terminal, otherwise
// one summary line is printed. -delete removes each dead letter only after
// its replay was acknowledged, so an interrupted replay never loses one.
//
// purge deletes dead letters with a given reason one by one, or purges the
// whole stream with -all; it refuses to run without -yes.
//
// # Outbox and dedupe
//
// outbox stats counts rows by state and shows the age of the oldest pending
// row; outbox failed lists the rows the broker rejected permanently with
// their last error; outbox retry puts failed rows back to pending through
// outbox.Outbox.Requeue. None of them creates the table: on a database
// without it they say so and name -table and -db.
//
// dedupe get shows one record of a dedupe store: state, fingerprint,
// fencing token and fence, attempts, lease, creation and expiry times and
// the stored result's size. The key is namespaced and hashed as
// dedupe.Guard does (-namespace, -max-key-len): a Guard with Namespace NS
// stores NS:KEY, so a miss looks for KEY under other namespaces and names
// the -namespace that finds it. dedupe list prints live records (by
// -namespace or stored-key -prefix, by -state), dedupe count counts them by
// state and by namespace. They read through the stores' inspection APIs
// (sqlstore.Store.Get and Scan, redisstore.Store.Get and Scan,
// natskv.Store.Get and List) and change nothing.
//
// # Console
//
// console serves a web console (templates and assets embedded) on -addr,
// 127.0.0.1:8089 by default: an overview of the -stream dead-letter streams
// (counts by reason and original subject, ages) and of the -db outbox
// (backlog, failed rows, oldest unsent row), dead letters filtered by
// reason, original subject and time and paged from a start sequence, their
// details (bodies only with -show-bodies), and replay, purge and outbox retry
// running the same functions as the commands above. Replays from the console
// delete each dead letter after its PubAck by default (replay -delete). It
// refuses a non-loopback -addr without -token or -basic-auth, accepts actions
// only as POSTs with a CSRF token, and logs each action with who did it.
package main
