package qmp

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const greeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian"}, "capabilities": ["oob"]}}`

// fakeQMP is the server side of one connection, driven step by step by the
// test.
type fakeQMP struct {
	t    *testing.T
	conn net.Conn
	r    *bufio.Reader
}

type cmdIn struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
}

func (f *fakeQMP) send(s string) {
	if _, err := f.conn.Write([]byte(s + "\n")); err != nil {
		f.t.Errorf("fake qmp write: %v", err)
	}
}

func (f *fakeQMP) recv() cmdIn {
	line, err := f.r.ReadBytes('\n')
	if err != nil {
		f.t.Errorf("fake qmp read: %v", err)
		return cmdIn{}
	}
	var c cmdIn
	if err := json.Unmarshal(line, &c); err != nil {
		f.t.Errorf("fake qmp: bad command %q: %v", line, err)
	}
	return c
}

// waitClose returns once the client has closed the connection.
func (f *fakeQMP) waitClose() {
	for {
		if _, err := f.r.ReadBytes('\n'); err != nil {
			return
		}
	}
}

func (f *fakeQMP) reply(c cmdIn, body string) {
	f.send(`{"return": ` + body + `, "id": ` + string(c.ID) + `}`)
}

// serve listens on a unix socket in a temp dir, runs script on the first
// connection after the handshake, and returns a connected client.
func serve(t *testing.T, script func(f *fakeQMP)) *Client {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err := ln.Accept()
		ln.Close()
		if err != nil {
			t.Errorf("accept: %v", err)
			return
		}
		defer conn.Close()
		f := &fakeQMP{t: t, conn: conn, r: bufio.NewReader(conn)}
		f.send(greeting)
		c := f.recv()
		if c.Execute != "qmp_capabilities" {
			t.Errorf("first command %q, want qmp_capabilities", c.Execute)
			return
		}
		f.reply(c, "{}")
		script(f)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		c.Close()
		<-done
	})
	return c
}

func TestOutOfOrderRepliesAndInterleavedEvents(t *testing.T) {
	release := make(chan struct{})
	c := serve(t, func(f *fakeQMP) {
		got := map[string]cmdIn{}
		for range 3 {
			cmd := f.recv()
			got[cmd.Execute] = cmd
		}
		f.send(`{"event": "STOP", "timestamp": {"seconds": 1700000000, "microseconds": 250000}}`)
		f.reply(got["query-status"], `{"running": true, "singlestep": false, "status": "running"}`)
		f.send(`{"event": "RESUME", "timestamp": {"seconds": 1700000001, "microseconds": 0}}`)
		f.send(`{"error": {"class": "CommandNotFound", "desc": "The command nope has not been found"}, "id": ` + string(got["nope"].ID) + `}`)
		f.send(`{"event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}, "timestamp": {"seconds": 1700000002, "microseconds": 0}}`)
		f.reply(got["stop"], "{}")
		<-release
	})
	defer close(release)
	if v := c.Greeting().Version.QEMU; v.Major != 7 || v.Minor != 2 || v.Micro != 22 {
		t.Errorf("greeting version = %+v", v)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	type res struct {
		name string
		ret  json.RawMessage
		err  error
	}
	results := make(chan res, 3)
	var status Status
	go func() {
		s, err := c.QueryStatus(ctx)
		status = s
		results <- res{name: "query-status", err: err}
	}()
	go func() {
		r, err := c.Execute(ctx, "nope", map[string]int{"x": 1})
		results <- res{name: "nope", ret: r, err: err}
	}()
	go func() {
		results <- res{name: "stop", err: c.Stop(ctx)}
	}()
	byName := map[string]res{}
	for range 3 {
		r := <-results
		byName[r.name] = r
	}
	if err := byName["query-status"].err; err != nil || !status.Running || status.Status != "running" {
		t.Errorf("query-status = %+v, %v", status, err)
	}
	var qe *Error
	if err := byName["nope"].err; !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Errorf("nope: err = %v, want a *Error of class CommandNotFound", err)
	}
	if err := byName["stop"].err; err != nil {
		t.Errorf("stop: %v", err)
	}

	want := []string{"STOP", "RESUME", "SHUTDOWN"}
	for i, w := range want {
		select {
		case ev := <-c.Events():
			if ev.Name != w {
				t.Fatalf("event %d = %s, want %s", i, ev.Name, w)
			}
			if i == 0 && !ev.Time.Equal(time.Unix(1700000000, 250000000)) {
				t.Errorf("STOP time = %v", ev.Time)
			}
			if w == "SHUTDOWN" {
				d, err := ParseShutdown(ev)
				if err != nil || !d.Guest || d.Reason != "guest-shutdown" {
					t.Errorf("shutdown data = %+v, %v", d, err)
				}
			}
		case <-ctx.Done():
			t.Fatalf("event %s never came", w)
		}
	}
}

func TestArgumentsSent(t *testing.T) {
	got := make(chan cmdIn, 1)
	c := serve(t, func(f *fakeQMP) {
		cmd := f.recv()
		got <- cmd
		f.reply(cmd, `{"ok": 1}`)
		f.waitClose()
	})
	ret, err := c.Execute(context.Background(), "human-monitor-command", map[string]string{"command-line": "info a,b \"c\""})
	if err != nil {
		t.Fatal(err)
	}
	if string(ret) != `{"ok": 1}` {
		t.Errorf("return = %s", ret)
	}
	cmd := <-got
	var args map[string]string
	if err := json.Unmarshal(cmd.Arguments, &args); err != nil || args["command-line"] != `info a,b "c"` {
		t.Errorf("arguments = %s (%v)", cmd.Arguments, err)
	}
}

func TestConnectionLossFailsPendingCommands(t *testing.T) {
	c := serve(t, func(f *fakeQMP) {
		f.recv()
		f.recv()
		f.send(`{"event": "SHUTDOWN", "data": {"guest": false, "reason": "host-signal"}}`)
		// Close without replying: QEMU exited.
	})
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			_, err := c.Execute(context.Background(), "query-status", nil)
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; !errors.Is(err, ErrClosed) {
			t.Errorf("pending command err = %v, want ErrClosed", err)
		}
	}
	<-c.Done()
	if err := c.Err(); !errors.Is(err, ErrClosed) {
		t.Errorf("Err() = %v", err)
	}
	var names []string
	for ev := range c.Events() { // closed after the connection ends
		names = append(names, ev.Name)
	}
	if len(names) != 1 || names[0] != "SHUTDOWN" {
		t.Errorf("events = %v, want [SHUTDOWN]", names)
	}
	if _, err := c.Execute(context.Background(), "query-status", nil); !errors.Is(err, ErrClosed) {
		t.Errorf("command after close: err = %v", err)
	}
	// Quit on a closed connection counts as done.
	if err := c.Quit(context.Background()); err != nil {
		t.Errorf("quit after close: %v", err)
	}
}

func TestCancelledCommandLateReplyIgnored(t *testing.T) {
	late := make(chan struct{})
	c := serve(t, func(f *fakeQMP) {
		slow := f.recv()
		<-late
		f.reply(slow, `"late"`)
		next := f.recv()
		f.reply(next, `"fresh"`)
		f.waitClose()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	_, err := c.Execute(ctx, "slow", nil)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
	close(late)
	ret, err := c.Execute(context.Background(), "next", nil)
	if err != nil || string(ret) != `"fresh"` {
		t.Fatalf("next = %s, %v; the late reply must not be taken for it", ret, err)
	}
}

func TestBadGreeting(t *testing.T) {
	for _, g := range []string{`{"hello": 1}`, `not json`, `[1,2]`} {
		a, b := net.Pipe()
		go func() {
			b.Write([]byte(g + "\n"))
			b.Close()
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if _, err := New(ctx, a); err == nil {
			t.Errorf("greeting %q accepted", g)
		}
		cancel()
	}
}

func TestHandshakeTimeout(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	if _, err := New(ctx, a); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want deadline exceeded", err)
	}
}

func TestCapabilitiesRefused(t *testing.T) {
	a, b := net.Pipe()
	go func() {
		defer b.Close()
		b.Write([]byte(greeting + "\n"))
		r := bufio.NewReader(b)
		r.ReadBytes('\n')
		b.Write([]byte(`{"error": {"class": "GenericError", "desc": "no"}, "id": "0"}` + "\n"))
	}()
	_, err := New(context.Background(), a)
	var qe *Error
	if !errors.As(err, &qe) || qe.Desc != "no" {
		t.Fatalf("err = %v, want the QMP error", err)
	}
}

// FuzzClient feeds arbitrary server output after a valid handshake: the
// client must never panic, and commands must end (reply or ErrClosed).
func FuzzClient(f *testing.F) {
	f.Add([]byte(`{"return": {}, "id": "1"}`))
	f.Add([]byte(`{"event": "STOP"}{"error": {"class": "X", "desc": "y"}, "id": "1"}`))
	f.Add([]byte(`{"return": 1, "id": 1}{"id": null}{"event": 5}`))
	f.Add([]byte(`{"return": {}, "id": "1"`))
	f.Fuzz(func(t *testing.T, data []byte) {
		a, b := net.Pipe()
		go func() {
			defer b.Close()
			r := bufio.NewReader(b)
			b.Write([]byte(greeting + "\n"))
			r.ReadBytes('\n')
			b.Write([]byte(`{"return": {}, "id": "0"}` + "\n"))
			go func() { // drain commands
				for {
					if _, err := r.ReadBytes('\n'); err != nil {
						return
					}
				}
			}()
			b.Write(data)
		}()
		c, err := New(context.Background(), a)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			for range c.Events() {
			}
		}()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_, _ = c.Execute(ctx, "query-status", nil)
		c.Close()
	})
}
