//go:build linux

package guestinit

import (
	"bufio"
	"encoding/json"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stackvm/stack/guestproto"
)

// The agent on a socketpair: a connected socket behaves like a virtio-serial
// port with a host attached, and a closed peer like a host that went away
// (POLLHUP, read returns 0). The real port is exercised by the boot tests.
func TestAgentOverSocketpair(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	host := os.NewFile(uintptr(fds[1]), "host")
	got := make(chan guestproto.Message, 4)
	status := guestproto.Status{Ready: true, Addresses: map[string]string{"52:54:00:12:34:56": "10.42.0.2"}}
	a, err := NewAgent("", func() guestproto.Status { return status }, func(m guestproto.Message) { got <- m }, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.serve(fds[0]) }()
	t.Cleanup(func() {
		a.Close()
		<-done
		unix.Close(fds[0])
	})

	if err := unix.SetNonblock(fds[1], false); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(host)
	read := func() guestproto.Message {
		t.Helper()
		host.SetReadDeadline(time.Now().Add(5 * time.Second))
		line, err := r.ReadBytes('\n')
		if err != nil {
			t.Fatalf("read from agent: %v", err)
		}
		var m guestproto.Message
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("agent sent %q: %v", line, err)
		}
		return m
	}
	hello := read()
	if hello.Type != guestproto.TypeHello || hello.Status == nil || !hello.Status.Ready || hello.Status.Addresses["52:54:00:12:34:56"] != "10.42.0.2" {
		t.Fatalf("first message = %+v, want hello with the status", hello)
	}
	a.Send(guestproto.Message{Type: guestproto.TypeExit, Status: &guestproto.Status{Exited: true, ExitCode: 3}})
	if m := read(); m.Type != guestproto.TypeExit || m.Status.ExitCode != 3 {
		t.Fatalf("got %+v, want exit 3", m)
	}
	// A host hello is answered with a hello, not passed on.
	if _, err := host.Write([]byte("{\"type\":\"hello\"}\n")); err != nil {
		t.Fatal(err)
	}
	if m := read(); m.Type != guestproto.TypeHello || m.Status == nil || !m.Status.Ready {
		t.Fatalf("answer to a host hello = %+v", m)
	}
	if _, err := host.Write([]byte("{\"type\":\"poweroff\"}\n")); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m.Type != guestproto.TypePoweroff {
			t.Fatalf("agent delivered %+v", m)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("agent did not deliver the host's poweroff")
	}
	// The host goes away: the agent must notice and drop what it is sent.
	host.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		a.mu.Lock()
		conn := a.conn
		a.mu.Unlock()
		if !conn {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("agent did not notice the host leaving")
		}
		time.Sleep(10 * time.Millisecond)
	}
	a.Send(guestproto.Message{Type: guestproto.TypeLog, Text: "nobody listens"})
	a.mu.Lock()
	n := len(a.queue)
	a.mu.Unlock()
	if n != 0 {
		t.Errorf("message queued with no host connected")
	}
}
