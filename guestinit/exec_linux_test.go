//go:build linux

package guestinit

import (
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stackvm/stack/guestproto"
)

// execRun is one exec run by runExec outside PID 1, with the messages it
// sends collected.
type execRun struct {
	t    *testing.T
	s    *execSession
	mu   sync.Mutex
	out  map[string]string
	acks int
	exit *guestproto.ExecExit
	news chan struct{}
}

func startTestExec(t *testing.T, req guestproto.ExecRequest) *execRun {
	t.Helper()
	r := StartReaper()
	t.Cleanup(r.Stop)
	x := &execRun{t: t, s: newExecSession(), out: map[string]string{}, news: make(chan struct{}, 1)}
	body, _ := json.Marshal(req)
	send := func(m guestproto.Message) {
		if m.ID != "id1" {
			t.Errorf("message %s with ID %q", m.Type, m.ID)
		}
		x.mu.Lock()
		switch m.Type {
		case guestproto.TypeExecOutput:
			var o guestproto.ExecOutput
			json.Unmarshal(m.Body, &o)
			x.out[o.Stream] += string(o.Data)
		case guestproto.TypeExecInputAck:
			var a guestproto.ExecInputAck
			json.Unmarshal(m.Body, &a)
			x.acks += a.N
		case guestproto.TypeExecExit:
			var e guestproto.ExecExit
			json.Unmarshal(m.Body, &e)
			x.exit = &e
		}
		x.mu.Unlock()
		select {
		case x.news <- struct{}{}:
		default:
		}
	}
	e := execEnv{base: map[string]string{"FROM_WORKLOAD": "w"}, reaper: r, send: send, log: t.Logf,
		goSafe: func(_ string, f func()) { go f() }}
	go runExec(guestproto.Message{Type: guestproto.TypeExec, ID: "id1", Body: body}, x.s, e)
	return x
}

// waitFor waits until cond holds on the collected messages.
func (x *execRun) waitFor(what string, cond func(x *execRun) bool) {
	x.t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		x.mu.Lock()
		ok := cond(x)
		x.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-x.news:
		case <-deadline:
			x.mu.Lock()
			defer x.mu.Unlock()
			x.t.Fatalf("no %s: output %q, acks %d, exit %+v", what, x.out, x.acks, x.exit)
		}
	}
}

func (x *execRun) wait() (map[string]string, int) {
	x.t.Helper()
	x.waitFor("exit", func(x *execRun) bool { return x.exit != nil })
	if x.exit.Error != "" {
		x.t.Logf("exit error: %s", x.exit.Error)
	}
	return x.out, x.exit.Code
}

// Input reaches the command as it comes (the command answers the first
// line before the rest is sent), and its EOF closes the command's stdin.
func TestExecStreamsStdin(t *testing.T) {
	x := startTestExec(t, guestproto.ExecRequest{
		Argv:  []string{"sh", "-c", `read a; echo "got-$a $FROM_WORKLOAD $MINE"; cat; echo "end" >&2; exit 3`},
		Env:   map[string]string{"MINE": "m"},
		Stdin: true,
	})
	x.s.push(guestproto.ExecInput{Data: []byte("one\n")})
	x.waitFor("answer to the first line", func(x *execRun) bool { return x.out["stdout"] == "got-one w m\n" })
	x.s.push(guestproto.ExecInput{Data: []byte("two\n")})
	x.s.push(guestproto.ExecInput{Data: []byte("three")})
	x.s.push(guestproto.ExecInput{EOF: true})
	out, code := x.wait()
	if code != 3 || out["stdout"] != "got-one w m\ntwo\nthree" || out["stderr"] != "end\n" {
		t.Fatalf("exit %d, output %q", code, out)
	}
	if x.acks != len("one\ntwo\nthree") {
		t.Fatalf("acknowledged %d bytes", x.acks)
	}
}

// Without Stdin the command's input is empty.
func TestExecWithoutStdin(t *testing.T) {
	x := startTestExec(t, guestproto.ExecRequest{Argv: []string{"sh", "-c", "cat; echo done"}})
	if out, code := x.wait(); code != 0 || out["stdout"] != "done\n" {
		t.Fatalf("exit %d, output %q", code, out)
	}
	x = startTestExec(t, guestproto.ExecRequest{Argv: []string{"no-such-command-here"}})
	if _, code := x.wait(); code != 127 {
		t.Fatalf("missing command: exit %d", code)
	}
}

// A command that never reads its input does not block the session: the
// data is acknowledged once the command is gone.
func TestExecInputToAnExitedCommand(t *testing.T) {
	x := startTestExec(t, guestproto.ExecRequest{Argv: []string{"sh", "-c", "exec 0<&-; sleep 0.2"}, Stdin: true})
	big := strings.Repeat("x", 200<<10) // more than a pipe holds
	x.s.push(guestproto.ExecInput{Data: []byte(big)})
	if _, code := x.wait(); code != 0 {
		t.Fatalf("exit %d", code)
	}
	x.waitFor("acknowledgement", func(x *execRun) bool { return x.acks == len(big) })
}

// With a TTY the command runs on a terminal of the requested size and
// TERM, stderr comes out as stdout, a new size reaches it, and a hang-up
// sends it SIGHUP.
func TestExecTTY(t *testing.T) {
	x := startTestExec(t, guestproto.ExecRequest{
		Argv:  []string{"sh", "-c", `tty; stty size; echo "T=$TERM"; echo err >&2; read x; stty size; read y`},
		Stdin: true,
		TTY:   &guestproto.TTY{Term: "xterm-test", WindowSize: guestproto.WindowSize{Rows: 33, Cols: 101}},
	})
	x.waitFor("first size", func(x *execRun) bool { return strings.Contains(x.out["stdout"], "err\r\n") })
	x.s.push(guestproto.ExecInput{Size: &guestproto.WindowSize{Rows: 50, Cols: 120}})
	x.s.push(guestproto.ExecInput{EOF: true}) // ignored: a terminal has no end of input
	x.s.push(guestproto.ExecInput{Data: []byte("\n")})
	x.waitFor("second size", func(x *execRun) bool { return strings.Contains(x.out["stdout"], "50 120") })
	x.s.push(guestproto.ExecInput{Hangup: true})
	out, code := x.wait()
	lines := strings.Split(out["stdout"], "\r\n")
	if len(lines) < 6 || !strings.HasPrefix(lines[0], "/dev/pts/") || lines[1] != "33 101" ||
		lines[2] != "T=xterm-test" || lines[3] != "err" || lines[5] != "50 120" || out["stderr"] != "" {
		t.Fatalf("output %q", out)
	}
	if code != 129 {
		t.Fatalf("hung-up command: exit %d, want 129 (SIGHUP)", code)
	}
}

// A TTY session ends when the command exits even if a process it left
// behind holds the terminal.
func TestExecTTYEndsWithTheCommand(t *testing.T) {
	x := startTestExec(t, guestproto.ExecRequest{
		Argv: []string{"sh", "-c", `trap "" HUP; sleep 3 & echo started`},
		TTY:  &guestproto.TTY{WindowSize: guestproto.WindowSize{Rows: 24, Cols: 80}},
	})
	start := time.Now()
	out, code := x.wait()
	if code != 0 || !strings.Contains(out["stdout"], "started") {
		t.Fatalf("exit %d, output %q", code, out)
	}
	if d := time.Since(start); d < ttyDrain || d > ttyDrain+2*time.Second {
		t.Fatalf("took %s, want the drain time (%s) and little more", d, ttyDrain)
	}
}
