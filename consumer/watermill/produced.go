package idemqwm

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/ThreeDotsLabs/watermill/message"
)

// producedMagic starts a dedupe result that holds produced messages, so
// that results stored by other handlers sharing the namespace are never
// mistaken for them.
var producedMagic = []byte("idemqwm/produced/v1\n")

// storedMessage is one produced message as stored in the dedupe record.
type storedMessage struct {
	UUID     string            `json:"uuid"`
	Metadata map[string]string `json:"metadata,omitempty"`
	Payload  []byte            `json:"payload"`
}

// encodeProduced encodes msgs for the dedupe record.
func encodeProduced(msgs []*message.Message) ([]byte, error) {
	s := make([]storedMessage, len(msgs))
	for i, m := range msgs {
		if m == nil {
			return nil, fmt.Errorf("produced message %d is nil", i)
		}
		s[i] = storedMessage{UUID: m.UUID, Metadata: m.Metadata, Payload: m.Payload}
	}
	b, err := json.Marshal(s)
	if err != nil {
		return nil, err
	}
	return append(append([]byte(nil), producedMagic...), b...), nil
}

// decodeProduced decodes what encodeProduced stored. ok is false when data
// holds no produced messages (empty, or another handler's result).
func decodeProduced(data []byte) (msgs []*message.Message, ok bool, err error) {
	rest, found := bytes.CutPrefix(data, producedMagic)
	if !found {
		return nil, false, nil
	}
	var s []storedMessage
	if err := json.Unmarshal(rest, &s); err != nil {
		return nil, false, fmt.Errorf("idemqwm: stored produced messages: %w", err)
	}
	msgs = make([]*message.Message, len(s))
	for i, x := range s {
		m := message.NewMessage(x.UUID, x.Payload)
		for k, v := range x.Metadata {
			m.Metadata.Set(k, v)
		}
		msgs[i] = m
	}
	return msgs, true, nil
}
