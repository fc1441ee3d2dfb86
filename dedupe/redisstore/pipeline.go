package redisstore

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// opKind says how an op goes on the wire.
type opKind uint8

const (
	// kindCommand: the plain command in args (a claim's SET NX GET).
	kindCommand opKind = iota
	// kindSwap: swapLua on key with ARGV args.
	kindSwap
	// kindOwned: one entry of an ownedLua call, which carries every owned
	// op of a batch whose keys share a hash slot.
	kindOwned
)

// The owned ops, as ownedLua names them.
const (
	ownedComplete = 'C'
	ownedRelease  = 'R'
	ownedSnooze   = 'S'
	ownedDelete   = 'X'
	ownedExtend   = 'E'
)

// op is one operation of one caller. After it ran, cmd holds its reply or
// per-command error (kindCommand, kindSwap), code and rerr its answer
// (kindOwned), or err the failure of the whole round trip that carried it.
// Ops come from opPool and go back once their caller has read the answer.
type op struct {
	kind opKind
	key  string // the Redis key
	args []any  // kindCommand: the command; kindSwap: swapLua's ARGV
	argv [7]any // backing array of args

	// kindOwned: what ownedLua needs (see appendOwned).
	owned  byte
	now    int64
	token  string
	t1, t2 int64 // complete: retention end, PX; extend: lease end, GC margin
	state  byte  // complete: stateDone or stateFailed
	data   []byte
	code   byte  // the script's answer: '1' applied, '0' lease lost, 'W' not a string
	rerr   error // error reply of the call that carried it, or ErrNotReplicated

	// The op's own command arguments, which args points to (pointers box
	// into an interface without an allocation): a claim's record value
	// and PX; an owned op's fixed-width arguments, cut from fixed, and its
	// result. val keeps its capacity across the pool.
	val   []byte
	px    int64
	fixed [ownedBytes]byte
	wire  [4]wireArg

	cmd *redis.Cmd
	err error

	// Batching state. ctx is the caller's; wake is signalled (buffered, one
	// pending signal suffices) when done or lead changes; done and lead are
	// guarded by Store.mu.
	ctx  context.Context
	wake chan struct{}
	done bool
	lead bool
}

var opPool = sync.Pool{New: func() any { return &op{wake: make(chan struct{}, 1)} }}

// wireArg is a command argument held by an op: a pointer to it goes into
// a command's arguments without the allocation that boxing a []byte
// costs, and go-redis writes it as the bytes (encoding.BinaryMarshaler).
type wireArg struct{ b []byte }

// MarshalBinary returns the argument's bytes.
func (w *wireArg) MarshalBinary() ([]byte, error) { return w.b, nil }

// maxPooledVal bounds the record buffer an op keeps across the pool.
const maxPooledVal = 1 << 10

// getOp returns a cleared op from the pool.
func getOp(kind opKind, key string) *op {
	o := opPool.Get().(*op)
	o.kind, o.key = kind, key
	o.args = o.argv[:0]
	return o
}

// putOp returns o to the pool once its caller has read the answer. An op
// whose caller gave up while it was queued or in flight is never put back:
// the batch that carries it may still write to it.
func putOp(o *op) {
	select { // a signal nobody waited for
	case <-o.wake:
	default:
	}
	wake, val := o.wake, o.val[:0]
	if cap(val) > maxPooledVal {
		val = nil
	}
	*o = op{wake: wake, val: val}
	opPool.Put(o)
}

// result returns o's reply or error: the round trip's failure, else the
// command's own error reply (redis.Nil for a nil reply).
func (o *op) result() (*redis.Cmd, error) {
	if o.err != nil {
		return nil, o.err
	}
	return o.cmd, o.cmd.Err()
}

// script is a Lua script sent with EVALSHA, and with EVAL when the server
// answers NOSCRIPT.
type script struct{ src, sha string }

func newScript(src string) script {
	h := sha1.Sum([]byte(src))
	return script{src: src, sha: hex.EncodeToString(h[:])}
}

// call is one command on the wire: a claim's command, a swap, or one
// ownedLua invocation for a group of owned ops.
type call struct {
	op    *op   // kindCommand, kindSwap
	group []*op // kindOwned: the ops, in KEYS order
	args  []any // the command; for a script, args[0:2] are EVALSHA and the sha
	src   string
	cmd   *redis.Cmd
	err   error // the round trip's failure
	// wait: the call carries a completion and the store waits for
	// replicas; notReplicated (wrapping ErrNotReplicated) says that they
	// did not all acknowledge it.
	wait          bool
	notReplicated error
}

func (c *call) isScript() bool { return c.src != "" }

// key returns the first key of c, which decides the node it goes to.
func (c *call) key() string {
	if c.op != nil {
		return c.op.key
	}
	return c.group[0].key
}

// maxGroup caps the ops of one ownedLua call, so that one script never
// blocks the server for long (about 2 µs per op).
const maxGroup = 128

// calls turns ops into the commands that carry them: one per claim and
// swap, and one ownedLua call per group of owned ops that may share a
// script: all of them on a single server, those of one hash slot on a
// Cluster, each alone on a Ring or an unknown client.
func (s *Store) calls(ops []*op) []*call {
	var (
		cs     = make([]call, 0, len(ops))
		out    = make([]*call, 0, len(ops))
		single *call
		bySlot map[uint16]*call
	)
	for _, o := range ops {
		switch o.kind {
		case kindCommand:
			cs = append(cs, call{op: o, args: o.args})
			out = append(out, &cs[len(cs)-1])
			continue
		case kindSwap:
			args := make([]any, 0, 4+len(o.args))
			args = append(append(args, "evalsha", s.swap.sha, 1, o.key), o.args...)
			cs = append(cs, call{op: o, args: args, src: s.swap.src})
			out = append(out, &cs[len(cs)-1])
			continue
		}
		var g *call
		switch s.topo {
		case topoSingle:
			g = single
		case topoCluster:
			if bySlot == nil {
				bySlot = make(map[uint16]*call)
			}
			g = bySlot[slot(o.key)]
		}
		if g == nil || len(g.group) == maxGroup {
			cs = append(cs, call{src: s.owned.src})
			g = &cs[len(cs)-1]
			out = append(out, g)
			switch s.topo {
			case topoSingle:
				single = g
			case topoCluster:
				bySlot[slot(o.key)] = g
			}
		}
		g.group = append(g.group, o)
		g.wait = g.wait || (o.owned == ownedComplete && s.waitReplicas > 0)
	}
	for _, c := range out {
		if c.group != nil {
			c.args = s.ownedArgs(c.group)
		}
	}
	return out
}

// ownedArgs is the EVALSHA of ownedLua for group: its keys, the string
// of operation names, and each op's arguments: now and token; for a
// completion the new state, retention end and zero lease end (27 bytes),
// the result and the PX; for an extension the new lease end and the GC
// margin. The keys, tokens and the fixed-width arguments are pointers into
// the ops (no allocation per argument); only the names share one buffer.
func (s *Store) ownedArgs(group []*op) []any {
	names := make([]byte, 0, len(group))
	n := 4
	for _, o := range group {
		n += 3
		switch o.owned {
		case ownedComplete:
			n += 3
		case ownedExtend:
			n += 2
		}
	}
	args := make([]any, 0, n)
	args = append(args, "evalsha", &s.owned.sha, len(group))
	for _, o := range group {
		args = append(args, &o.key)
		names = append(names, o.owned)
	}
	args = append(args, names)
	for _, o := range group {
		b := appendMillis(o.fixed[:0], o.now)
		w := &o.wire
		w[0].b = b[0:digits:digits]
		args = append(args, &w[0], &o.token)
		switch o.owned {
		case ownedComplete:
			b = appendMillis(appendMillis(append(b, o.state), o.t1), 0)
			w[1].b = b[digits:len(b):len(b)]
			at := len(b)
			b = strconv.AppendInt(b, o.t2, 10)
			w[2].b = b[at:len(b):len(b)]
			w[3].b = o.data
			if w[3].b == nil {
				w[3].b = []byte{}
			}
			args = append(args, &w[1], &w[3], &w[2])
		case ownedExtend:
			b = appendMillis(b, o.t1)
			w[1].b = b[digits:len(b):len(b)]
			at := len(b)
			b = strconv.AppendInt(b, o.t2, 10)
			w[2].b = b[at:len(b):len(b)]
			args = append(args, &w[1], &w[2])
		}
	}
	return args
}

// ownedBytes bounds the bytes ownedArgs cuts from an op's fixed buffer:
// now, then a completion's header and its PX (or an extension's lease end
// and GC margin).
const ownedBytes = digits + 1 + 2*digits + 20

// maxToken is the longest token the store sends; a longer one is no token
// of it (they are 32 characters).
const maxToken = 1 << 10

// exec runs o and returns the failure of the round trip that carried it (the
// command's own error reply stays in o.cmd, or o.rerr). With batching on, o
// joins the queue: the caller that finds no flush in progress becomes the
// leader and sends at most maxBatch queued ops in one pipeline, then hands
// leadership to the first op still queued, whose caller sends the next
// batch. No goroutine and no timer outlive a call.
//
// A caller whose ctx ends returns ctx.Err(): its op is dropped if it is still
// queued, and otherwise may still run (it is already on the wire). The
// leader sends its batch under a context that ends only when every caller in
// the batch has given up, so it returns when the round trip does. exec
// reports abandoned: then o may still be written to, and must not go back
// to the pool.
func (s *Store) exec(ctx context.Context, o *op) (err error, abandoned bool) {
	if s.maxBatch <= 1 {
		s.send(ctx, []*op{o})
		return o.err, false
	}
	o.ctx = ctx
	s.mu.Lock()
	s.queue = append(s.queue, o)
	lead := !s.flushing
	s.flushing = true
	s.mu.Unlock()
	for {
		if lead {
			s.flush()
		}
		select {
		case <-o.wake:
		case <-ctx.Done():
			if s.abandon(o) {
				return o.err, false
			}
			return ctx.Err(), true
		}
		s.mu.Lock()
		done := o.done
		lead, o.lead = o.lead, false
		s.mu.Unlock()
		if done {
			return o.err, false
		}
	}
}

// signal wakes o's caller; one pending signal is enough, since the caller
// reads the state under the lock.
func signal(o *op) {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// abandon withdraws o after its caller's ctx ended and reports whether o had
// already completed. A queued op is removed and never sent; an op that was
// handed leadership passes it on to the next queued op.
func (s *Store) abandon(o *op) (done bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o.done {
		return true
	}
	for i, q := range s.queue {
		if q == o {
			copy(s.queue[i:], s.queue[i+1:])
			s.queue[len(s.queue)-1] = nil
			s.queue = s.queue[:len(s.queue)-1]
			break
		}
	}
	if o.lead {
		o.lead = false
		s.handOff()
	}
	return false
}

// handOff makes the first queued op the leader, or ends the flush when the
// queue is empty. s.mu must be held.
func (s *Store) handOff() {
	if len(s.queue) == 0 {
		s.flushing = false
		return
	}
	s.queue[0].lead = true
	signal(s.queue[0])
}

// flush sends one batch from the head of the queue (the leader's own op is
// its first), marks its ops done and hands leadership on. Ops whose caller
// gave up before the batch left are not sent. Only the leader runs flush,
// so it reuses s.taken and s.batch; it is done with them before handOff
// lets the next leader in.
//
// The leader yields its processor before it takes the batch, again while
// the queue grew meanwhile (at most maxYields times, and not once the
// queue holds a full batch): the callers the previous batch just woke,
// runnable but not yet run, then queue their next operations and leave
// with this batch instead of the one after it. There is no timer: a lone
// caller's yield returns at once. In BenchmarkCostPerMessage this takes
// about 16 messages per round trip to 24-30 (depending on the machine's
// load).
func (s *Store) flush() {
	s.mu.Lock()
	for range maxYields {
		n := len(s.queue)
		if n >= s.maxBatch {
			break
		}
		s.mu.Unlock()
		runtime.Gosched()
		s.mu.Lock()
		if len(s.queue) == n {
			break
		}
	}
	n := min(len(s.queue), s.maxBatch)
	taken := append(s.taken[:0], s.queue[:n]...)
	rest := copy(s.queue, s.queue[n:])
	clear(s.queue[rest:])
	s.queue = s.queue[:rest]
	s.mu.Unlock()

	batch := s.batch[:0]
	for _, o := range taken {
		if err := o.ctx.Err(); err != nil {
			o.err = err
			continue
		}
		batch = append(batch, o)
	}
	switch len(batch) {
	case 0:
	case 1: // the batch serves its caller alone
		s.send(batch[0].ctx, batch)
	default:
		ctx, stop := batchContext(batch)
		s.send(ctx, batch)
		stop()
	}

	s.mu.Lock()
	for _, o := range taken {
		o.done = true
		signal(o)
	}
	clear(taken)
	clear(batch)
	s.taken, s.batch = taken[:0], batch[:0]
	s.handOff()
	s.mu.Unlock()
}

// maxYields bounds how often a leader yields before it takes its batch.
const maxYields = 3

// batchContext returns the context a batch is sent under: the first
// caller's values, cancelled only once every caller in the batch has given
// up (a batch serves them all). stop releases it.
//
// A caller with a deadline is taken to give up at its deadline (one timer
// for the batch, at the latest of them; a cancellation before it is not
// watched), and callers sharing one context without a deadline — the
// claims of a consumer's workers share its handler context — are watched
// once (contexts are told apart by their Done channel). So a batch costs one timer and a watch per distinct context, not
// a watch (context.AfterFunc) per operation.
func batchContext(batch []*op) (context.Context, func()) {
	base := context.WithoutCancel(batch[0].ctx)
	var latest time.Time
	var watch []context.Context // contexts without a deadline, one per Done channel
	var dones []<-chan struct{}
	for _, o := range batch {
		d := o.ctx.Done()
		if d == nil { // this caller never gives up
			return base, func() {}
		}
		if dl, ok := o.ctx.Deadline(); ok {
			if dl.After(latest) {
				latest = dl
			}
			continue
		}
		if !slices.Contains(dones, d) { // contexts sharing a Done channel end together
			dones = append(dones, d)
			watch = append(watch, o.ctx)
		}
	}
	ctx, cancel := context.WithCancel(base)
	var left atomic.Int64
	left.Store(int64(len(watch)))
	if !latest.IsZero() {
		left.Add(1)
	}
	done := func() {
		if left.Add(-1) == 0 {
			cancel()
		}
	}
	stops := make([]func() bool, 0, len(watch)+1)
	for _, w := range watch {
		stops = append(stops, context.AfterFunc(w, done))
	}
	if !latest.IsZero() {
		stops = append(stops, time.AfterFunc(time.Until(latest), done).Stop)
	}
	return ctx, func() {
		for _, stop := range stops {
			stop()
		}
		cancel()
	}
}

// send runs ops in one round trip (see calls for how they are packed): a
// lone command on its own, several as one pipeline, followed by a second
// pipeline of EVALs for the scripts the server answered NOSCRIPT to (it
// restarted or flushed its script cache; those did not run). With
// Config.WaitReplicas the calls that carry a completion go in a pipeline
// of their own per node, ended by one WAIT (see sendWaiting). Each op's
// answer or error reply lands in it; a failure of the round trip itself
// (connection, context) lands in every op's err.
func (s *Store) send(ctx context.Context, ops []*op) {
	calls := s.calls(ops)
	waiting := false
	for _, c := range calls {
		waiting = waiting || c.wait
	}
	if waiting {
		s.sendWaiting(ctx, calls)
	} else {
		s.run(ctx, s.c, calls, false)
	}
	for _, c := range calls {
		s.answer(c)
	}
}

// run sends calls through c in one round trip, with WAIT at the end when
// wait is set, then resends with EVAL those the server answered NOSCRIPT
// to.
func (s *Store) run(ctx context.Context, c client, calls []*call, wait bool) {
	if len(calls) == 1 && !wait {
		cl := calls[0]
		cl.cmd = c.Do(ctx, cl.args...)
		if cl.isScript() && redis.HasErrorPrefix(cl.cmd.Err(), "NOSCRIPT") {
			cl.cmd = c.Do(ctx, evalArgs(cl)...)
		}
		if err := cl.cmd.Err(); err != nil && !isReply(err) {
			cl.err = fmt.Errorf("redisstore: %w", err)
		}
		return
	}
	if s.pipeline(ctx, c, calls, false, wait) {
		return
	}
	var missing []*call
	for _, cl := range calls {
		if cl.isScript() && redis.HasErrorPrefix(cl.cmd.Err(), "NOSCRIPT") {
			missing = append(missing, cl)
		}
	}
	if len(missing) > 0 {
		s.pipeline(ctx, c, missing, true, wait)
	}
}

// client is what run needs of a go-redis client: a UniversalClient, or
// one node's *redis.Client.
type client interface {
	Do(ctx context.Context, args ...any) *redis.Cmd
	Pipeline() redis.Pipeliner
}

// evalArgs turns a script call's EVALSHA into EVAL.
func evalArgs(c *call) []any {
	args := append([]any(nil), c.args...)
	args[0], args[1] = "eval", c.src
	return args
}

// pipeline sends calls as one pipeline through c, as EVAL when eval is
// set, followed by WAIT when wait is set, and reports whether the round
// trip failed as a whole (then every call's err is set). WAIT's answer is
// recorded in the calls that carry a completion.
func (s *Store) pipeline(ctx context.Context, c client, calls []*call, eval, wait bool) (failed bool) {
	pipe := c.Pipeline()
	for _, cl := range calls {
		cl.notReplicated = nil
		args := cl.args
		if eval {
			args = evalArgs(cl)
		}
		cl.cmd = pipe.Do(ctx, args...)
	}
	var w *redis.Cmd
	if wait {
		w = pipe.Do(ctx, "wait", s.waitReplicas, ms(s.waitTimeout))
	}
	_, err := pipe.Exec(ctx)
	if err != nil {
		cmds := make([]redis.Cmder, 0, len(calls)+1)
		for _, cl := range calls {
			cmds = append(cmds, cl.cmd)
		}
		if w != nil {
			cmds = append(cmds, w)
		}
		for _, cmd := range cmds {
			if err := cmd.Err(); err != nil && !isReply(err) {
				err = fmt.Errorf("redisstore: pipeline of %d commands: %w", len(cmds), err)
				for _, cl := range calls {
					cl.err = err
				}
				return true
			}
		}
	}
	if w == nil {
		return false
	}
	var short error
	switch n, err := w.Int64(); {
	case err != nil:
		short = fmt.Errorf("%w (WAIT answered %w)", ErrNotReplicated, err)
	case n < int64(s.waitReplicas):
		short = fmt.Errorf("%w (%d of %d within %v)", ErrNotReplicated, n, s.waitReplicas, s.waitTimeout)
	}
	for _, cl := range calls {
		if cl.wait {
			cl.notReplicated = short
		}
	}
	return false
}

// sendWaiting sends calls when some carry a completion that must reach
// Config.WaitReplicas replicas: those go, per node, in a pipeline ended by
// one WAIT sent on the same connection to the master that took their
// writes; the rest go as one pipeline of their own, alongside. The
// pipelines run concurrently (one round trip), and sendWaiting returns when
// all have.
func (s *Store) sendWaiting(ctx context.Context, calls []*call) {
	var rest, waiting []*call
	for _, c := range calls {
		if c.wait {
			waiting = append(waiting, c)
		} else {
			rest = append(rest, c)
		}
	}
	type node struct {
		c     *redis.Client
		calls []*call
	}
	var nodes []*node
	for _, c := range waiting {
		n, err := s.nodeFor(ctx, c.key())
		if err != nil {
			c.err = err
			continue
		}
		i := 0
		for i < len(nodes) && nodes[i].c != n {
			i++
		}
		if i == len(nodes) {
			nodes = append(nodes, &node{c: n})
		}
		nodes[i].calls = append(nodes[i].calls, c)
	}
	var wg sync.WaitGroup
	for _, n := range nodes {
		wg.Go(func() { s.run(ctx, n.c, n.calls, true) })
	}
	if len(rest) > 0 {
		s.run(ctx, s.c, rest, false)
	}
	wg.Wait()
	if s.topo == topoCluster {
		for _, c := range waiting {
			if c.cmd != nil && redis.HasErrorPrefix(c.cmd.Err(), "MOVED") {
				s.c.(*redis.ClusterClient).ReloadState(ctx)
				break
			}
		}
	}
}

// nodeFor returns the client of the master that holds key: the store's
// own client on a single server (where Sentinel failover, if any, keeps
// one connection's commands on one master), the slot's master on a
// Cluster, the key's shard on a Ring.
func (s *Store) nodeFor(ctx context.Context, key string) (*redis.Client, error) {
	switch c := s.c.(type) {
	case *redis.Client:
		return c, nil
	case *redis.ClusterClient:
		n, err := c.MasterForKey(ctx, key)
		if err != nil {
			return nil, fmt.Errorf("redisstore: find the master of %q: %w", key, err)
		}
		return n, nil
	case *redis.Ring:
		n, err := c.GetShardClientForKey(key)
		if err != nil {
			return nil, fmt.Errorf("redisstore: find the shard of %q: %w", key, err)
		}
		return n, nil
	}
	return nil, errWaitClient
}

// errWaitClient reports Config.WaitReplicas with a client of a type whose
// nodes the store cannot address.
var errWaitClient = errors.New("redisstore: Config.WaitReplicas needs a *redis.Client, *redis.ClusterClient or *redis.Ring")

// answer hands c's reply to the ops it carried.
func (s *Store) answer(c *call) {
	if c.op != nil {
		c.op.cmd, c.op.err = c.cmd, c.err
		return
	}
	var codes string
	var rerr error
	if c.err == nil {
		var err error
		codes, err = c.cmd.Text()
		switch {
		case err != nil:
			rerr = err
		case len(codes) != len(c.group):
			rerr = fmt.Errorf("%w: %d answers for %d operations", errReply, len(codes), len(c.group))
		}
	}
	for i, o := range c.group {
		switch {
		case c.err != nil:
			o.err = c.err
		case rerr != nil:
			o.rerr = rerr
		default:
			o.code = codes[i]
			if o.code == '1' && o.owned == ownedComplete {
				o.rerr = c.notReplicated
			}
		}
	}
}

// isReply reports whether err is the server's answer to one command (an
// error reply, or redis.Nil for a nil reply) rather than a failure to
// reach the server.
func isReply(err error) bool {
	if err == redis.Nil { //nolint:errorlint // the common case, without errors.As's allocation
		return true
	}
	if _, ok := err.(redis.Error); ok { //nolint:errorlint // likewise; wrapped ones below
		return true
	}
	var rerr redis.Error
	return errors.Is(err, redis.Nil) || errors.As(err, &rerr)
}
