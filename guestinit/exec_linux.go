package guestinit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/internal/pty"
)

// execChunk bounds one exec-output message, so that a chatty command does
// not produce lines the host's reader refuses.
const execChunk = 32 << 10

// ttyDrain is how long a TTY session's output is still read after the
// command exited: the terminal ends (EIO) once every holder of its slave
// side has closed it, and a background process the command left behind
// could hold it for ever.
const ttyDrain = time.Second

// execSession is one running exec: the host's input for it waits in queue
// until the session's input goroutine hands it to the command, so that the
// agent's goroutine never blocks on a command that does not read.
type execSession struct {
	mu    sync.Mutex
	cond  *sync.Cond
	queue []guestproto.ExecInput
	done  bool
}

func newExecSession() *execSession {
	s := &execSession{}
	s.cond = sync.NewCond(&s.mu)
	return s
}

func (s *execSession) push(in guestproto.ExecInput) {
	s.mu.Lock()
	if !s.done {
		s.queue = append(s.queue, in)
		s.cond.Signal()
	}
	s.mu.Unlock()
}

// next waits for the next input; ok is false once the session ended.
func (s *execSession) next() (guestproto.ExecInput, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.queue) == 0 && !s.done {
		s.cond.Wait()
	}
	if s.done {
		return guestproto.ExecInput{}, false
	}
	in := s.queue[0]
	s.queue = s.queue[1:]
	return in, true
}

func (s *execSession) end() {
	s.mu.Lock()
	s.done, s.queue = true, nil
	s.cond.Broadcast()
	s.mu.Unlock()
}

// startExec registers the session of an exec request and runs it. It is
// called from the agent's goroutine, so the session exists before the
// host's next message (its input) is handled.
func (in *Init) startExec(m guestproto.Message) {
	s := newExecSession()
	in.mu.Lock()
	if in.execs == nil {
		in.execs = map[string]*execSession{}
	}
	old := in.execs[m.ID]
	in.execs[m.ID] = s
	var env map[string]string
	if in.cfg != nil {
		env = in.cfg.Env
	}
	root := in.root
	in.mu.Unlock()
	if old != nil {
		old.end() // a reused ID: the host abandoned the old session
	}
	in.goSafe("exec", func() {
		runExec(m, s, execEnv{base: env, root: root, reaper: in.reaper, send: in.send, log: in.log.Warn, goSafe: in.goSafe})
		in.mu.Lock()
		if in.execs[m.ID] == s {
			delete(in.execs, m.ID)
		}
		in.mu.Unlock()
	})
}

// execInput hands a TypeExecInput message to its session (input for a
// session that has ended is dropped: the host learns of the end from its
// exec-exit).
func (in *Init) execInput(m guestproto.Message) {
	var inp guestproto.ExecInput
	if err := json.Unmarshal(m.Body, &inp); err != nil {
		in.log.Warn("exec: bad input message", "id", m.ID, "err", err)
		return
	}
	in.mu.Lock()
	s := in.execs[m.ID]
	in.mu.Unlock()
	if s != nil {
		s.push(inp)
	}
}

// execEnv is what an exec needs from the init (a struct so that tests can
// run execs without a PID 1).
type execEnv struct {
	base   map[string]string // the workload's environment
	root   *imageRoot        // an image VM's root; nil: the init's own
	reaper *Reaper
	send   func(guestproto.Message)
	log    func(msg string, args ...any)
	goSafe func(what string, f func()) // Init.goSafe: a panic in PID 1 panics the kernel
}

// runExec runs one host exec request beside the workload and streams its
// output and exit code back, tagged with the request's ID.
func runExec(m guestproto.Message, s *execSession, e execEnv) {
	defer s.end()
	exit := func(code int, msg string) {
		body, _ := json.Marshal(guestproto.ExecExit{Code: code, Error: msg})
		e.send(guestproto.Message{Type: guestproto.TypeExecExit, ID: m.ID, Body: body})
	}
	var req guestproto.ExecRequest
	if err := json.Unmarshal(m.Body, &req); err != nil || len(req.Argv) == 0 {
		exit(127, "exec: bad request")
		return
	}
	vars := map[string]string{}
	for k, v := range e.base {
		vars[k] = v
	}
	for k, v := range req.Env {
		vars[k] = v
	}
	if req.TTY != nil && req.TTY.Term != "" {
		vars["TERM"] = req.TTY.Term
	}
	if e.root != nil {
		e.root.setHome(vars)
	}
	cmd, err := command(e.root, req.Argv, WorkloadEnv(vars))
	if err != nil {
		exit(127, "exec "+err.Error())
		return
	}
	if req.Dir != "" {
		cmd.Dir = req.Dir
	}
	if e.root != nil {
		e.root.enter(cmd, req.Dir)
	}

	// childEnds are the command's copies, closed once it has started;
	// input is where the host's stdin goes, outputs where output comes
	// from.
	var childEnds []*os.File
	var input *os.File
	outputs := map[string]*os.File{}
	if req.TTY != nil {
		master, slave, err := pty.Open()
		if err != nil {
			exit(126, "exec: "+err.Error())
			return
		}
		if err := pty.SetSize(master, req.TTY.Rows, req.TTY.Cols); err != nil {
			e.log("exec: set the terminal's size", "err", err)
		}
		childEnds = []*os.File{slave}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = slave, slave, slave
		// Ctty is the child's descriptor: its stdin, the slave.
		cmd.SysProcAttr.Setctty, cmd.SysProcAttr.Ctty = true, 0
		input, outputs["stdout"] = master, master
	} else {
		var files []*os.File
		pipe := func() (*os.File, *os.File, error) {
			r, w, err := os.Pipe()
			if err == nil {
				files = append(files, r, w)
			}
			return r, w, err
		}
		outR, outW, err1 := pipe()
		errR, errW, err2 := pipe()
		inR, inW, err3 := pipe()
		if err := errors.Join(err1, err2, err3); err != nil {
			for _, f := range files {
				f.Close()
			}
			exit(126, "exec: "+err.Error())
			return
		}
		childEnds = []*os.File{outW, errW, inR}
		cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
		input, outputs["stdout"], outputs["stderr"] = inW, outR, errR
	}
	var closeInput sync.Once
	closeIn := func() { closeInput.Do(func() { input.Close() }) }

	_, statusCh, err := e.reaper.Start(cmd)
	// The child has its copies (or never will); the init keeps its ends.
	for _, f := range childEnds {
		f.Close()
	}
	if err != nil {
		closeIn()
		for _, f := range outputs {
			f.Close()
		}
		exit(126, fmt.Sprintf("exec %s: %v", req.Argv[0], err))
		return
	}
	if !req.Stdin && req.TTY == nil {
		closeIn() // the command's input is empty
	}
	e.goSafe("exec input", func() { execInputLoop(m.ID, s, e, input, req.TTY != nil, closeIn) })

	var wg sync.WaitGroup
	for stream, r := range outputs {
		wg.Add(1)
		e.goSafe("exec "+stream, func() {
			defer wg.Done()
			buf := make([]byte, execChunk)
			for {
				n, err := r.Read(buf)
				if n > 0 {
					body, _ := json.Marshal(guestproto.ExecOutput{Stream: stream, Data: buf[:n]})
					e.send(guestproto.Message{Type: guestproto.TypeExecOutput, ID: m.ID, Body: body})
				}
				if err != nil {
					// EIO: a terminal whose slave side is closed
					// everywhere; deadline and closed: see below.
					if err != io.EOF && !errors.Is(err, unix.EIO) && !errors.Is(err, os.ErrDeadlineExceeded) && !errors.Is(err, os.ErrClosed) {
						e.log("exec: read output", "stream", stream, "err", err)
					}
					return
				}
			}
		})
	}
	ws := <-statusCh
	if req.TTY != nil {
		input.SetReadDeadline(time.Now().Add(ttyDrain))
	}
	wg.Wait()
	s.end() // stops the input loop before its file is closed
	closeIn()
	for _, f := range outputs {
		f.Close()
	}
	exit(ExitCode(ws.Exited(), ws.ExitStatus(), ws.Signaled(), int(ws.Signal())), "")
}

// execInputLoop passes the host's input to the command in order until the
// session ends: data to its input (acknowledged once written, whether or
// not the write succeeded, so that the host's window never stalls on a
// command that has gone), window sizes to its terminal, EOF and hang-up as
// closes (with a TTY, EOF is ignored and a hang-up closes the terminal,
// which sends the command SIGHUP).
func execInputLoop(id string, s *execSession, e execEnv, w *os.File, tty bool, closeIn func()) {
	broken := false
	for {
		in, ok := s.next()
		if !ok {
			return
		}
		switch {
		case len(in.Data) > 0:
			if !broken {
				if _, err := w.Write(in.Data); err != nil {
					broken = true // EPIPE: the command closed its input
				}
			}
			body, _ := json.Marshal(guestproto.ExecInputAck{N: len(in.Data)})
			e.send(guestproto.Message{Type: guestproto.TypeExecInputAck, ID: id, Body: body})
		case in.Size != nil:
			if tty {
				if err := pty.SetSize(w, in.Size.Rows, in.Size.Cols); err != nil {
					e.log("exec: resize the terminal", "err", err)
				}
			}
		case in.EOF:
			if !tty {
				closeIn()
				broken = true
			}
		case in.Hangup:
			closeIn()
			broken = true
		}
	}
}
