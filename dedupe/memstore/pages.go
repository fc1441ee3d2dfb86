package memstore

// Records live in pages of pageSize, so that a growing shard never copies
// them and holds at most one page it does not use. The first page grows by
// doubling, so that a small store stays small.
const (
	pageBits = 10
	pageSize = 1 << pageBits
)

// recs is a shard's records, numbered densely from 0.
type recs struct {
	pages [][]rec // all full but the last
	n     int
	spare []rec // an emptied page, kept for the next one
}

func (t *recs) len() int { return t.n }

// at returns record number i.
func (t *recs) at(i int) *rec { return &t.pages[i>>pageBits][i&(pageSize-1)] }

// push appends r and returns its number.
func (t *recs) push(r rec) int {
	p := len(t.pages) - 1
	if p < 0 || len(t.pages[p]) == pageSize {
		page := t.spare
		t.spare = nil
		if page == nil {
			size := pageSize
			if p < 0 {
				size = 8
			}
			page = make([]rec, 0, size)
		}
		t.pages = append(t.pages, page)
		p++
	}
	t.pages[p] = append(t.pages[p], r)
	t.n++
	return t.n - 1
}

// pop removes the last record.
func (t *recs) pop() {
	p := len(t.pages) - 1
	t.pages[p] = t.pages[p][:len(t.pages[p])-1]
	t.n--
	if len(t.pages[p]) == 0 && p > 0 {
		t.spare = t.pages[p]
		t.pages[p] = nil
		t.pages = t.pages[:p]
	}
}

// shrink gives back the spare page and most of an oversized first page.
func (t *recs) shrink() {
	t.spare = nil
	if len(t.pages) == 1 && cap(t.pages[0]) > 4*t.n+64 {
		t.pages[0] = append(make([]rec, 0, 2*t.n), t.pages[0]...)
	}
}
