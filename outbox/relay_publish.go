package outbox

import "context"

// publish sends rows with Nats-Msg-Id = id and waits for their PubAcks. Rows
// without an ordering key go out together in the first wave. Rows with a key
// go out one per key per wave, in sequence order, and a key's next row is
// sent only after its previous row was acknowledged or rejected permanently:
// a transient failure stops that key for this round, so a later row can never
// overtake an earlier one. The result has one entry per row; nil means the
// row was not attempted and stays pending as it was.
func (r *Relay) publish(ctx context.Context, rows []row) ([]*outcome, error) {
	outs := make([]*outcome, len(rows))
	slots := make([]outcome, len(rows)) // outs[i] points into slots[i]
	byKey := map[string][]int{}
	var keys []string
	var wave []int
	for i, x := range rows {
		if x.OrderingKey == "" {
			wave = append(wave, i)
			continue
		}
		if _, ok := byKey[x.OrderingKey]; !ok {
			keys = append(keys, x.OrderingKey)
		}
		byKey[x.OrderingKey] = append(byKey[x.OrderingKey], i)
	}
	for _, k := range keys {
		wave = append(wave, byKey[k][0])
	}
	next := map[string]int{}
	for len(wave) > 0 {
		if err := r.publishWave(ctx, rows, wave, outs, slots); err != nil {
			return nil, err
		}
		wave = wave[:0]
		for _, k := range keys {
			idx := byKey[k]
			n := next[k]
			if n >= len(idx) {
				continue
			}
			o := outs[idx[n]]
			if o == nil || (o.err != nil && !o.permanent) {
				next[k] = len(idx) // stopped: the rest stay pending
				continue
			}
			n++
			next[k] = n
			if n < len(idx) {
				wave = append(wave, idx[n])
			}
		}
	}
	return outs, nil
}

// publishWave publishes rows[idx...] through the Publisher, waiting at
// most PublishTimeout for their acknowledgements; each row's outcome is
// written to slots[i] and outs[i] set to point at it.
func (r *Relay) publishWave(ctx context.Context, rows []row, idx []int, outs []*outcome, slots []outcome) error {
	msgs := make([]Outgoing, 0, len(idx))
	sent := make([]int, 0, len(idx))
	for _, i := range idx {
		x := rows[i]
		h, err := decodeHeader(x.Header)
		if err != nil {
			slots[i] = outcome{err: err, permanent: true}
			outs[i] = &slots[i]
			continue
		}
		msgs = append(msgs, Outgoing{ID: x.ID, Subject: x.Subject, Header: h, Data: x.Data})
		sent = append(sent, i)
	}
	if len(msgs) == 0 {
		return nil
	}
	var octx []context.Context
	if r.obs != nil {
		octx = r.startPublish(ctx, msgs)
	}
	res := make([]PublishResult, len(msgs))
	if err := r.pub.Publish(ctx, msgs, res, r.o.PublishTimeout); err != nil {
		if r.obs != nil {
			for j := range msgs {
				r.obs.EndPublish(octx[j], &msgs[j], PublishResult{Err: err}, 0)
			}
		}
		return err
	}
	if r.obs != nil {
		r.endPublish(octx, rows, sent, msgs, res)
	}
	for j, i := range sent {
		x := res[j]
		slots[i] = outcome{err: x.Err, permanent: x.Err != nil && x.Rejected, duplicate: x.Duplicate, stream: x.Stream}
		outs[i] = &slots[i]
	}
	return nil
}
