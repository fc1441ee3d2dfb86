package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/schollz/progressbar/v3"
)

// natsFlags adds -nats and -stream to fs.
func natsFlags(fs *flag.FlagSet) (url, stream *string) {
	url = fs.String("nats", defaultNATSURL, "NATS server `URL`")
	stream = fs.String("stream", defaultDLQStream, "dead-letter `stream`")
	return url, stream
}

func (a *app) dlqList(ctx context.Context, args []string) error {
	fs := a.flagSet("dlq list", "[-nats URL] [-stream DLQ] [-subject S] [-reason R] [-limit N] [-json]",
		"Lists dead letters oldest first, one line each: DLQ sequence, reason, original subject,\n"+
			"original stream:sequence, attempts, failed-at and the error (cut to the terminal width).\n"+
			"Messages are read by sequence (JetStream message get): nothing is consumed or acked.")
	url, stream := natsFlags(fs)
	var opts listOptions
	fs.StringVar(&opts.Subject, "subject", "", "only dead letters stored on this `subject` (wildcards allowed, e.g. dlq.>); empty means all")
	fs.StringVar(&opts.Reason, "reason", "", "only this `reason`: permanent, exhausted, conflict or invalid")
	fs.IntVar(&opts.Limit, "limit", 0, "print at most `N` dead letters; 0 means all")
	fs.BoolVar(&opts.JSON, "json", false, "print one JSON object per line, with full error texts")
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErrorf(fs, "unexpected argument %q", pos[0])
	}
	if err := checkReason(opts.Reason); err != nil {
		return usageErrorf(fs, "-reason: %v", err)
	}
	if opts.Limit < 0 {
		return usageErrorf(fs, "-limit must not be negative")
	}
	opts.Width = a.width
	nc, js, err := connectNATS(*url)
	if err != nil {
		return err
	}
	defer nc.Close()
	_, err = listLetters(ctx, js, *stream, opts, a.stdout)
	return err
}

func (a *app) dlqShow(ctx context.Context, args []string) error {
	fs := a.flagSet("dlq show", "[-nats URL] [-stream DLQ] SEQ",
		"Shows the dead letter at DLQ sequence SEQ: every header and the body (indented when it is\n"+
			"JSON, as text when it is printable, else as a hex dump).")
	url, stream := natsFlags(fs)
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return usageErrorf(fs, "want exactly one SEQ, got %d arguments", len(pos))
	}
	seq, err := strconv.ParseUint(pos[0], 10, 64)
	if err != nil || seq == 0 {
		return usageErrorf(fs, "SEQ %q is not a stream sequence", pos[0])
	}
	nc, js, err := connectNATS(*url)
	if err != nil {
		return err
	}
	defer nc.Close()
	return showLetter(ctx, js, *stream, seq, a.stdout)
}

func (a *app) dlqReplay(ctx context.Context, args []string) error {
	fs := a.flagSet("dlq replay", "[-nats URL] [-stream DLQ] [-reason R] [-subject S] (-seq N | -all) [-rate 50] [-dry-run] [-delete] [-keep-msg-id]",
		"Republishes dead letters to their Idemq-Original-Subject: the body unchanged, the original\n"+
			"headers without the Idemq dead-letter headers, plus Idemq-Replayed-From: <stream>:<seq> and\n"+
			"Nats-Msg-Id: replay.<stream>.<seq>. Each publish waits for its PubAck. Replaying the same\n"+
			"dead letter again within the target stream's duplicate window is dropped by the server\n"+
			"(counted as deduped); after the window it is published again. -reason and -subject filter\n"+
			"-all (and check -seq). Messages dead-lettered after the replay starts are not visited.")
	url, stream := natsFlags(fs)
	var opts replayOptions
	fs.Uint64Var(&opts.Seq, "seq", 0, "replay the dead letter at DLQ sequence `N`")
	fs.StringVar(&opts.Reason, "reason", "", "only dead letters with this `reason`: permanent, exhausted, conflict or invalid")
	fs.StringVar(&opts.Filter.Subject, "subject", "", "only dead letters stored on this `subject` (a route such as dlq.payments.conflict; wildcards allowed)")
	fs.BoolVar(&opts.All, "all", false, "replay every dead letter in the stream (or every one matching -reason and -subject)")
	perSecond := fs.Float64("rate", defaultRate, "publish at most `N` messages per second; 0 means unlimited")
	fs.BoolVar(&opts.DryRun, "dry-run", false, "print what would be replayed; publish and delete nothing")
	fs.BoolVar(&opts.Delete, "delete", false, "delete each dead letter from the DLQ once its replay is acknowledged")
	fs.BoolVar(&opts.KeepMsgID, "keep-msg-id", false,
		"publish with the original Nats-Msg-Id (Idemq-Original-Msg-Id) instead of replay.<stream>.<seq>;\n"+
			"the target stream then drops the replay if the original is still in its duplicate window")
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErrorf(fs, "unexpected argument %q", pos[0])
	}
	switch {
	case opts.Seq != 0 && opts.All:
		return usageErrorf(fs, "-seq and -all exclude each other")
	case opts.Seq == 0 && !opts.All:
		return usageErrorf(fs, "choose the dead letters: -seq N or -all (with -reason R to filter)")
	case *perSecond < 0 || math.IsNaN(*perSecond):
		return usageErrorf(fs, "-rate must not be negative")
	}
	if err := checkReason(opts.Reason); err != nil {
		return usageErrorf(fs, "-reason: %v", err)
	}
	opts.Stream = *stream
	opts.Limiter = newLimiter(*perSecond)
	if a.progress {
		opts.Progress = func(total int) progress {
			return progressbar.NewOptions(total,
				progressbar.OptionSetWriter(a.stderr),
				progressbar.OptionSetDescription("replay "+*stream),
				progressbar.OptionShowCount(),
				progressbar.OptionShowIts(),
				progressbar.OptionSetItsString("msg"),
				progressbar.OptionOnCompletion(func() { fmt.Fprintln(a.stderr) }),
			)
		}
	}
	nc, js, err := connectNATS(*url)
	if err != nil {
		return err
	}
	defer nc.Close()
	st, err := replay(ctx, js, opts, a.stdout)
	switch {
	case opts.DryRun && err == nil:
		fmt.Fprintf(a.stderr, "dry run: %d selected, nothing published\n", st.Selected)
		return nil
	case err != nil && ctx.Err() != nil:
		fmt.Fprintf(a.stderr, "interrupted: %s\n", st)
		return fmt.Errorf("stopped: %w", ctx.Err())
	case err != nil:
		fmt.Fprintf(a.stderr, "%s\n", st)
		return err
	}
	fmt.Fprintln(a.stderr, st)
	if st.Skipped > 0 {
		return fmt.Errorf("%d selected messages are not dead letters: %w", st.Skipped, errNotDeadLetter)
	}
	return nil
}

// errRefused is returned by purge without -yes.
var errRefused = errors.New("refused without -yes")

func (a *app) dlqPurge(ctx context.Context, args []string) error {
	fs := a.flagSet("dlq purge", "[-nats URL] [-stream DLQ] (-reason R | -subject S | -all) -yes",
		"Deletes dead letters: with -reason or -subject one message delete per matching letter, with\n"+
			"-all a purge of the whole stream. Without -yes it only says how many it would delete and exits 2.")
	url, stream := natsFlags(fs)
	reason := fs.String("reason", "", "delete the dead letters with this `reason`: permanent, exhausted, conflict or invalid")
	subject := fs.String("subject", "", "delete the dead letters stored on this `subject` (a route; wildcards allowed)")
	all := fs.Bool("all", false, "purge every message in the stream")
	yes := fs.Bool("yes", false, "really delete")
	pos, err := a.parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return usageErrorf(fs, "unexpected argument %q", pos[0])
	}
	if (*reason == "" && *subject == "") == !*all {
		return usageErrorf(fs, "choose -reason R and/or -subject S, or -all")
	}
	if err := checkReason(*reason); err != nil {
		return usageErrorf(fs, "-reason: %v", err)
	}
	nc, js, err := connectNATS(*url)
	if err != nil {
		return err
	}
	defer nc.Close()
	var filters []string
	if *reason != "" {
		filters = append(filters, "with reason "+*reason)
	}
	if *subject != "" {
		filters = append(filters, "on "+*subject)
	}
	what := strings.Join(filters, " and ")
	if *all {
		what = "(all)"
	}
	opts := purgeOptions{Stream: *stream, All: *all, Select: selector{Reason: *reason, Subject: *subject}}
	if !*yes {
		n, err := countLetters(ctx, js, opts)
		if err != nil {
			return err
		}
		fmt.Fprintf(a.stderr, "idemq dlq purge: would delete %d messages %s from stream %s; %v\n", n, what, *stream, errRefused)
		return errUsage
	}
	n, err := purgeLetters(ctx, js, opts)
	fmt.Fprintf(a.stdout, "deleted %d messages %s from stream %s\n", n, what, *stream)
	return err
}
