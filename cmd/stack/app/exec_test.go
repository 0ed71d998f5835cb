package app

import (
	"bytes"
	"context"
	"os"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/stackvm/stack/internal/pty"
)

// -t needs a terminal on stdin, as docker's -t does.
func TestExecTTYNeedsATerminal(t *testing.T) {
	dir := writeStack(t, stackHCL)
	r := run(t, dir, "--state-dir", t.TempDir(), "exec", "-it", "web-0", "--", "sh")
	if r.code != 1 || !strings.Contains(r.stderr, "the input device is not a TTY") {
		t.Fatalf("exec -it without a terminal: %+v", r)
	}
}

// The terminal is put back as it was when exec fails (here: no such VM),
// after having been in raw mode.
func TestExecRestoresTheTerminal(t *testing.T) {
	m, s, err := pty.Open()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	defer s.Close()
	before, err := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	dir := writeStack(t, stackHCL)
	wd, _ := os.Getwd()
	if err := os.Chdir(dir); err != nil {
		t.Fatal(err)
	}
	defer os.Chdir(wd)
	var errb bytes.Buffer
	code := Main(context.Background(), Streams{In: s, Out: &errb, Err: &errb},
		[]string{"--state-dir", t.TempDir(), "exec", "-it", "nope", "--", "sh"})
	if code != 1 || !strings.Contains(errb.String(), `no VM named "nope"`) {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	after, err := unix.IoctlGetTermios(int(s.Fd()), unix.TCGETS)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(before, after) {
		t.Fatalf("terminal modes changed:\n%+v\n%+v", before, after)
	}
}
