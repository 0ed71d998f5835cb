// Package client calls a namespace's supervisor over its control socket,
// with one typed method per operation of package supervisor/api, and starts
// the supervisor process when none answers (Ensure).
package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/stackvm/stack/hypervisor/proc"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
	"github.com/stackvm/stack/supervisor/api"
	"golang.org/x/sys/unix"
)

// Client calls one namespace's supervisor. It holds no connection: every
// call dials the socket, so a Client outlives supervisor restarts.
type Client struct {
	path  string
	ns    string
	pid   int    // the supervisor's, from the ping that made this client
	start uint64 // its start time, so that Shutdown tells it from a reused pid
}

// ErrNotRunning is returned when no supervisor answers on the socket.
var ErrNotRunning = errors.New("no supervisor is running for this namespace")

// Default deadlines of calls whose context has none: a supervisor that is
// alive but does not answer (stopped, wedged) must not hang a command
// forever. Starting and stopping VMs wait for QEMU and so get longer.
const (
	// pingCall bounds the ping every command starts with (Dial): a
	// supervisor that does not answer it is stopped or wedged, and the
	// command says so at once rather than at a later call's deadline.
	pingCall   = 10 * time.Second
	quickCall  = 30 * time.Second
	vmCall     = 3 * time.Minute
	stopMargin = time.Minute // beyond a stop's own graceful timeout
)

// Dial returns a client for the namespace's supervisor if one answers,
// speaks this protocol version and runs the namespace of stateRoot. A
// supervisor is found by namespace alone (its socket is in the user's
// runtime directory), so a command for another state directory with the
// same namespace reaches it too: Dial refuses that with a *StateRootError
// instead of letting the command stop or replace VMs it has no state for.
func Dial(ctx context.Context, runtimeRoot, stateRoot, namespace string) (*Client, error) {
	if err := filenames.CheckNamespace(namespace); err != nil {
		return nil, fmt.Errorf("dial supervisor: %w", err)
	}
	// The socket is only trusted in directories private to this user:
	// another user's socket there would receive VM specs, env values
	// included, and exec traffic.
	for _, d := range []string{runtimeRoot, filenames.NamespaceRuntime(runtimeRoot, namespace)} {
		if err := fsutil.CheckPrivate(d); errors.Is(err, fs.ErrNotExist) {
			return nil, ErrNotRunning
		} else if err != nil {
			return nil, fmt.Errorf("dial supervisor: %w", err)
		}
	}
	c := &Client{path: filenames.SupervisorSocketPath(runtimeRoot, namespace), ns: namespace}
	pong, err := c.Ping(ctx)
	if err != nil {
		return nil, err
	}
	if pong.Version != api.Version {
		return nil, fmt.Errorf("the supervisor of namespace %q (pid %d) speaks protocol version %d, this stack speaks %d: it was started by another version of stack; stop it with that version's `stack down`, or end it (kill %d: its VMs keep running)",
			namespace, pong.PID, pong.Version, api.Version, pong.PID)
	}
	if !sameDir(pong.StateRoot, stateRoot) {
		return nil, &StateRootError{Namespace: namespace, Running: pong.StateRoot, Wanted: stateRoot}
	}
	c.pid = pong.PID
	c.start, _ = proc.StartTime(c.pid)
	return c, nil
}

// PID is the supervisor's process id.
func (c *Client) PID() int { return c.pid }

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

// Ping asks who answers.
func (c *Client) Ping(ctx context.Context) (api.Pong, error) {
	resp, err := c.call(ctx, pingCall, &api.Request{Op: api.OpPing})
	if err != nil {
		return api.Pong{}, err
	}
	if resp.Pong == nil {
		// A supervisor of protocol version 1 answered with bare fields.
		return api.Pong{Version: 1}, nil
	}
	return *resp.Pong, nil
}

// EnsureNetwork starts the network's switch and gateway, or reconfigures
// the gateway of a running one; it does nothing when it runs as asked.
func (c *Client) EnsureNetwork(ctx context.Context, n api.NetworkSpec) error {
	_, err := c.call(ctx, quickCall, &api.Request{Op: api.OpEnsureNetwork, Network: &n})
	return err
}

// RemoveNetwork stops a network's switch and gateway.
func (c *Client) RemoveNetwork(ctx context.Context, name string) error {
	_, err := c.call(ctx, quickCall, &api.Request{Op: api.OpRemoveNetwork, Address: name})
	return err
}

// StartVM starts (or starts anew) a VM. Readiness comes later, as events.
func (c *Client) StartVM(ctx context.Context, spec api.VMSpec) (api.Started, error) {
	return c.started(c.call(ctx, vmCall, &api.Request{Op: api.OpStartVM, VM: &spec}))
}

// BootVM boots a VM that does not run again, from its recorded spec and
// disks, as the incarnation instance.
func (c *Client) BootVM(ctx context.Context, address, instance string) (api.Started, error) {
	return c.started(c.call(ctx, vmCall, &api.Request{Op: api.OpBootVM, Address: address, Instance: instance}))
}

func (c *Client) started(resp *api.Response, err error) (api.Started, error) {
	if err != nil {
		return api.Started{}, err
	}
	if resp.Started == nil {
		return api.Started{}, errors.New("the supervisor did not say which VMM it started")
	}
	return *resp.Started, nil
}

// StopVM stops a VM (gracefully, then forcibly after timeout; 0 is the
// supervisor's default) and forgets it.
func (c *Client) StopVM(ctx context.Context, address string, timeout time.Duration) error {
	_, err := c.call(ctx, stopDeadline(timeout), &api.Request{Op: api.OpStopVM, Address: address, Timeout: api.Duration(timeout)})
	return err
}

// HaltVM stops a VM and keeps it, to be booted again (`stack stop`).
func (c *Client) HaltVM(ctx context.Context, address string, timeout time.Duration) error {
	_, err := c.call(ctx, stopDeadline(timeout), &api.Request{Op: api.OpHaltVM, Address: address, Timeout: api.Duration(timeout)})
	return err
}

func stopDeadline(timeout time.Duration) time.Duration {
	if timeout <= 0 {
		timeout = 30 * time.Second // the supervisor's default
	}
	return timeout + stopMargin
}

// Stats samples the counters of every running VM.
func (c *Client) Stats(ctx context.Context) ([]api.VMStats, error) {
	resp, err := c.call(ctx, quickCall, &api.Request{Op: api.OpStats})
	if err != nil {
		return nil, err
	}
	return resp.Stats, nil
}

// PauseVM stops a running VM's CPUs (`stack pause`).
func (c *Client) PauseVM(ctx context.Context, address string) error {
	_, err := c.call(ctx, quickCall, &api.Request{Op: api.OpPauseVM, Address: address})
	return err
}

// ResumeVM lets a paused VM's CPUs run again (`stack unpause`).
func (c *Client) ResumeVM(ctx context.Context, address string) error {
	_, err := c.call(ctx, quickCall, &api.Request{Op: api.OpResumeVM, Address: address})
	return err
}

// SignalVM sends sig to a running VM's VMM process (`stack kill`).
func (c *Client) SignalVM(ctx context.Context, address string, sig syscall.Signal) error {
	_, err := c.call(ctx, quickCall, &api.Request{Op: api.OpSignalVM, Address: address, Signal: int(sig)})
	return err
}

// UpdateVM changes a running VM's host-side attributes in place.
func (c *Client) UpdateVM(ctx context.Context, u api.Update) error {
	_, err := c.call(ctx, quickCall, &api.Request{Op: api.OpUpdateVM, Update: &u})
	return err
}

// ReleaseVM starts a held VM's workload (VMSpec.Hold).
func (c *Client) ReleaseVM(ctx context.Context, address string) error {
	_, err := c.call(ctx, quickCall, &api.Request{Op: api.OpReleaseVM, Address: address})
	return err
}

// Status lists the supervisor's VMs, sorted by address.
func (c *Client) Status(ctx context.Context) ([]api.VMStatus, error) {
	resp, err := c.call(ctx, quickCall, &api.Request{Op: api.OpStatus})
	if err != nil {
		return nil, err
	}
	return resp.VMs, nil
}

// SetPools makes the namespace's warm pools those of specs (others are
// drained).
func (c *Client) SetPools(ctx context.Context, specs []api.PoolSpec) error {
	_, err := c.call(ctx, quickCall, &api.Request{Op: api.OpSetPools, Pools: specs})
	return err
}

// Pools lists the namespace's warm pools.
func (c *Client) Pools(ctx context.Context) ([]api.PoolStatus, error) {
	resp, err := c.call(ctx, quickCall, &api.Request{Op: api.OpStatus})
	if err != nil {
		return nil, err
	}
	return resp.Pools, nil
}

// snapshotCall bounds a snapshot's save or restore: its disks are copied
// and its VMs' memory written or read.
const snapshotCall = 30 * time.Minute

// SaveSnapshot saves every VM of the namespace, paused together, into dir
// (an empty directory), and says what it wrote. The VMs run on. A client
// that hangs up cancels the save; the VMs run on all the same.
func (c *Client) SaveSnapshot(ctx context.Context, dir string) (*api.Saved, error) {
	resp, err := c.call(ctx, snapshotCall, &api.Request{Op: api.OpSaveSnapshot, Dir: dir})
	if err != nil {
		return nil, err
	}
	return resp.Saved, nil
}

// CheckRestore reports whether vms would restore from their saves,
// changing nothing.
func (c *Client) CheckRestore(ctx context.Context, vms []api.RestoreVM) error {
	_, err := c.call(ctx, vmCall, &api.Request{Op: api.OpCheckRestore, Restore: vms})
	return err
}

// RestoreVMs starts vms from their saves, lets them run at one moment, and
// says which VMMs it started, in order. The namespace must have none of
// them, and their networks must run.
func (c *Client) RestoreVMs(ctx context.Context, vms []api.RestoreVM) ([]api.Started, error) {
	resp, err := c.call(ctx, vmCall, &api.Request{Op: api.OpRestoreVMs, Restore: vms})
	if err != nil {
		return nil, err
	}
	return resp.Restored, nil
}

// Shutdown asks the supervisor to stop every VM and network and exit, and
// waits until its process is gone: a command that follows (the next up)
// must not reach a supervisor on its way out.
func (c *Client) Shutdown(ctx context.Context) error {
	if _, err := c.call(ctx, quickCall, &api.Request{Op: api.OpShutdown}); err != nil {
		return err
	}
	if c.pid == 0 {
		return nil
	}
	wctx, cancel := context.WithTimeout(ctx, vmCall)
	defer cancel()
	// Alive, not kill(pid, 0): an exited supervisor stays a zombie until
	// whoever adopted it reaps it.
	for proc.Alive(c.pid, c.start) {
		select {
		case <-wctx.Done():
			return fmt.Errorf("the supervisor (pid %d) did not exit after shutdown: %w", c.pid, wctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// call sends one request and returns its response, within the default
// deadline d unless ctx has its own; a response carrying an error is
// returned as a Go error.
func (c *Client) call(ctx context.Context, d time.Duration, req *api.Request) (*api.Response, error) {
	if _, ok := ctx.Deadline(); ok {
		d = 0 // the caller's deadline, not ours
	} else {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d)
		defer cancel()
	}
	conn, err := c.dial(ctx)
	if err != nil {
		if ctx.Err() != nil { // the listen backlog is full: nobody accepts
			return nil, c.noAnswer(req.Op, d, nil, ctx.Err())
		}
		return nil, err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	if err := json.NewEncoder(conn).Encode(req); err != nil {
		return nil, fmt.Errorf("send %s to supervisor: %w", req.Op, err)
	}
	var resp api.Response
	if err := json.NewDecoder(bufio.NewReader(conn)).Decode(&resp); err != nil {
		if ctx.Err() != nil {
			return nil, c.noAnswer(req.Op, d, conn, ctx.Err())
		}
		if errors.Is(err, syscall.ECONNRESET) {
			// It died with the request unread: none runs now.
			return nil, fmt.Errorf("%w (read %s reply: %v)", ErrNotRunning, req.Op, err)
		}
		return nil, fmt.Errorf("read %s reply from supervisor: %w", req.Op, err)
	}
	if resp.Error != "" {
		return &resp, errors.New(resp.Error)
	}
	return &resp, nil
}

// NoAnswerError is a supervisor that did not answer a call in time: it
// runs (its socket accepts connections) but is stopped or wedged. PID and
// StartTime identify the process that listens on the socket, when the
// connection got that far (SO_PEERCRED); 0 otherwise.
type NoAnswerError struct {
	Namespace string
	PID       int
	StartTime uint64
	Op        api.Op
	After     time.Duration // 0: the caller's deadline
	Err       error
}

func (e *NoAnswerError) Error() string {
	who, cont := "the supervisor", ""
	if e.PID != 0 {
		who = fmt.Sprintf("the supervisor (pid %d)", e.PID)
		cont = fmt.Sprintf("`kill -CONT %d` if it was stopped; otherwise ", e.PID)
	}
	when := "in time"
	if e.After > 0 {
		when = "within " + e.After.String()
	}
	return fmt.Sprintf("%s of namespace %q did not answer %s %s: it is stopped or wedged. %s`stack -p %s down --force` kills it and the namespace's VMs, found by their recorded identity (%v)",
		who, e.Namespace, e.Op, when, cont, e.Namespace, e.Err)
}

func (e *NoAnswerError) Unwrap() error { return e.Err }

// noAnswer explains a call that ran out of time (d: the deadline it was
// given, 0 for the caller's own); conn, when set, names the process that
// listens on the socket.
func (c *Client) noAnswer(op api.Op, d time.Duration, conn net.Conn, err error) error {
	if !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	e := &NoAnswerError{Namespace: c.ns, PID: c.pid, StartTime: c.start, Op: op, After: d, Err: err}
	if e.PID == 0 && conn != nil {
		if pid, ok := peerPID(conn); ok {
			e.PID = pid
			e.StartTime, _ = proc.StartTime(pid)
		}
	}
	return e
}

// peerPID is the pid of the process at the other end of a unix socket
// connection: for a client's connection, the process that listened.
func peerPID(conn net.Conn) (int, bool) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return 0, false
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, false
	}
	var cred *unix.Ucred
	raw.Control(func(fd uintptr) {
		cred, err = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	})
	if err != nil || cred == nil || cred.Pid <= 0 {
		return 0, false
	}
	return int(cred.Pid), true
}

func (c *Client) dial(ctx context.Context) (net.Conn, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", c.path)
	if err != nil {
		return nil, fmt.Errorf("%w (%v)", ErrNotRunning, err)
	}
	return conn, nil
}

// Watch subscribes to the supervisor's events. It returns once the
// subscription is in place, so no event after the call returns is missed.
// The channel closes when ctx ends or the supervisor goes away.
func (c *Client) Watch(ctx context.Context) (<-chan api.Event, error) {
	conn, err := c.dial(ctx)
	if err != nil {
		return nil, err
	}
	ack := make(chan error, 1)
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	dec := json.NewDecoder(bufio.NewReader(conn))
	go func() {
		if err := json.NewEncoder(conn).Encode(&api.Request{Op: api.OpWatch}); err != nil {
			ack <- err
			return
		}
		var first api.Event
		ack <- dec.Decode(&first)
	}()
	select {
	case err = <-ack:
	case <-time.After(quickCall):
		err = c.noAnswer(api.OpWatch, quickCall, conn, context.DeadlineExceeded)
	}
	if err != nil {
		stop()
		conn.Close()
		return nil, fmt.Errorf("watch supervisor: %w", err)
	}
	ch := make(chan api.Event, 256)
	go func() {
		defer close(ch)
		defer conn.Close()
		for {
			var ev api.Event
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
