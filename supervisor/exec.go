package supervisor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/supervisor/api"
)

// execOut writes an exec's events to its client; output comes from several
// goroutines (SSH copies stdout and stderr apart).
type execOut struct {
	mu  sync.Mutex
	enc *json.Encoder
	err error
	end *api.ExecEvent // the last event, with the exit code, once sent
}

func (o *execOut) send(ev api.ExecEvent) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if ev.Exit != nil {
		o.end = &ev
	}
	if o.err == nil {
		o.err = o.enc.Encode(ev)
	}
	return o.err
}

func (o *execOut) exit(code int, msg string) { o.send(api.ExecEvent{Exit: &code, Error: msg}) }

// streamWriter sends what is written to it as one stream's output.
type streamWriter struct {
	o      *execOut
	stream string
}

func (w streamWriter) Write(p []byte) (int, error) {
	// Encode copies p (base64) before returning.
	if err := w.o.send(api.ExecEvent{Stream: w.stream, Data: p}); err != nil {
		return 0, err
	}
	return len(p), nil
}

// exec runs a command in a VM (through its guest agent, or over SSH for
// cloud-init VMs) and streams the output back to the client; the last event
// carries the exit code. The client's ExecInputs are read from dec until
// the connection ends; a client that goes away abandons the session (its
// input closes, its terminal hangs up).
func (s *Supervisor) exec(ctx context.Context, dec *json.Decoder, enc *json.Encoder, req *api.Request) {
	out := &execOut{enc: enc}
	if req.Exec == nil || len(req.Exec.Argv) == 0 {
		out.exit(-1, "exec without a command")
		return
	}
	v := s.vm(req.Address)
	var inst hypervisor.Instance
	if v != nil {
		v.mu.Lock()
		if v.st.State == api.StateReady {
			inst = v.inst
		}
		v.mu.Unlock()
	}
	if inst == nil {
		out.exit(-1, fmt.Sprintf("%s is not running (exec needs a ready VM)", req.Address))
		return
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	inputs, hangup := readInputs(sctx, dec)
	s.execIn(sctx, v, inst, req.Exec, out, inputs, hangup)
}

// execIn runs spec in the VM: through its guest agent, else over SSH.
func (s *Supervisor) execIn(ctx context.Context, v *vmRun, inst hypervisor.Instance, spec *api.ExecSpec, out *execOut, inputs <-chan api.ExecInput, hangup <-chan struct{}) {
	if g := inst.Guest(); g != nil {
		s.execAgent(ctx, v, g, spec, out, inputs, hangup)
		return
	}
	s.execSSH(ctx, v, spec, out, inputs, hangup)
}

// execExit runs argv in the VM without input, discards its output, and
// returns its exit code and the supervisor's error message, if any.
func (s *Supervisor) execExit(ctx context.Context, v *vmRun, inst hypervisor.Instance, argv []string) (int, string) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel() // ends eachInput's wait on the nil input channel
	out := &execOut{enc: json.NewEncoder(io.Discard)}
	s.execIn(ctx, v, inst, &api.ExecSpec{Argv: argv}, out, nil, nil)
	out.mu.Lock()
	defer out.mu.Unlock()
	if out.end == nil {
		return -1, "the command did not report an exit"
	}
	return *out.end.Exit, out.end.Error
}

// readInputs decodes the client's ExecInputs until the connection ends,
// which closes hangup. The session's end (ctx) stops it.
func readInputs(ctx context.Context, dec *json.Decoder) (<-chan api.ExecInput, <-chan struct{}) {
	inputs := make(chan api.ExecInput)
	hangup := make(chan struct{})
	go func() {
		defer close(hangup)
		for {
			var in api.ExecInput
			if err := dec.Decode(&in); err != nil {
				return
			}
			select {
			case inputs <- in:
			case <-ctx.Done():
				return
			}
		}
	}()
	return inputs, hangup
}

// eachInput calls f with the client's inputs, in order, until the session
// ends (ctx) or f returns false.
func eachInput(ctx context.Context, inputs <-chan api.ExecInput, f func(api.ExecInput) bool) {
	for {
		select {
		case <-ctx.Done():
			return
		case in := <-inputs:
			if !f(in) {
				return
			}
		}
	}
}

// inputWindow counts the stdin bytes sent to the guest and not yet
// acknowledged (guestproto.ExecInputWindow at most).
type inputWindow struct {
	mu      sync.Mutex
	used    int
	changed chan struct{} // closed and replaced on every release
}

// acquire waits until n more bytes fit (a chunk larger than the window
// goes alone).
func (w *inputWindow) acquire(ctx context.Context, n int) error {
	for {
		w.mu.Lock()
		if w.changed == nil {
			w.changed = make(chan struct{})
		}
		if w.used == 0 || w.used+n <= guestproto.ExecInputWindow {
			w.used += n
			w.mu.Unlock()
			return nil
		}
		ch := w.changed
		w.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (w *inputWindow) release(n int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.used = max(w.used-n, 0) // a confused guest cannot make it negative
	if w.changed != nil {
		close(w.changed)
	}
	w.changed = make(chan struct{})
}

// execAgent runs an exec through the guest init's agent channel, g.
func (s *Supervisor) execAgent(ctx context.Context, v *vmRun, g hypervisor.GuestChannel, spec *api.ExecSpec, out *execOut, inputs <-chan api.ExecInput, hangup <-chan struct{}) {
	var idb [8]byte
	rand.Read(idb[:])
	id := hex.EncodeToString(idb[:])
	q := newExecQueue()
	v.mu.Lock()
	if v.execs == nil {
		v.execs = map[string]*execQueue{}
	}
	v.execs[id] = q
	v.mu.Unlock()
	defer func() {
		v.mu.Lock()
		delete(v.execs, id)
		v.mu.Unlock()
	}()
	send := func(ctx context.Context, typ string, body any) error {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		msg, err := json.Marshal(guestproto.Message{Type: typ, ID: id, Body: b})
		if err != nil {
			return err
		}
		return g.Send(ctx, msg)
	}
	req := guestproto.ExecRequest{Argv: spec.Argv, Env: spec.Env, Stdin: spec.Stdin}
	if t := spec.TTY; t != nil {
		req.TTY = &guestproto.TTY{Term: t.Term, WindowSize: guestproto.WindowSize(t.WindowSize)}
	}
	err := send(ctx, guestproto.TypeExec, req)
	if err != nil {
		out.exit(-1, "send to the guest: "+err.Error())
		return
	}
	var win inputWindow
	go eachInput(ctx, inputs, func(in api.ExecInput) bool {
		var err error
		switch {
		case len(in.Stdin) > 0:
			for data := in.Stdin; len(data) > 0 && err == nil; {
				n := min(len(data), api.ExecInputChunk)
				if err = win.acquire(ctx, n); err == nil {
					err = send(ctx, guestproto.TypeExecInput, guestproto.ExecInput{Data: data[:n]})
				}
				data = data[n:]
			}
		case in.EOF:
			err = send(ctx, guestproto.TypeExecInput, guestproto.ExecInput{EOF: true})
		case in.Size != nil:
			size := guestproto.WindowSize(*in.Size)
			err = send(ctx, guestproto.TypeExecInput, guestproto.ExecInput{Size: &size})
		}
		return err == nil // else the session is over, or the guest is gone
	})
	for {
		select {
		case <-ctx.Done():
			out.exit(-1, "supervisor shutting down")
			return
		case <-hangup:
			hctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			send(hctx, guestproto.TypeExecInput, guestproto.ExecInput{Hangup: true})
			cancel()
			return
		case <-q.ready:
			b := q.take()
			if b.acked > 0 {
				win.release(b.acked)
			}
			if b.cut > 0 {
				note := fmt.Sprintf("\nstack: %d bytes of this command's output were dropped: the client read it too slowly\n", b.cut)
				if out.send(api.ExecEvent{Stream: "stderr", Data: []byte(note)}) != nil {
					return
				}
			}
			for _, m := range b.msgs {
				switch m.Type {
				case guestproto.TypeExecOutput:
					var o guestproto.ExecOutput
					if json.Unmarshal(m.Body, &o) != nil {
						continue
					}
					if o.Stream != "stderr" {
						o.Stream = "stdout" // not any string of the guest's
					}
					if out.send(api.ExecEvent{Stream: o.Stream, Data: o.Data}) != nil {
						return
					}
				case guestproto.TypeExecExit:
					var ex guestproto.ExecExit
					json.Unmarshal(m.Body, &ex)
					out.exit(ex.Code, guestString(ex.Error))
					return
				}
			}
		}
	}
}

// maxExecBacklog bounds the memory one exec session's queue holds for a
// client that reads slower than the command writes.
const maxExecBacklog = 64 << 20

// execMsgCost is what one queued message costs beside its body, counted
// against maxExecBacklog: the Message in the queue's slice (twice, for the
// slice's growth), its type string and the body's allocation rounding.
// Without it a guest sending one-byte outputs kept 263 MiB under the
// 64 MiB cap. TestExecQueueCountsEveryMessage measures it.
const execMsgCost = 256

// execQueue carries one exec session's messages from the VM's agent
// reader, which must never block (it carries every message of the VM), to
// the session, which its client may slow down. Everything it holds counts
// toward max: output beyond it is dropped and counted, so that the client
// is told. Acknowledgements are summed, not queued, and the exit is kept
// once, after which nothing more is: a guest can flood either without
// growing the queue.
type execQueue struct {
	max   int
	mu    sync.Mutex
	msgs  []guestproto.Message
	bytes int
	acked int
	exit  bool
	cut   int
	ready chan struct{} // holds a token while there is something to take
}

func newExecQueue() *execQueue {
	return &execQueue{max: maxExecBacklog, ready: make(chan struct{}, 1)}
}

func (q *execQueue) push(m guestproto.Message) {
	q.mu.Lock()
	if q.exit {
		q.mu.Unlock()
		return
	}
	switch m.Type {
	case guestproto.TypeExecInputAck:
		var a guestproto.ExecInputAck
		if json.Unmarshal(m.Body, &a) != nil || a.N <= 0 {
			q.mu.Unlock()
			return
		}
		q.acked = min(q.acked+a.N, guestproto.ExecInputWindow) // no more is ever outstanding
	case guestproto.TypeExecOutput, guestproto.TypeExecExit:
		cost := len(m.Body) + execMsgCost
		if m.Type == guestproto.TypeExecExit {
			q.exit = true
		} else if q.bytes+cost > q.max {
			q.cut += len(m.Body)
			q.mu.Unlock()
			return
		}
		// Only the type and body are kept: a guest's message may carry
		// other fields, which would count for nothing.
		q.msgs = append(q.msgs, guestproto.Message{Type: m.Type, Body: m.Body})
		q.bytes += cost
	default:
		q.mu.Unlock()
		return
	}
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// execBatch is what a session takes from its queue at once.
type execBatch struct {
	msgs  []guestproto.Message // output in order, then the exit if it came
	acked int                  // stdin bytes the guest acknowledged
	cut   int                  // output bytes dropped
}

// take returns what was queued since the last take.
func (q *execQueue) take() execBatch {
	q.mu.Lock()
	defer q.mu.Unlock()
	b := execBatch{msgs: q.msgs, acked: q.acked, cut: q.cut}
	q.msgs, q.bytes, q.acked, q.cut = nil, 0, 0, 0
	return b
}
