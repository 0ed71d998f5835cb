package qemu

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestAgentChannel runs the host side of the agent channel against a fake
// QEMU chardev socket that appears only after the channel starts dialling.
func TestAgentChannel(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	exited, closed := make(chan struct{}), make(chan struct{})
	a := newAgentChannel(path, exited, closed, slog.Default())

	// Send before the guest side exists waits for the connection.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	if err := a.Send(ctx, []byte(`{"type":"poweroff"}`)); err == nil {
		t.Error("send without a connection succeeded")
	}
	cancel()

	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	r := bufio.NewReader(conn)
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if line, err := r.ReadString('\n'); err != nil || line != `{"type":"hello"}`+"\n" {
		t.Fatalf("first host line %q, %v; want a hello request", line, err)
	}

	long := `{"type":"log","text":"` + strings.Repeat("x", 100<<10) + `"}`
	conn.Write([]byte(`{"type":"hello","status":{"ready":true,"exited":false,"exit_code":0}}` + "\n\n" + long + "\n" + `{"type":"exit"`))
	want := []string{`{"type":"hello","status":{"ready":true,"exited":false,"exit_code":0}}`, long}
	for i, w := range want {
		select {
		case got := <-a.Events():
			if string(got) != w {
				t.Fatalf("event %d = %.80q..., want %.80q...", i, got, w)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("event %d never came", i)
		}
	}

	if err := a.Send(context.Background(), []byte("{\n  \"type\": \"poweroff\"\n}")); err != nil {
		t.Fatal(err)
	}
	if line, err := r.ReadString('\n'); err != nil || line != `{"type":"poweroff"}`+"\n" {
		t.Fatalf("guest got %q, %v; want one compact line", line, err)
	}
	if err := a.Send(context.Background(), []byte("not json\n{}")); err == nil {
		t.Error("non-JSON message sent")
	}

	// The VMM exiting closes Events (after the unterminated last line).
	conn.Close()
	select {
	case got := <-a.Events():
		if string(got) != `{"type":"exit"` {
			t.Errorf("last partial line = %q", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("partial last line never came")
	}
	close(exited)
	select {
	case _, ok := <-a.Events():
		if ok {
			t.Error("unexpected event after EOF")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("events not closed after the guest side went away")
	}
	<-a.done
	if err := a.Send(context.Background(), []byte(`{}`)); err == nil {
		t.Error("send after close succeeded")
	}
	close(closed)
}

func TestLineReaderLimit(t *testing.T) {
	r := newLineReader(strings.NewReader(strings.Repeat("y", 5000)+"\nok\n"), 4096)
	if _, err := r.next(); err == nil {
		t.Fatal("over-long line accepted")
	}
}

// A guest that stops reading its port fills the socket into QEMU and
// blocks the writer. Whoever sends next gives up with its own context
// instead of queueing behind the blocked write forever (the stop path's
// poweroff), cancelling the blocked writer's context ends its write, and
// once the guest reads again the next message first finishes the line
// that was cut.
func TestAgentSendToAGuestThatStopsReading(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	exited, closed := make(chan struct{}), make(chan struct{})
	defer close(closed)
	a := newAgentChannel(path, exited, closed, slog.Default())
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close() // and never read from

	// Far more than a unix socket buffers.
	big := []byte(`{"type":"exec-input","body":{"data":"` + strings.Repeat("A", 8<<20) + `"}}`)
	bctx, bcancel := context.WithCancel(context.Background())
	blocked := make(chan error, 1)
	go func() { blocked <- a.Send(bctx, big) }()
	// Wait until it holds the channel (a fixed sleep lost that race on a
	// loaded machine, and the next send went first).
	for deadline := time.Now().Add(10 * time.Second); len(a.wsem) == 0; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the big send never took the channel")
		}
	}
	select {
	case err := <-blocked:
		t.Fatalf("a %d-byte send to a guest that does not read returned: %v", len(big), err)
	default:
	}

	start := time.Now()
	next := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		next <- a.Send(ctx, []byte(`{"type":"poweroff"}`))
	}()
	select {
	case err := <-next:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("send behind a blocked writer: %v, want its deadline exceeded", err)
		}
		t.Logf("a send behind a blocked writer gave up after %s", time.Since(start).Round(time.Millisecond))
	case <-time.After(10 * time.Second):
		t.Fatal("a send with a 200ms deadline still waits behind a blocked writer after 10s")
	}

	bcancel()
	select {
	case err := <-blocked:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("blocked send after its context was cancelled: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancelling its context did not end a blocked write")
	}
	// The guest reads again: after the host's hello request, it gets the
	// cut line whole, then the next.
	lines := make(chan string, 3)
	go func() {
		r := bufio.NewReaderSize(conn, 64<<10)
		for range 3 {
			line, err := r.ReadString('\n')
			if err != nil {
				close(lines)
				return
			}
			lines <- line
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := a.Send(ctx, []byte(`{"type":"poweroff"}`)); err != nil {
		t.Fatalf("send once the guest reads again: %v", err)
	}
	if got := <-lines; got != `{"type":"hello"}`+"\n" {
		t.Errorf("first line %.80q, want the hello request", got)
	}
	if got := <-lines; got != string(big)+"\n" {
		t.Errorf("the cut line reached the guest as %d bytes, want %d whole", len(got), len(big)+1)
	}
	if got := <-lines; got != `{"type":"poweroff"}`+"\n" {
		t.Errorf("the message after the cut line: %.80q", got)
	}
}
