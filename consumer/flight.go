package consumer

import (
	"hash/maphash"
	"sync"
)

// flights tracks the keys whose handler is running in this pipeline, so
// that a duplicate answered Busy can be checked again as soon as the
// original ends instead of after its lease remainder. It is sharded to keep
// the per-message cost (one map insert and delete under a shard lock) off
// the workers' shared path.
type flights struct {
	seed   maphash.Seed
	shards [flightShards]flightShard
}

const flightShards = 32

type flightShard struct {
	mu sync.Mutex
	m  map[string]*flight
	_  [40]byte // keep shards on separate cache lines
}

// flight is one running handler. done is made only when a duplicate asks
// to wait for it, and closed when the handler's claim is settled.
type flight struct {
	done chan struct{}
}

func (fs *flights) init() {
	fs.seed = maphash.MakeSeed()
	for i := range fs.shards {
		fs.shards[i].m = make(map[string]*flight)
	}
}

func (fs *flights) shard(key string) *flightShard {
	return &fs.shards[maphash.String(fs.seed, key)%flightShards]
}

// start records that key's handler runs here.
func (fs *flights) start(key string) *flight {
	f := &flight{}
	sh := fs.shard(key)
	sh.mu.Lock()
	sh.m[key] = f
	sh.mu.Unlock()
	return f
}

// end removes f and wakes its waiters.
func (fs *flights) end(key string, f *flight) {
	sh := fs.shard(key)
	sh.mu.Lock()
	if sh.m[key] == f {
		delete(sh.m, key)
	}
	if f.done != nil {
		close(f.done)
	}
	sh.mu.Unlock()
}

// wait returns a channel closed when key's running handler ends, or nil
// when none runs here.
func (fs *flights) wait(key string) <-chan struct{} {
	sh := fs.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	f := sh.m[key]
	if f == nil {
		return nil
	}
	if f.done == nil {
		f.done = make(chan struct{})
	}
	return f.done
}
