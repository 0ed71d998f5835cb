package termsafe

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestString(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"plain text, 100%", "plain text, 100%"},
		{"tab\tand\nnewline", "tab\tand\nnewline"},
		{"\x1b]0;pwned\x07title", `\x1b]0;pwned\x07title`},           // OSC 0: the window title
		{"\x1b]52;c;cm0gLXJmIH4K\x07", `\x1b]52;c;cm0gLXJmIH4K\x07`}, // OSC 52: the clipboard
		{"\x1b[2J\x1b[H$ ", `\x1b[2J\x1b[H$ `},                       // clear the screen, home
		{"cr\rover", `cr\x0dover`},                                   // overwrite the line
		{"del\x7f", `del\x7f`},                                       //
		{"c1 \u009b2J csi", `c1 \u009b2J csi`},                       // C1 CSI, as UTF-8
		{"raw \x9b2J", `raw \x9b2J`},                                 // C1 CSI, a raw byte
		{"bad \xff\xfe utf8", `bad \xff\xfe utf8`},                   //
		{"safe\u202egnp.exe", `safe\u202egnp.exe`},                   // right-to-left override
		{"héllo wörld ✔ 日本", "héllo wörld ✔ 日本"},                     // printable UTF-8 passes
		{"", ""},
	} {
		if got := String(c.in); got != c.want {
			t.Errorf("String(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// Whatever the input, the output holds no byte a terminal acts on but tab
// and newline, and is valid UTF-8.
func FuzzString(f *testing.F) {
	for _, s := range []string{"\x1b[31mred", "\xc2\x9b", "\u202e", "ok\n", "\xff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got := String(s)
		if !utf8.ValidString(got) {
			t.Fatalf("String(%q) = %q: not UTF-8", s, got)
		}
		for _, r := range got {
			if r < 0x20 && r != '\t' && r != '\n' || r >= 0x7f && r < 0xa0 || reorders(r) {
				t.Fatalf("String(%q) = %q keeps %U", s, got, r)
			}
		}
		var b bytes.Buffer
		w := NewWriter(&b)
		for i := 0; i < len(s); i += 3 { // a stream cut anywhere says the same
			w.Write([]byte(s[i:min(i+3, len(s))]))
		}
		w.Flush()
		if b.String() != got {
			t.Fatalf("Writer in 3-byte writes: %q, String: %q", b.String(), got)
		}
	})
}

// A character cut between writes is not escaped for it.
func TestWriterHoldsACutCharacter(t *testing.T) {
	var b bytes.Buffer
	w := NewWriter(&b)
	in := "✔ done\x1b[2J"
	for i := range len(in) {
		if n, err := w.Write([]byte{in[i]}); n != 1 || err != nil {
			t.Fatalf("Write = %d, %v", n, err)
		}
	}
	w.Flush()
	if want := `✔ done\x1b[2J`; b.String() != want {
		t.Errorf("byte by byte: %q, want %q", b.String(), want)
	}
	b.Reset()
	w.Write([]byte("cut \xe2\x9c"))
	w.Flush()
	if want := `cut \xe2\x9c`; b.String() != want {
		t.Errorf("a character cut at the end: %q, want %q", b.String(), want)
	}
	if strings.Contains(String("x"), `\`) {
		t.Error("String escaped plain text")
	}
}
