package natsjs

import (
	"fmt"
	"math"
	"os"
	"strings"
	"time"

	"github.com/idemq/idemq/consumer"
	"github.com/idemq/idemq/dedupe"
)

// Defaults applied by New to zero-valued Config fields.
const (
	// DefaultAckWait is Config.AckWait when zero: 30s.
	DefaultAckWait = 30 * time.Second
	// DefaultConcurrency is Config.Concurrency when zero: 64 workers.
	DefaultConcurrency = 64
	// DefaultFetchBatchFactor times Concurrency, at most
	// MaxDefaultFetchBatch and at least Concurrency, is Config.FetchBatch
	// when zero: 8, so 512 messages with the default Concurrency.
	DefaultFetchBatchFactor = 8
	// MaxDefaultFetchBatch caps the default Config.FetchBatch: 512
	// messages, about nats.go's own Consume default (500), well inside the
	// server's default MaxAckPending (1000).
	MaxDefaultFetchBatch = 512
	// DefaultPullWait is Config.PullWait when zero: 5s.
	DefaultPullWait = 5 * time.Second
	// MinPullWait is the shortest Config.PullWait; shorter values are
	// raised to it (nats.go's minimum pull expiry): 1s.
	MinPullWait = time.Second
	// DefaultMaxProbeInterval is Config.MaxProbeInterval when zero: 1s.
	DefaultMaxProbeInterval = time.Second
	// MinProbeInterval is the first probe interval after a dependency
	// stopped answering; it doubles up to MaxProbeInterval: 100ms.
	MinProbeInterval = 100 * time.Millisecond
	// DefaultPauseThreshold is how many deliveries must find a dependency
	// unavailable, with no success of that dependency in between, before
	// the consumer pauses: 3, so that one timed-out call does not stop
	// consumption.
	DefaultPauseThreshold = 3
	// DefaultShutdownTimeout is Config.ShutdownTimeout when zero: 30s.
	DefaultShutdownTimeout = 30 * time.Second
	// DefaultShutdownNakDelay is Config.ShutdownNakDelay when zero: 1s.
	DefaultShutdownNakDelay = time.Second
	// DefaultDeadLetterPrefix starts DeadLetterConfig.Subject when empty:
	// "dlq." + the lower-case stream name.
	DefaultDeadLetterPrefix = "dlq."
	// DefaultKeyHeader is the header DefaultGuard reads the idempotency key
	// from: "Idempotency-Key".
	DefaultKeyHeader = "Idempotency-Key"
	// DefaultDeadLetterStream is DeadLetterConfig.Stream when empty: "DLQ".
	DefaultDeadLetterStream = "DLQ"
	// DefaultDeadLetterRetryDelay is DeadLetterConfig.RetryDelay when zero:
	// 5s.
	DefaultDeadLetterRetryDelay = 5 * time.Second
	// DefaultPublishTimeout is DeadLetterConfig.PublishTimeout when zero:
	// 5s.
	DefaultPublishTimeout = 5 * time.Second
	// DefaultAdvisoryStream is Config.AdvisoryStream when empty.
	DefaultAdvisoryStream = "IDEMQ_ADVISORIES"
	// DefaultAdvisoryMaxAge is how long the advisory stream created by the
	// adapter keeps advisories: 7 days.
	DefaultAdvisoryMaxAge = 7 * 24 * time.Hour
)

// ErrInvalidConfig is wrapped by New's and NewBatch's validation errors; it
// is consumer.ErrInvalidConfig.
var ErrInvalidConfig = consumer.ErrInvalidConfig

// Config configures a Consumer. Stream and Durable are required; every
// other field has a default.
type Config struct {
	// Stream is the JetStream stream to consume. Required.
	Stream string
	// Durable names the durable pull consumer, created or updated by Run.
	// Required.
	Durable string
	// Store, when set, dedupes messages with DefaultGuard(Store, Durable):
	// by the Idempotency-Key header, else Nats-Msg-Id, else the stream
	// sequence, with the whole payload fingerprinted so that a reused key
	// with another payload is a conflict. Set Pipeline.Guard instead for
	// another key, fingerprint, lease or retention (not both). Default nil:
	// no dedupe.
	Store dedupe.Store
	// FilterSubjects restricts the consumer to these subjects. Empty: the
	// whole stream. One subject works on every server; more than one needs
	// NATS server 2.10 or later (Run fails clearly on older servers).
	FilterSubjects []string
	// Concurrency is the number of worker goroutines, the most handlers
	// running at once. Default DefaultConcurrency (64); in batch mode the
	// number of batches processed at once, default DefaultBatchConcurrency
	// (4).
	Concurrency int
	// FetchBatch is how many messages the adapter keeps buffered ahead of
	// the workers (nats.go PullMaxMessages): when half of them were handed
	// to workers it asks the server for more in one pull request, so pulls
	// stay few whatever the handlers' speed. A buffered message's AckWait
	// is already running: it waits about FetchBatch/Concurrency handler
	// durations before a worker takes it (plus a quarter of one: the
	// hand-off to the workers buffers Concurrency/4). The default, eight
	// times Concurrency (512 with the default Concurrency), suits handlers
	// shorter than about AckWait/10 (3s with the default AckWait); with
	// slower handlers set FetchBatch to Concurrency, so that buffered
	// messages are not redelivered while they wait (with a Guard a
	// redelivered copy is deduped, nothing runs twice, but its worker's
	// time is spent). A larger batch costs the broker and the client less
	// per message: with fast handlers on a 2-core machine, 512 against 128
	// cut the CPU per message summed over nats-server and the client by
	// 15–25 % and raised throughput 20–50 % (BenchmarkSideBySide in
	// integration/bench). Messages still buffered at shutdown are handed
	// back unstarted. Default min(DefaultFetchBatchFactor × Concurrency,
	// MaxDefaultFetchBatch), at least Concurrency.
	FetchBatch int
	// BatchSize is, in batch mode (NewBatch), the most messages given to
	// the batch handler at once. Default DefaultBatchSize (250). Unused by
	// New.
	BatchSize int
	// PullWait is how long one pull request waits at the server for
	// messages (nats.go PullExpiry); idle heartbeats arrive every half of
	// it. It does not delay shutdown. Values below MinPullWait (1s) are
	// raised to it. Default 5s.
	PullWait time.Duration
	// AckWait is how long the server waits for an acknowledgement before
	// redelivering. Heartbeats (InProgress) keep a running handler's message
	// from being redelivered. With a dedupe guard it must not exceed the
	// guard's lease. Default 30s.
	AckWait time.Duration
	// HeartbeatInterval is how often a running handler's message is marked
	// InProgress and its dedupe lease extended. Default AckWait/2; must be
	// shorter than AckWait.
	HeartbeatInterval time.Duration
	// MaxDeliver is the server's delivery limit. The default, zero, is -1:
	// unlimited, so that the server never gives up on a message while idemq
	// has not decided — idemq dead-letters it ("exhausted") once the handler
	// ran the retry policy's attempts (or, with a dedupe guard, after the
	// pipeline's MaxDeliveries safety cap). A positive limit must exceed
	// the retry policy's attempts, and makes Run capture the server's
	// MAX_DELIVERIES advisories in AdvisoryStream and dead-letter the
	// messages they name, so that none is stranded.
	MaxDeliver int
	// DoubleAck makes every Ack wait, up to DeadLetter.PublishTimeout, for
	// the server's confirmation (jetstream.Msg.DoubleAck), so a lost ack is
	// noticed; an unconfirmed ack is logged, and the redelivery is then
	// answered as a duplicate.
	DoubleAck bool
	// DeadLetter says where dead letters go.
	DeadLetter DeadLetterConfig
	// AdvisoryStream is the stream capturing MAX_DELIVERIES advisories when
	// MaxDeliver is finite (created, or extended with this consumer's
	// advisory subject, by Run). Default "IDEMQ_ADVISORIES".
	AdvisoryStream string
	// MaxProbeInterval caps the interval at which a paused consumer probes
	// the dependency that stopped answering (the dedupe store or the
	// dead-letter stream); probes start at MinProbeInterval and double.
	// Consumption resumes within about one interval of the dependency's
	// return. Default 1s.
	MaxProbeInterval time.Duration
	// ShutdownTimeout is how long Run lets in-flight handlers finish after
	// its context ends; then their contexts are cancelled and their
	// messages handed back. Default 30s.
	ShutdownTimeout time.Duration
	// ShutdownNakDelay is the redelivery delay of messages handed back on
	// shutdown (fetched but not started, or interrupted). Default 1s.
	ShutdownNakDelay time.Duration
	// ReplayWindow is how long after dead-lettering a message may be
	// replayed from the dead-letter queue; it is part of the redelivery
	// horizon the dedupe retention must cover. Default 0.
	ReplayWindow time.Duration
	// Hostname fills the Idemq-Host header. Default os.Hostname().
	Hostname string
	// Pipeline configures dedupe, retry, budget and logging (see
	// consumer.Config). Leave its HeartbeatInterval zero (this Config's
	// HeartbeatInterval is used) and its DeadLetter nil (the consumer
	// publishes to DeadLetter): New refuses other values.
	Pipeline consumer.Config
}

// DeadLetterConfig says where dead letters go. Its zero value is usable:
// dead letters of stream ORDERS go to subject "dlq.orders" in stream "DLQ"
// (subjects "dlq.>"), created when missing.
type DeadLetterConfig struct {
	// Subject receives the dead letters. Default "dlq." followed by the
	// source stream's name in lower case ("dlq.payments" for PAYMENTS).
	//
	// It may be a template that routes dead letters by stream, reason and
	// original subject, with whole-token placeholders {stream} (lower
	// case), {reason} and {subject} (the original subject, last token
	// only): "dlq.{stream}.{reason}" sends a conflict of PAYMENTS to
	// "dlq.payments.conflict"; "dlq.{reason}.{subject}" keeps the original
	// subject. Run checks that the dead-letter stream captures every subject
	// the template can produce.
	Subject string
	// Stream stores them. Default "DLQ". Publishes expect it.
	Stream string
	// NoCreateStream stops Run from creating Stream when it does not exist
	// (with StreamSubjects, file storage and limits retention) and from
	// creating it again if it disappears while the consumer runs. With it,
	// a missing stream is a warning at start, and while it is missing the
	// consumer pauses at the first dead letter until it exists again:
	// messages wait, none is lost. Default false: the stream is created.
	NoCreateStream bool
	// StreamSubjects are the subjects of a stream Run creates.
	// Default: Subject's literal tokens before its first placeholder, or
	// without its last token, followed by ".>" ("dlq.>" for "dlq.payments"
	// and for "dlq.{stream}.{reason}"); a one-token Subject itself.
	StreamSubjects []string
	// RetryDelay is the redelivery delay of MAX_DELIVERIES advisories
	// whose dead letter could not be published, and of messages whose
	// JetStream metadata cannot be read. Default 5s. (A message whose dead
	// letter could not be published waits the pipeline's
	// UnavailableDelay while the consumer pauses.)
	RetryDelay time.Duration
	// PublishTimeout bounds one dead-letter publish. Default 5s.
	PublishTimeout time.Duration
}

// resolve fills defaults and validates; errors wrap ErrInvalidConfig.
func (cfg Config) resolve() (Config, error) {
	bad := func(format string, args ...any) (Config, error) {
		return Config{}, fmt.Errorf("%w: "+format, append([]any{ErrInvalidConfig}, args...)...)
	}
	if cfg.Stream == "" {
		return bad("Stream is required")
	}
	if cfg.Durable == "" {
		return bad("Durable is required")
	}
	if strings.ContainsAny(cfg.Durable, ".*> \t") {
		return bad("Durable %q must not contain '.', '*', '>' or spaces", cfg.Durable)
	}
	if cfg.DeadLetter.Subject == "" {
		cfg.DeadLetter.Subject = DefaultDeadLetterPrefix + strings.ToLower(cfg.Stream)
	}
	if cfg.Store != nil {
		if cfg.Pipeline.Guard != nil {
			return bad("both Store and Pipeline.Guard are set: set Store for the default guard, or Pipeline.Guard for your own")
		}
		cfg.Pipeline.Guard = DefaultGuard(cfg.Store, cfg.Durable)
	}
	if cfg.Concurrency <= 0 {
		cfg.Concurrency = DefaultConcurrency
	}
	if cfg.FetchBatch <= 0 {
		cfg.FetchBatch = max(min(DefaultFetchBatchFactor*cfg.Concurrency, MaxDefaultFetchBatch), cfg.Concurrency)
	}
	if cfg.PullWait <= 0 {
		cfg.PullWait = DefaultPullWait
	}
	cfg.PullWait = max(cfg.PullWait, MinPullWait)
	if cfg.AckWait <= 0 {
		cfg.AckWait = DefaultAckWait
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = cfg.AckWait / 2
	}
	if cfg.Pipeline.HeartbeatInterval != 0 && cfg.Pipeline.HeartbeatInterval != cfg.HeartbeatInterval {
		return bad("Pipeline.HeartbeatInterval %v: set Config.HeartbeatInterval instead (the consumer's heartbeat marks the message InProgress and extends the lease in one beat)",
			cfg.Pipeline.HeartbeatInterval)
	}
	if cfg.Pipeline.DeadLetter != nil {
		return bad("Pipeline.DeadLetter is set: the consumer publishes dead letters to DeadLetter.Subject; leave it nil")
	}
	if cfg.MaxProbeInterval <= 0 {
		cfg.MaxProbeInterval = DefaultMaxProbeInterval
	}
	cfg.MaxProbeInterval = max(cfg.MaxProbeInterval, MinProbeInterval)
	if cfg.HeartbeatInterval >= cfg.AckWait {
		return bad("HeartbeatInterval %v must be shorter than AckWait %v, or running handlers' messages are redelivered",
			cfg.HeartbeatInterval, cfg.AckWait)
	}
	attempts := cfg.Pipeline.Retry.Attempts()
	switch {
	case cfg.MaxDeliver == 0:
		cfg.MaxDeliver = -1
	case cfg.MaxDeliver < -1:
		return bad("MaxDeliver %d: use a positive limit, 0 for the default or -1 for unlimited", cfg.MaxDeliver)
	case cfg.MaxDeliver > 0 && cfg.MaxDeliver <= attempts:
		return bad("MaxDeliver %d must be greater than the retry policy's %d attempts, so that idemq dead-letters before the server stops redelivering (use at least %d)",
			cfg.MaxDeliver, attempts, attempts+1)
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	if cfg.ShutdownNakDelay <= 0 {
		cfg.ShutdownNakDelay = DefaultShutdownNakDelay
	}
	if cfg.AdvisoryStream == "" {
		cfg.AdvisoryStream = DefaultAdvisoryStream
	}
	if cfg.Hostname == "" {
		cfg.Hostname, _ = os.Hostname()
	}
	dl := &cfg.DeadLetter
	if dl.Stream == "" {
		dl.Stream = DefaultDeadLetterStream
	}
	rt, err := parseRoute(dl.Subject)
	if err != nil {
		return Config{}, err
	}
	if len(dl.StreamSubjects) == 0 {
		dl.StreamSubjects = rt.streamSubjects()
	}
	if dl.RetryDelay <= 0 {
		dl.RetryDelay = DefaultDeadLetterRetryDelay
	}
	if dl.PublishTimeout <= 0 {
		dl.PublishTimeout = DefaultPublishTimeout
	}
	if g := cfg.Pipeline.Guard; g != nil {
		lease := g.LeaseDuration()
		if cfg.AckWait > lease {
			return bad("AckWait %v exceeds the dedupe lease %v: a worker that dies mid-handler would leave a lapsed lease that a redelivery can take over while the server still thinks the message is running; make the lease at least AckWait",
				cfg.AckWait, lease)
		}
		horizon := Horizon(cfg)
		if err := dedupe.ValidateRetention(g.RetentionDuration(), horizon); err != nil {
			return bad("dedupe retention vs redelivery horizon (backoff %v + AckWait %v × %d attempts + replay window %v): %w",
				cfg.Pipeline.Retry.Horizon(), cfg.AckWait, attempts, cfg.ReplayWindow, err)
		}
	}
	cfg.Pipeline.HeartbeatInterval = cfg.HeartbeatInterval
	return cfg, nil
}

// Horizon returns the redelivery horizon of cfg: the longest time after a
// first delivery at which the same message may still be processed. It is
// the retry policy's Horizon, plus AckWait for every attempt, plus the
// budget delay for every retry when a retry budget is configured, plus
// ReplayWindow. A dedupe guard's retention must be at least this long.
// Zero fields count as their defaults.
func Horizon(cfg Config) time.Duration {
	ackWait := cfg.AckWait
	if ackWait <= 0 {
		ackWait = DefaultAckWait
	}
	attempts := cfg.Pipeline.Retry.Attempts()
	h := satAdd(cfg.Pipeline.Retry.Horizon(), satMul(ackWait, attempts))
	h = satAdd(h, max(cfg.ReplayWindow, 0))
	if cfg.Pipeline.Budget != nil {
		bd := cfg.Pipeline.BudgetDelay
		if bd <= 0 {
			bd = consumer.DefaultBudgetDelay
		}
		h = satAdd(h, satMul(bd, attempts-1))
	}
	return h
}

// satAdd adds non-negative durations, saturating at math.MaxInt64.
func satAdd(a, b time.Duration) time.Duration {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// satMul multiplies a non-negative duration by n >= 0, saturating.
func satMul(d time.Duration, n int) time.Duration {
	if n <= 0 || d <= 0 {
		return 0
	}
	if d > math.MaxInt64/time.Duration(n) {
		return math.MaxInt64
	}
	return d * time.Duration(n)
}

// DefaultGuard is the guard Config.Store gets: keys from the
// Idempotency-Key header, else the Nats-Msg-Id header, else the message's
// "<stream>:<sequence>" (Convert's ID, so a message without either is still
// deduped against its own redeliveries); the whole payload fingerprinted
// (canonical JSON, or the raw bytes); keys namespaced by the durable name;
// the default lease (30s) and retention (24h).
func DefaultGuard(store dedupe.Store, durable string) *dedupe.Guard {
	return &dedupe.Guard{
		Store:     store,
		Key:       dedupe.FirstKey(dedupe.HeaderKey(DefaultKeyHeader), dedupe.MessageIDKey()),
		Namespace: durable,
	}
}
