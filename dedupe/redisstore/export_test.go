package redisstore

// Queued returns how many calls wait for a pipeline, for tests that must
// know a batch has formed before letting the one in flight finish.
func (s *Store) Queued() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.queue)
}

// Slot is slot, for a test against the cluster's CLUSTER KEYSLOT.
func Slot(key string) uint16 { return slot(key) }
