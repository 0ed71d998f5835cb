//go:build linux

package pty

import (
	"bufio"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A child that takes the slave as its controlling terminal sees it as its
// tty with the size set on the master, and its output comes out of the
// master.
func TestOpenRunsAChildOnTheTerminal(t *testing.T) {
	m, s, err := Open()
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if !strings.HasPrefix(s.Name(), "/dev/pts/") {
		t.Fatalf("slave %q", s.Name())
	}
	if err := SetSize(m, 33, 101); err != nil {
		t.Fatal(err)
	}
	if r, c, err := Size(s); err != nil || r != 33 || c != 101 {
		t.Fatalf("slave size %dx%d, %v", r, c, err)
	}
	if _, err := exec.LookPath("stty"); err != nil {
		t.Skip("no stty on this host")
	}
	cmd := exec.Command("sh", "-c", "tty; stty size")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = s, s, s
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 0}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	m.SetReadDeadline(time.Now().Add(10 * time.Second))
	var lines []string
	sc := bufio.NewScanner(m)
	for sc.Scan() && len(lines) < 2 {
		lines = append(lines, sc.Text())
	}
	cmd.Wait()
	want := []string{s.Name(), "33 101"} // (the scanner drops the terminal's \r)
	if strings.Join(lines, "|") != strings.Join(want, "|") {
		t.Fatalf("child printed %q, want %q", lines, want)
	}
}

func TestSetSizeOnAClosedFile(t *testing.T) {
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := SetSize(f, 1, 1); err == nil {
		t.Fatal("no error for a closed file")
	}
}
