package client

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"

	"github.com/stackvm/stack/internal/filenames"
)

// TestDialDyingSupervisor: a supervisor that dies with the ping unread
// resets the connection. That is no supervisor (the next up starts one),
// not an error that stops every command.
func TestDialDyingSupervisor(t *testing.T) {
	run := t.TempDir()
	os.Chmod(run, 0o700) // a runtime root is private (fsutil.CheckPrivate)
	if err := os.MkdirAll(filenames.NamespaceRuntime(run, "ns"), 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", filenames.SupervisorSocketPath(run, "ns"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 1)
			c.Read(buf) // the request arrived; the rest is left unread
			c.Close()   // unread data: the client's read gets ECONNRESET
		}
	}()
	_, err = Dial(context.Background(), run, t.TempDir(), "ns")
	if !errors.Is(err, ErrNotRunning) {
		t.Fatalf("Dial = %v, want ErrNotRunning", err)
	}
}
