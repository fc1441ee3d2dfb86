package httpdedupe

import (
	"encoding/binary"
	"errors"
	"net/http"
)

// envelopeVersion is the first byte of a stored response.
const envelopeVersion = 1

const flagTruncated = 1

// errCorrupt reports a stored response that cannot be decoded.
var errCorrupt = errors.New("httpdedupe: stored response is corrupt")

// stored is a recorded response.
type stored struct {
	status    int
	header    http.Header
	body      []byte
	truncated bool
}

// encode writes s as: version byte, flags byte, uvarint status, uvarint
// header count, then per header a length-prefixed name, a value count and
// length-prefixed values; the body is the rest.
func (s *stored) encode() []byte {
	size := 16 + len(s.body)
	for k, vs := range s.header {
		size += len(k) + 10
		for _, v := range vs {
			size += len(v) + 5
		}
	}
	b := make([]byte, 0, size)
	var flags byte
	if s.truncated {
		flags |= flagTruncated
	}
	b = append(b, envelopeVersion, flags)
	b = binary.AppendUvarint(b, uint64(s.status))
	b = binary.AppendUvarint(b, uint64(len(s.header)))
	for k, vs := range s.header {
		b = appendString(b, k)
		b = binary.AppendUvarint(b, uint64(len(vs)))
		for _, v := range vs {
			b = appendString(b, v)
		}
	}
	return append(b, s.body...)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func decode(b []byte) (*stored, error) {
	if len(b) < 2 || b[0] != envelopeVersion {
		return nil, errCorrupt
	}
	s := &stored{truncated: b[1]&flagTruncated != 0}
	d := decoder{b: b[2:]}
	status := d.uvarint()
	if status < 100 || status > 999 {
		return nil, errCorrupt
	}
	s.status = int(status)
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		return nil, errCorrupt
	}
	s.header = make(http.Header, n)
	for range n {
		k := d.string()
		nv := d.uvarint()
		if d.err || nv > uint64(len(d.b)) {
			return nil, errCorrupt
		}
		vs := make([]string, 0, nv)
		for range nv {
			vs = append(vs, d.string())
		}
		s.header[k] = vs
	}
	if d.err {
		return nil, errCorrupt
	}
	s.body = d.b
	return s, nil
}

type decoder struct {
	b   []byte
	err bool
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = true
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) string() string {
	n := d.uvarint()
	if d.err || n > uint64(len(d.b)) {
		d.err = true
		return ""
	}
	s := string(d.b[:n])
	d.b = d.b[n:]
	return s
}
