//go:build linux

package guestinit

import (
	"bytes"
	"strings"
	"testing"
)

func TestReadUntilNUL(t *testing.T) {
	json := `{"version":1}`
	disk := append([]byte(json), make([]byte, 3*4096)...)
	got, err := readUntilNUL(bytes.NewReader(disk), MaxConfigSize)
	if err != nil {
		t.Fatal(err)
	}
	// It stops at the first block holding a NUL, not at the end of the disk.
	if len(got) != 4096 || !bytes.HasPrefix(got, []byte(json)) {
		t.Errorf("read %d bytes, want the first 4096", len(got))
	}
	short, err := readUntilNUL(strings.NewReader(json), MaxConfigSize)
	if err != nil || string(short) != json {
		t.Errorf("short input: %q, %v", short, err)
	}
	big, err := readUntilNUL(bytes.NewReader(bytes.Repeat([]byte{'x'}, 3*4096)), 8192)
	if err != nil || len(big) != 8192 {
		t.Errorf("capped read: %d bytes, %v", len(big), err)
	}
}

func TestHasWord(t *testing.T) {
	if !hasWord("console=ttyS0 stack.debug quiet\n", "stack.debug") || hasWord("stack.debugx", "stack.debug") {
		t.Error("hasWord")
	}
}
