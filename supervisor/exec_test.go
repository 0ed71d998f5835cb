package supervisor

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/supervisor/api"
	"github.com/stackvm/stack/supervisor/client"
)

// fakeAgent is an initramfs VM's guest agent as the supervisor sees it:
// what the supervisor sends is recorded, and the test answers through
// onGuestMessage as the guest init would.
type fakeAgent struct {
	hypervisor.Instance
	s *Supervisor
	v *vmRun

	mu       sync.Mutex
	req      *guestproto.ExecRequest
	id       string
	stdin    bytes.Buffer
	unacked  int // stdin bytes received and not acknowledged
	maxUnack int
	eof      bool
	hangup   bool
	sizes    []guestproto.WindowSize
	hold     bool // do not acknowledge stdin (a command that does not read)
	changed  chan struct{}
}

func (a *fakeAgent) Guest() hypervisor.GuestChannel { return a }
func (a *fakeAgent) Events() <-chan []byte          { return nil }
func (a *fakeAgent) Close() error                   { return nil }

func (a *fakeAgent) Send(_ context.Context, b []byte) error {
	var m guestproto.Message
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	a.mu.Lock()
	defer func() {
		a.mu.Unlock()
		select {
		case a.changed <- struct{}{}:
		default:
		}
	}()
	switch m.Type {
	case guestproto.TypeExec:
		a.req, a.id = &guestproto.ExecRequest{}, m.ID
		json.Unmarshal(m.Body, a.req)
	case guestproto.TypeExecInput:
		var in guestproto.ExecInput
		json.Unmarshal(m.Body, &in)
		switch {
		case len(in.Data) > 0:
			a.stdin.Write(in.Data)
			a.unacked += len(in.Data)
			a.maxUnack = max(a.maxUnack, a.unacked)
			if !a.hold {
				a.ackLocked()
			}
		case in.EOF:
			a.eof = true
		case in.Size != nil:
			a.sizes = append(a.sizes, *in.Size)
		case in.Hangup:
			a.hangup = true
		}
	}
	return nil
}

// ackLocked acknowledges every byte received.
func (a *fakeAgent) ackLocked() {
	if a.unacked == 0 {
		return
	}
	body, _ := json.Marshal(guestproto.ExecInputAck{N: a.unacked})
	a.unacked = 0
	go a.s.onGuestMessage(a.v, &guestproto.Message{Type: guestproto.TypeExecInputAck, ID: a.id, Body: body})
}

func (a *fakeAgent) reply(typ string, body any) {
	b, _ := json.Marshal(body)
	a.mu.Lock()
	id := a.id
	a.mu.Unlock()
	a.s.onGuestMessage(a.v, &guestproto.Message{Type: typ, ID: id, Body: b})
}

// waitFor waits until cond holds under a.mu.
func (a *fakeAgent) waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		a.mu.Lock()
		ok := cond()
		a.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-a.changed:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			t.Fatalf("no %s", what)
		}
	}
}

func agentVM(t *testing.T, s *Supervisor) *fakeAgent {
	t.Helper()
	a := &fakeAgent{s: s, changed: make(chan struct{}, 1)}
	a.v = &vmRun{s: s, inst: a, st: api.VMStatus{State: "ready"},
		spec: api.VMSpec{Address: "vm.in", Name: "in", StateDir: filenames.VMState(s.opts.StateRoot, s.opts.Namespace, "in")}}
	s.mu.Lock()
	s.vms["vm.in"] = a.v
	s.mu.Unlock()
	t.Cleanup(func() {
		s.mu.Lock()
		delete(s.vms, "vm.in")
		s.mu.Unlock()
	})
	return a
}

// Stdin streams to the guest as it comes, never more than the window
// ahead of the guest's acknowledgements; its end, window sizes and the
// request's TTY reach the guest; output and the exit code come back.
func TestExecAgentStreamsInput(t *testing.T) {
	s, _, c := newTestSupervisor(t)
	a := agentVM(t, s)
	a.hold = true
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	big := strings.Repeat("x", 3*guestproto.ExecInputWindow)
	resize := make(chan api.WindowSize, 1)
	var out bytes.Buffer
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, err := c.Exec(ctx, "vm.in", api.ExecSpec{
			Argv: []string{"cat"}, Stdin: true,
			TTY: &api.TTY{Term: "xterm", WindowSize: api.WindowSize{Rows: 24, Cols: 80}},
		}, client.ExecIO{Stdin: strings.NewReader(big), Stdout: &out, Resize: resize})
		done <- result{code, err}
	}()
	// The guest takes nothing: the supervisor stops at the window.
	a.waitFor(t, "a full window", func() bool { return a.stdin.Len() >= guestproto.ExecInputWindow-api.ExecInputChunk })
	time.Sleep(100 * time.Millisecond)
	a.mu.Lock()
	if a.stdin.Len() > guestproto.ExecInputWindow {
		t.Errorf("%d bytes sent without acknowledgement (window %d)", a.stdin.Len(), guestproto.ExecInputWindow)
	}
	if a.req == nil || !a.req.Stdin || a.req.TTY == nil || a.req.TTY.Rows != 24 || a.req.TTY.Term != "xterm" {
		t.Errorf("request %+v", a.req)
	}
	a.hold = false
	a.ackLocked()
	a.mu.Unlock()
	a.waitFor(t, "all of stdin and its end", func() bool { return a.stdin.Len() == len(big) && a.eof })
	resize <- api.WindowSize{Rows: 50, Cols: 120}
	a.waitFor(t, "a window size", func() bool { return len(a.sizes) == 1 && a.sizes[0].Rows == 50 })
	if a.maxUnack > guestproto.ExecInputWindow {
		t.Errorf("up to %d bytes in flight (window %d)", a.maxUnack, guestproto.ExecInputWindow)
	}
	a.reply(guestproto.TypeExecOutput, guestproto.ExecOutput{Stream: "stdout", Data: []byte("out")})
	a.reply(guestproto.TypeExecExit, guestproto.ExecExit{Code: 4})
	r := <-done
	if r.err != nil || r.code != 4 || out.String() != "out" {
		t.Fatalf("exit %d, %v, output %q", r.code, r.err, out.String())
	}
}

// A client that goes away hangs the session up in the guest.
func TestExecAgentHangup(t *testing.T) {
	s, _, c := newTestSupervisor(t)
	a := agentVM(t, s)
	ctx, cancel := context.WithCancel(context.Background())
	inR, _ := io.Pipe()
	done := make(chan error, 1)
	go func() {
		_, err := c.Exec(ctx, "vm.in", api.ExecSpec{Argv: []string{"sh"}, Stdin: true}, client.ExecIO{Stdin: inR})
		done <- err
	}()
	a.waitFor(t, "the request", func() bool { return a.req != nil })
	cancel()
	if err := <-done; err == nil {
		t.Fatal("no error from an interrupted exec")
	}
	a.waitFor(t, "a hang-up", func() bool { return a.hangup })
}
