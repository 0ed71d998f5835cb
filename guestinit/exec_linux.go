package guestinit

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"

	"github.com/stackvm/stack/guestproto"
)

// execChunk bounds one exec-output message, so that a chatty command does
// not produce lines the host's reader refuses.
const execChunk = 32 << 10

// exec runs one host exec request beside the workload and streams its
// output and exit code back over the agent, tagged with the request's ID.
func (in *Init) exec(m guestproto.Message) {
	exit := func(code int, msg string) {
		body, _ := json.Marshal(guestproto.ExecExit{Code: code, Error: msg})
		in.send(guestproto.Message{Type: guestproto.TypeExecExit, ID: m.ID, Body: body})
	}
	var req guestproto.ExecRequest
	if err := json.Unmarshal(m.Body, &req); err != nil || len(req.Argv) == 0 {
		exit(127, "exec: bad request")
		return
	}
	env := WorkloadEnv(req.Env)
	path := req.Argv[0]
	if !strings.Contains(path, "/") {
		for _, kv := range env {
			if p, ok := strings.CutPrefix(kv, "PATH="); ok {
				lp, err := lookPath(path, p)
				if err != nil {
					exit(127, fmt.Sprintf("exec %s: command not found", path))
					return
				}
				path = lp
			}
		}
	}
	cmd := exec.Command(path, req.Argv[1:]...)
	cmd.Args[0] = req.Argv[0]
	cmd.Env = env
	cmd.Dir = req.Dir
	if cmd.Dir == "" {
		cmd.Dir = "/"
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}

	var closers []*os.File
	defer func() {
		for _, f := range closers {
			f.Close()
		}
	}()
	pipe := func() (*os.File, *os.File, error) {
		r, w, err := os.Pipe()
		if err == nil {
			closers = append(closers, w)
		}
		return r, w, err
	}
	outR, outW, err1 := pipe()
	errR, errW, err2 := pipe()
	inR, inW, err3 := pipe()
	if err := errors.Join(err1, err2, err3); err != nil {
		exit(126, "exec: "+err.Error())
		return
	}
	closers = append(closers, inR)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, errW
	_, statusCh, err := in.reaper.Start(cmd)
	if err != nil {
		outR.Close()
		errR.Close()
		inW.Close()
		exit(126, fmt.Sprintf("exec %s: %v", req.Argv[0], err))
		return
	}
	// The child has its copies; the parent keeps only its ends.
	for _, f := range closers {
		f.Close()
	}
	closers = nil
	go func() {
		inW.Write(req.Stdin)
		inW.Close()
	}()
	var wg sync.WaitGroup
	for stream, r := range map[string]*os.File{"stdout": outR, "stderr": errR} {
		wg.Add(1)
		in.goSafe("exec "+stream, func() {
			defer wg.Done()
			defer r.Close()
			buf := make([]byte, execChunk)
			for {
				n, err := r.Read(buf)
				if n > 0 {
					body, _ := json.Marshal(guestproto.ExecOutput{Stream: stream, Data: buf[:n]})
					in.send(guestproto.Message{Type: guestproto.TypeExecOutput, ID: m.ID, Body: body})
				}
				if err != nil {
					if err != io.EOF {
						in.log.Warn("exec: read output", "stream", stream, "err", err)
					}
					return
				}
			}
		})
	}
	ws := <-statusCh
	wg.Wait()
	exit(ExitCode(ws.Exited(), ws.ExitStatus(), ws.Signaled(), int(ws.Signal())), "")
}
