// Package termsafe makes text that comes from a guest safe to show on the
// user's terminal. A guest's console output, its error strings and its
// exec output are the guest's to choose, and a terminal obeys control
// sequences in what it prints: a guest could retitle the window (OSC 0),
// write the clipboard (OSC 52), clear the screen (CSI 2J) or paint a
// fake prompt. So every control character but tab and newline (C0, DEL,
// C1), the Unicode controls that reorder text on screen (bidirectional
// overrides and isolates), and every byte that is not UTF-8 come out as
// visible escapes: \x1b, \u009b, \u202e, \xff. The rest, printable UTF-8,
// passes unchanged.
//
// `stack console` and `exec -t` do not use it: there the terminal is the
// guest's by design.
package termsafe

import (
	"fmt"
	"io"
	"unicode/utf8"
)

// String returns s with what a terminal would act on escaped.
func String(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 && c != '\t' && c != '\n' || c >= 0x7f {
			return string(Append(make([]byte, 0, len(s)+16), []byte(s)))
		}
	}
	return s // printable ASCII: the common case costs nothing
}

// Append appends p to dst, escaped.
func Append(dst, p []byte) []byte {
	for len(p) > 0 {
		r, n := utf8.DecodeRune(p)
		switch {
		case r == utf8.RuneError && n <= 1:
			dst = fmt.Appendf(dst, `\x%02x`, p[0])
		case r == '\t' || r == '\n':
			dst = append(dst, p[:n]...)
		case r < 0x20 || r == 0x7f:
			dst = fmt.Appendf(dst, `\x%02x`, r)
		case r >= 0x80 && r < 0xa0 || reorders(r):
			dst = fmt.Appendf(dst, `\u%04x`, r)
		default:
			dst = append(dst, p[:n]...)
		}
		p = p[n:]
	}
	return dst
}

// reorders reports whether r is a bidirectional formatting control: it
// changes the order in which the text around it is shown.
func reorders(r rune) bool {
	return r == 0x061c || r == 0x200e || r == 0x200f ||
		r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069
}

// Writer escapes what is written through it to w. A UTF-8 sequence split
// across writes is held until its end comes, so a character is never
// escaped as broken for being cut; Flush writes what is held.
type Writer struct {
	w    io.Writer
	hold []byte
	buf  []byte
}

// NewWriter returns a Writer that writes to w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// Write escapes p and writes it; it reports len(p) when all went out.
func (t *Writer) Write(p []byte) (int, error) {
	data := p
	if len(t.hold) > 0 {
		data = append(t.hold, p...)
		t.hold = nil
	}
	// Hold back the start of a character that the next write completes.
	cut := len(data)
	for i := len(data) - 1; i >= 0 && i >= len(data)-utf8.UTFMax+1; i-- {
		if utf8.RuneStart(data[i]) {
			if !utf8.FullRune(data[i:]) {
				cut = i
			}
			break
		}
	}
	t.hold = append(t.hold, data[cut:]...)
	t.buf = Append(t.buf[:0], data[:cut])
	if _, err := t.w.Write(t.buf); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Flush writes what a write left held (an incomplete character), escaped.
func (t *Writer) Flush() error {
	if len(t.hold) == 0 {
		return nil
	}
	t.buf = Append(t.buf[:0], t.hold)
	t.hold = nil
	_, err := t.w.Write(t.buf)
	return err
}
