package supervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/stackvm/stack/internal/filenames"
)

// Client calls a namespace's supervisor.
type Client struct {
	path string
}

// ErrNotRunning is returned when no supervisor answers on the socket.
var ErrNotRunning = errors.New("no supervisor is running for this namespace")

// Dial returns a client for the namespace's supervisor if one answers and
// runs the namespace of stateRoot. A supervisor is found by namespace alone
// (its socket is in the user's runtime directory), so a command for another
// state directory with the same namespace reaches it too: Dial refuses that
// with a *StateRootError instead of letting the command stop or replace VMs
// it has no state for.
func Dial(ctx context.Context, runtimeRoot, stateRoot, namespace string) (*Client, error) {
	c := &Client{path: SocketPath(runtimeRoot, namespace)}
	resp, err := c.Call(ctx, &Request{Op: OpPing})
	if err != nil {
		return nil, err
	}
	if resp.StateRoot != "" && !sameDir(resp.StateRoot, stateRoot) {
		return nil, &StateRootError{Namespace: namespace, Running: resp.StateRoot, Wanted: stateRoot}
	}
	return c, nil
}

// StateRootError says that a namespace's supervisor runs it for another
// state directory.
type StateRootError struct {
	Namespace string
	Running   string // the supervisor's state directory
	Wanted    string // the command's
}

func (e *StateRootError) Error() string {
	return fmt.Sprintf("namespace %q is running with the state directory %s, not %s: use that state directory (--state-dir or STACK_STATE_DIR), or another namespace (-p)",
		e.Namespace, e.Running, e.Wanted)
}

// sameDir reports whether a and b name one directory: the same clean path,
// or one that exists under both names (a symlink).
func sameDir(a, b string) bool {
	if filepath.Clean(a) == filepath.Clean(b) {
		return true
	}
	sa, errA := os.Stat(a)
	sb, errB := os.Stat(b)
	return errA == nil && errB == nil && os.SameFile(sa, sb)
}

// Call sends one request and returns its response; a response carrying an
// error is returned as a Go error.
func (c *Client) Call(ctx context.Context, req *Request) (*Response, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrNotRunning, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return nil, fmt.Errorf("send %s to supervisor: %w", req.Op, err)
	}
	var resp Response
	if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&resp); err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("read %s reply from supervisor: %w", req.Op, err)
	}
	if resp.Error != "" {
		return &resp, errors.New(resp.Error)
	}
	return &resp, nil
}

// Watch subscribes to the supervisor's events. It returns once the
// subscription is in place, so no event after the call returns is missed.
// The channel closes when ctx ends or the supervisor goes away.
func (c *Client) Watch(ctx context.Context) (<-chan Event, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrNotRunning, err)
	}
	if err := json.NewEncoder(conn).Encode(&Request{Op: OpWatch}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("watch supervisor: %w", err)
	}
	dec := json.NewDecoder(bufio.NewReader(conn))
	var ack Event
	if err := dec.Decode(&ack); err != nil {
		conn.Close()
		return nil, fmt.Errorf("watch supervisor: %w", err)
	}
	ch := make(chan Event, 256)
	context.AfterFunc(ctx, func() { conn.Close() })
	go func() {
		defer close(ch)
		defer conn.Close()
		for {
			var ev Event
			if err := dec.Decode(&ev); err != nil {
				return
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch, nil
}

// SpawnOptions say how to start a supervisor process.
type SpawnOptions struct {
	Namespace   string
	StateRoot   string
	RuntimeRoot string
	// Executable, Args and Env start the supervisor process.
	Executable string
	Args       []string
	Env        []string
	Dir        string
}

// Ensure returns a client for the namespace's supervisor, starting one when
// none answers. The supervisor is detached (its own session, stdio to its
// log file) so that it outlives the command that started it.
func Ensure(ctx context.Context, o SpawnOptions) (*Client, error) {
	c, err := Dial(ctx, o.RuntimeRoot, o.StateRoot, o.Namespace)
	if err == nil {
		return c, nil
	}
	var other *StateRootError
	if errors.As(err, &other) {
		return nil, err
	}
	nsDir := filenames.NamespaceState(o.StateRoot, o.Namespace)
	if err := os.MkdirAll(nsDir, filenames.DirMode); err != nil {
		return nil, fmt.Errorf("start supervisor: %w", err)
	}
	logf, err := os.OpenFile(filepath.Join(nsDir, filenames.SupervisorLog), os.O_CREATE|os.O_WRONLY|os.O_APPEND, filenames.FileMode)
	if err != nil {
		return nil, fmt.Errorf("start supervisor: %w", err)
	}
	defer logf.Close()
	// The child gets the write end of a pipe and writes to it once its
	// socket listens (ListeningNotifier): the first dial then succeeds
	// without a polling delay. Polling stays as the fallback.
	readyR, readyW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start supervisor: %w", err)
	}
	defer readyR.Close()
	cmd := exec.Command(o.Executable, o.Args...)
	cmd.Env = append(append([]string(nil), o.Env...), readyFDEnv+"="+strconv.Itoa(readyFD))
	cmd.Dir = o.Dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{readyW} // fd 3 == readyFD
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	readyW.Close()
	if err != nil {
		return nil, fmt.Errorf("start supervisor: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ready := make(chan struct{})
	go func() {
		var b [1]byte
		readyR.Read(b[:]) // a byte, or EOF when the child closes or dies
		close(ready)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := Dial(ctx, o.RuntimeRoot, o.StateRoot, o.Namespace)
		if err == nil {
			return c, nil
		}
		if errors.As(err, &other) {
			return nil, err // lost a race with a command for another state directory
		}
		select {
		case err := <-exited:
			return nil, fmt.Errorf("start supervisor: it exited at once (%v); see %s", err, logf.Name())
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-ready:
			ready = nil
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil, fmt.Errorf("start supervisor: no answer on its socket after 10s; see %s", logf.Name())
}

// The readiness pipe between Ensure and the supervisor it spawns: the
// child finds its write end at readyFD, and readyFDEnv says so (a
// supervisor started any other way has no such pipe).
const (
	readyFD    = 3
	readyFDEnv = "STACK_SUPERVISOR_READY_FD"
)

// ListeningNotifier returns what a process spawned by Ensure sets as its
// Options.Listening: it writes to the readiness pipe and closes it. In a
// process not spawned by Ensure it returns nil. Call it early: it also
// keeps the pipe from leaking into the VMMs the process starts.
func ListeningNotifier() func() {
	if os.Getenv(readyFDEnv) != strconv.Itoa(readyFD) {
		return nil
	}
	os.Unsetenv(readyFDEnv)
	syscall.CloseOnExec(readyFD)
	f := os.NewFile(readyFD, "supervisor-ready")
	return func() {
		f.Write([]byte{1})
		f.Close()
	}
}

// ExecIO are an exec's streams.
type ExecIO struct {
	// Stdin is read (with ExecSpec.Stdin) and sent as it comes; its end or
	// read error ends the command's input. The reading goroutine may
	// outlive Exec until a Read returns.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Resize delivers new window sizes (with ExecSpec.TTY); may be nil.
	Resize <-chan WindowSize
}

// Exec runs spec in the VM at address and copies its output to stdio's
// writers as it comes. It returns the command's exit code.
func (c *Client) Exec(ctx context.Context, address string, spec ExecSpec, stdio ExecIO) (int, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return -1, fmt.Errorf("%w (%v)", ErrNotRunning, err)
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	if err := json.NewEncoder(conn).Encode(&Request{Op: OpExec, Address: address, Exec: &spec}); err != nil {
		return -1, fmt.Errorf("exec in %s: %w", address, err)
	}
	done := make(chan struct{})
	defer close(done)
	sendInputs(conn, spec, stdio, done)
	dec := json.NewDecoder(bufio.NewReader(conn))
	for {
		var ev ExecEvent
		if err := dec.Decode(&ev); err != nil {
			if ctx.Err() != nil {
				return -1, ctx.Err()
			}
			return -1, fmt.Errorf("exec in %s: the supervisor hung up: %w", address, err)
		}
		switch {
		case ev.Exit != nil && ev.Error != "" && *ev.Exit < 0:
			return -1, fmt.Errorf("exec in %s: %s", address, ev.Error)
		case ev.Exit != nil:
			if ev.Error != "" && stdio.Stderr != nil {
				fmt.Fprintln(stdio.Stderr, ev.Error)
			}
			return *ev.Exit, nil
		case ev.Stream == "stderr":
			if stdio.Stderr != nil {
				stdio.Stderr.Write(ev.Data)
			}
		default:
			if stdio.Stdout != nil {
				stdio.Stdout.Write(ev.Data)
			}
		}
	}
}

// execInputChunk bounds the stdin bytes of one ExecInput.
const execInputChunk = 32 << 10

// sendInputs starts the goroutines that send an exec's stdin and window
// sizes on conn, one encoder call at a time, until done is closed (stdin's
// reader ends only with a Read that returns).
func sendInputs(conn net.Conn, spec ExecSpec, stdio ExecIO, done <-chan struct{}) {
	var mu sync.Mutex
	enc := json.NewEncoder(conn)
	send := func(in ExecInput) error {
		mu.Lock()
		defer mu.Unlock()
		select {
		case <-done:
			return net.ErrClosed
		default:
		}
		return enc.Encode(&in)
	}
	if spec.Stdin && stdio.Stdin != nil {
		go func() {
			buf := make([]byte, execInputChunk)
			for {
				n, err := stdio.Stdin.Read(buf)
				if n > 0 && send(ExecInput{Stdin: buf[:n]}) != nil {
					return
				}
				if err != nil {
					send(ExecInput{EOF: true})
					return
				}
			}
		}()
	}
	if spec.TTY != nil && stdio.Resize != nil {
		go func() {
			for {
				select {
				case <-done:
					return
				case ws, ok := <-stdio.Resize:
					if !ok || send(ExecInput{Size: &ws}) != nil {
						return
					}
				}
			}
		}()
	}
}
