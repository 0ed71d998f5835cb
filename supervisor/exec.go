package supervisor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"

	"github.com/stackvm/stack/guestproto"
)

// exec runs a command in a VM through its guest agent and streams the
// output back to the client; the last event carries the exit code. Closing
// the connection abandons the session (the command keeps running).
func (s *Supervisor) exec(ctx context.Context, c net.Conn, enc *json.Encoder, req *Request) {
	fail := func(msg string) {
		code := -1
		enc.Encode(ExecEvent{Exit: &code, Error: msg})
	}
	if req.Exec == nil || len(req.Exec.Argv) == 0 {
		fail("exec without a command")
		return
	}
	s.mu.Lock()
	v := s.vms[req.Address]
	running := v != nil && v.inst != nil && v.st.State == "ready"
	s.mu.Unlock()
	if !running {
		fail(fmt.Sprintf("%s is not running (exec needs a ready VM)", req.Address))
		return
	}
	g := v.inst.Guest()
	if g == nil {
		fail(fmt.Sprintf("%s has no guest agent: exec works in initramfs mode only (cloud-init VMs: use SSH)", req.Address))
		return
	}
	var idb [8]byte
	rand.Read(idb[:])
	id := hex.EncodeToString(idb[:])
	ch := make(chan guestproto.Message, 1024)
	s.mu.Lock()
	if v.execs == nil {
		v.execs = map[string]chan guestproto.Message{}
	}
	v.execs[id] = ch
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(v.execs, id)
		s.mu.Unlock()
	}()
	body, err := json.Marshal(guestproto.ExecRequest{Argv: req.Exec.Argv, Env: req.Exec.Env, Stdin: req.Exec.Stdin})
	if err != nil {
		fail(err.Error())
		return
	}
	msg, _ := json.Marshal(guestproto.Message{Type: guestproto.TypeExec, ID: id, Body: body})
	if err := g.Send(ctx, msg); err != nil {
		fail("send to the guest: " + err.Error())
		return
	}
	hangup := make(chan struct{})
	go func() {
		io.Copy(io.Discard, c)
		close(hangup)
	}()
	for {
		select {
		case <-ctx.Done():
			fail("supervisor shutting down")
			return
		case <-hangup:
			return
		case m := <-ch:
			switch m.Type {
			case guestproto.TypeExecOutput:
				var out guestproto.ExecOutput
				if json.Unmarshal(m.Body, &out) == nil && enc.Encode(ExecEvent{Stream: out.Stream, Data: out.Data}) != nil {
					return
				}
			case guestproto.TypeExecExit:
				var ex guestproto.ExecExit
				json.Unmarshal(m.Body, &ex)
				enc.Encode(ExecEvent{Exit: &ex.Code, Error: ex.Error})
				return
			}
		}
	}
}
