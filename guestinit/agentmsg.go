package guestinit

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/stackvm/stack/guestproto"
)

// maxLine caps one incoming agent line; longer input is discarded up to the
// next newline and reported, so a confused host cannot grow the buffer.
const maxLine = 1 << 20

// lineReader splits the agent port's byte stream into Messages.
type lineReader struct {
	buf      []byte
	overflow bool
}

// feed appends data and returns the complete messages in it, plus an error
// for each line that was not a valid message.
func (l *lineReader) feed(data []byte) ([]guestproto.Message, []error) {
	l.buf = append(l.buf, data...)
	var msgs []guestproto.Message
	var errs []error
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			if len(l.buf) > maxLine {
				l.buf = l.buf[:0]
				l.overflow = true
			}
			return msgs, errs
		}
		line := bytes.TrimSpace(l.buf[:i])
		l.buf = l.buf[i+1:]
		if l.overflow {
			l.overflow = false
			errs = append(errs, fmt.Errorf("agent: dropped a line longer than %d bytes", maxLine))
			continue
		}
		if len(line) == 0 {
			continue
		}
		var m guestproto.Message
		if err := json.Unmarshal(line, &m); err != nil {
			errs = append(errs, fmt.Errorf("agent: bad message: %w", err))
			continue
		}
		if m.Type == "" {
			errs = append(errs, fmt.Errorf("agent: message without type"))
			continue
		}
		msgs = append(msgs, m)
	}
}

// encodeMessage is one newline-terminated line.
func encodeMessage(m guestproto.Message) []byte {
	b, err := json.Marshal(m)
	if err != nil {
		// Message holds only strings, ints, maps of strings and raw JSON
		// the init produced itself.
		b, _ = json.Marshal(guestproto.Message{Type: guestproto.TypeError, Error: "encode message: " + err.Error()})
	}
	return append(b, '\n')
}
