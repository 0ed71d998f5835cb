package qemu

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDialQMPHasADeadline dials a QMP socket that accepts but never greets
// (QEMU serving another client) with a context without deadline, as a
// re-adopting supervisor does: the dial must end, saying what did not
// answer, instead of blocking for ever.
func TestDialQMPHasADeadline(t *testing.T) {
	path := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", path)
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
			defer c.Close() // held, silent
		}
	}()
	defer func(d time.Duration) { qmpDialTimeout = d }(qmpDialTimeout)
	qmpDialTimeout = 200 * time.Millisecond
	_, err = dialQMP(context.Background(), path, nil)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "did not answer on its QMP socket") {
		t.Fatalf("dialQMP = %v, want the QMP deadline's error", err)
	}
}
