package guestinit

import (
	"strings"
	"testing"

	"github.com/stackvm/stack/guestproto"
)

func TestLineReaderSplitsAcrossReads(t *testing.T) {
	var lr lineReader
	msgs, errs := lr.feed([]byte(`{"type":"powe`))
	if len(msgs) != 0 || len(errs) != 0 {
		t.Fatalf("partial line produced %v %v", msgs, errs)
	}
	msgs, errs = lr.feed([]byte("roff\"}\n\n{\"type\":\"x\",\"id\":\"7\"}\nnot json\n{}\n"))
	if len(msgs) != 2 || msgs[0].Type != guestproto.TypePoweroff || msgs[1].ID != "7" {
		t.Errorf("messages = %+v", msgs)
	}
	if len(errs) != 2 || !strings.Contains(errs[0].Error(), "bad message") || !strings.Contains(errs[1].Error(), "without type") {
		t.Errorf("errors = %v", errs)
	}
}

func TestLineReaderDropsOverlongLine(t *testing.T) {
	var lr lineReader
	big := make([]byte, maxLine+10)
	for i := range big {
		big[i] = 'a'
	}
	if msgs, errs := lr.feed(big); len(msgs)+len(errs) != 0 {
		t.Fatalf("unterminated line produced output")
	}
	if len(lr.buf) > maxLine {
		t.Fatalf("buffer grew to %d", len(lr.buf))
	}
	msgs, errs := lr.feed([]byte("tail\n{\"type\":\"poweroff\"}\n"))
	if len(errs) != 1 || len(msgs) != 1 || msgs[0].Type != guestproto.TypePoweroff {
		t.Errorf("after overflow: msgs %v errs %v", msgs, errs)
	}
}

func TestEncodeMessage(t *testing.T) {
	b := encodeMessage(guestproto.Message{Type: guestproto.TypeExit, Status: &guestproto.Status{Exited: true, ExitCode: 3}})
	want := `{"type":"exit","status":{"ready":false,"exited":true,"exit_code":3}}` + "\n"
	if string(b) != want {
		t.Errorf("encodeMessage = %s, want %s", b, want)
	}
}

func FuzzLineReader(f *testing.F) {
	f.Add([]byte("{\"type\":\"poweroff\"}\n"), []byte("{\"ty"))
	f.Add([]byte("\n\n\x00\xff"), []byte("pe\":\"x\"}\n"))
	f.Fuzz(func(t *testing.T, a, b []byte) {
		var lr lineReader
		lr.feed(a)
		msgs, _ := lr.feed(b)
		for _, m := range msgs {
			if m.Type == "" {
				t.Fatal("message without type delivered")
			}
		}
		if len(lr.buf) > maxLine {
			t.Fatalf("buffer %d > maxLine", len(lr.buf))
		}
	})
}
