package qemu

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/proc"
	"github.com/stackvm/stack/hypervisor/qemu/qmp"
	"golang.org/x/sys/unix"
)

// instance implements hypervisor.Instance.
type instance struct {
	d        *Driver
	log      *slog.Logger
	id       hypervisor.Identity
	runDir   string
	hasAgent bool
	accel    hypervisor.Accel
	boot     hypervisor.Boot
	// making is the boot template this VM makes when its guest parks.
	making *templatePlan
	// migrating is held while QEMU migrates (a template's or a
	// snapshot's save): one at a time.
	migrating sync.Mutex
	qmp       *qmp.Client

	cmd     *exec.Cmd // set when we are QEMU's parent
	waitErr error     // cmd.Wait's result, valid once exited is closed
	pidfd   *os.File  // set when attached
	// watchDone is closed when the pidfd watcher has returned (attached).
	watchDone chan struct{}

	exited  chan struct{} // closed once the process is gone
	drained chan struct{} // closed once all QMP events were seen
	closed  chan struct{}

	mu        sync.Mutex
	shutdown  *qmp.ShutdownData
	agent     *agentChannel
	closeOnce sync.Once
}

var _ hypervisor.Instance = (*instance)(nil)

func (in *instance) Identity() hypervisor.Identity { return in.id }

// Accel implements hypervisor.Instance. A re-adopted VMM's accelerator is
// read back from the argv its start recorded.
func (in *instance) Accel() hypervisor.Accel { return in.accel }

// Boot implements hypervisor.Instance.
func (in *instance) Boot() hypervisor.Boot { return in.boot }

// Claim implements hypervisor.Instance: the guest of a VMM started paused
// has not read its config disk yet, so the disk is given cfg's config
// (same inode: QEMU keeps it open) before the CPUs run.
func (in *instance) Claim(ctx context.Context, cfg *hypervisor.Config) error {
	if in.boot.Kind != hypervisor.BootTemplate {
		return fmt.Errorf("claim vm %s: its VMM was not started paused from a template", cfg.Name)
	}
	if len(cfg.GuestConfig) > configDiskTemplateSize {
		return fmt.Errorf("claim vm %s: its config has %d bytes, more than a template VM's config disk holds", cfg.Name, len(cfg.GuestConfig))
	}
	path := configDiskPath(in.runDir)
	if err := writePrivate(path, ConfigDiskImage(cfg.GuestConfig)); err != nil {
		return fmt.Errorf("claim vm %s: write config disk: %w", cfg.Name, err)
	}
	if err := os.Truncate(path, configDiskTemplateSize); err != nil {
		return fmt.Errorf("claim vm %s: write config disk: %w", cfg.Name, err)
	}
	in.boot.Kind = hypervisor.BootPool
	if err := in.qmp.Cont(ctx); err != nil {
		return fmt.Errorf("claim vm %s: %w", cfg.Name, err)
	}
	return nil
}

// Parked implements hypervisor.Instance: the guest waits at its park
// point. A VM that makes a template makes it now.
func (in *instance) Parked(ctx context.Context) error {
	in.mu.Lock()
	p := in.making
	in.making = nil
	in.mu.Unlock()
	if p != nil {
		if err := in.makeTemplate(ctx, p); err != nil {
			in.log.Warn("make a boot template", "key", p.key, "err", err)
		}
	}
	return nil
}

// cycleAgentPort connects to the agent port and hangs up, with the VM
// running. When its earlier client went away while the VM was paused, the
// guest was never told (QEMU 7.2 loses the virtio-serial port-closed event
// of a paused VM), and what the guest writes then reaches no later client;
// a hang-up seen while the VM runs sets the port right.
func (in *instance) cycleAgentPort() {
	if !in.hasAgent {
		return
	}
	c, err := net.DialTimeout("unix", agentPath(in.runDir), time.Second)
	if err != nil {
		in.log.Warn("reset the agent port", "err", err)
		return
	}
	time.Sleep(50 * time.Millisecond) // let QEMU see the client before it goes
	c.Close()
}

// resumeLeftPaused lets a VM run again that a dead supervisor left paused
// in the middle of making its boot template (a killed `up` or supervisor):
// a device-state save still under way is let finish or cancelled, and the
// CPUs go on. No VM is paused across supervisors by design: pool members,
// the only VMs kept paused, end with theirs.
func (in *instance) resumeLeftPaused(ctx context.Context) error {
	for {
		st, err := in.qmp.QueryStatus(ctx)
		if err != nil {
			return err
		}
		switch st.Status {
		case "finish-migrate":
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Millisecond):
			}
			continue
		case "paused", "postmigrate":
			if _, err := in.qmp.Execute(ctx, "migrate_cancel", nil); err != nil {
				return err
			}
			in.log.Info("resumed a VM left paused by a dead supervisor", "status", st.Status)
			if err := in.qmp.Cont(ctx); err != nil {
				return err
			}
			in.cycleAgentPort()
			return nil
		}
		return nil
	}
}

// watchEvents records the SHUTDOWN event (why QEMU is exiting) until the QMP
// connection ends.
func (in *instance) watchEvents() {
	defer close(in.drained)
	for ev := range in.qmp.Events() {
		in.log.Debug("qmp event", "event", ev.Name, "data", string(ev.Data))
		if ev.Name != "SHUTDOWN" {
			continue
		}
		d, err := qmp.ParseShutdown(ev)
		if err != nil {
			in.log.Warn("bad SHUTDOWN event", "err", err)
			continue
		}
		in.mu.Lock()
		in.shutdown = &d
		in.mu.Unlock()
	}
}

// watchPidfd closes exited when the attached process ends: a pidfd becomes
// readable when its process exits, and the runtime poller waits for that
// without holding a thread. Where the poller cannot take the pidfd, /proc is
// polled instead. Closing the instance ends the watch (watchDone) without
// closing exited.
func (in *instance) watchPidfd() {
	defer close(in.watchDone)
	rc, err := in.pidfd.SyscallConn()
	if err == nil {
		err = rc.Read(func(fd uintptr) bool { return pidfdExited(int(fd)) })
		if err == nil {
			close(in.exited)
			return
		}
	}
	for proc.Alive(in.id.PID, in.id.StartTime) {
		select {
		case <-in.closed:
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	close(in.exited)
}

func (in *instance) gone() bool {
	select {
	case <-in.exited:
		return true
	default:
		return false
	}
}

// State implements hypervisor.Instance.
func (in *instance) State(ctx context.Context) (hypervisor.RunState, error) {
	if in.gone() {
		return hypervisor.StateExited, nil
	}
	s, err := in.qmp.QueryStatus(ctx)
	if err != nil {
		if errors.Is(err, qmp.ErrClosed) {
			select {
			case <-in.exited:
				return hypervisor.StateExited, nil
			case <-time.After(time.Second):
			}
		}
		return "", fmt.Errorf("query vm state: %w", err)
	}
	switch s.Status {
	case "running":
		return hypervisor.StateRunning, nil
	case "shutdown":
		return hypervisor.StateShutdown, nil
	default: // paused, prelaunch, suspended, inmigrate, ...
		return hypervisor.StatePaused, nil
	}
}

// Stop implements hypervisor.Instance: the guest agent's poweroff for guests
// that have one (a minimal guest ignores ACPI), else the ACPI power button;
// after timeout QMP quit, and after that SIGKILL. Nothing waits unbounded on
// the guest or QEMU, nor after ctx ends: the agent and QMP calls have
// deadlines, so SIGKILL comes at most timeout + quitWait after the call.
func (in *instance) Stop(ctx context.Context, timeout time.Duration) error {
	defer func() {
		if in.gone() {
			removeSockets(in.runDir)
		}
	}()
	if in.gone() {
		return nil
	}
	graceful := time.Now().Add(timeout)
	asked := false
	if in.hasAgent {
		actx, cancel := context.WithTimeout(ctx, min(timeout, 2*time.Second))
		err := in.guest().Send(actx, []byte(`{"type":"poweroff"}`))
		cancel()
		if err == nil {
			asked = true
			in.log.Debug("asked guest agent to power off")
		} else {
			in.log.Warn("guest agent poweroff failed, trying ACPI", "err", err)
		}
	}
	if !asked {
		pctx, cancel := context.WithDeadline(ctx, graceful)
		if err := in.qmp.SystemPowerdown(pctx); err != nil && !errors.Is(err, qmp.ErrClosed) {
			in.log.Warn("system_powerdown failed", "err", err)
		}
		cancel()
	}
	if in.waitExit(ctx, time.Until(graceful)) {
		return nil
	}
	in.log.Info("guest did not power off in time, quitting qemu", "timeout", timeout)
	qctx, cancel := context.WithTimeout(ctx, quitWait)
	defer cancel()
	if err := in.qmp.Quit(qctx); err != nil {
		in.log.Warn("qmp quit failed", "err", err)
	}
	if in.waitExit(qctx, quitWait) {
		return nil
	}
	in.log.Warn("qemu did not quit, killing it")
	if err := in.Kill(); err != nil {
		return fmt.Errorf("stop vm: %w", err)
	}
	if in.waitExit(ctx, 10*time.Second) {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("stop vm: %w", ctx.Err())
	}
	return fmt.Errorf("stop vm: pid %d still there after SIGKILL", in.id.PID)
}

// quitWait bounds QMP quit and the wait for QEMU to exit after it.
const quitWait = 5 * time.Second

func (in *instance) waitExit(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-in.exited:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

// Kill implements hypervisor.Instance.
func (in *instance) Kill() error { return in.Signal(syscall.SIGKILL) }

// Signal implements hypervisor.Instance. Both paths are immune to pid
// reuse: an unreaped child keeps its pid, and a pidfd names one process. A
// VMM that is gone already is not an error.
func (in *instance) Signal(sig syscall.Signal) error {
	if in.gone() {
		return nil
	}
	var err error
	if in.cmd != nil {
		err = in.cmd.Process.Signal(sig)
	} else {
		err = pidfdSendSignal(in.pidfd, unix.Signal(sig))
	}
	if err != nil && !errors.Is(err, os.ErrProcessDone) && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signal vmm pid %d: %w", in.id.PID, err)
	}
	return nil
}

// Wait implements hypervisor.Instance.
func (in *instance) Wait(ctx context.Context) (hypervisor.ExitStatus, error) {
	select {
	case <-in.exited:
	case <-ctx.Done():
		return hypervisor.ExitStatus{}, fmt.Errorf("wait for vmm: %w", ctx.Err())
	}
	// QEMU's exit closes the QMP connection; its last events (SHUTDOWN)
	// are read before that, so wait for them briefly.
	select {
	case <-in.drained:
	case <-time.After(2 * time.Second):
	case <-ctx.Done():
	}
	var st hypervisor.ExitStatus
	in.mu.Lock()
	if in.shutdown != nil {
		st.GuestShutdown = in.shutdown.Guest && in.shutdown.Reason == "guest-shutdown"
	}
	in.mu.Unlock()
	if in.cmd == nil || in.cmd.ProcessState == nil {
		st.Code = -1
		return st, nil // Known stays false: not our child
	}
	st.Known = true
	ws, ok := in.cmd.ProcessState.Sys().(syscall.WaitStatus)
	switch {
	case ok && ws.Signaled():
		st.Code = -1
		st.Signal = ws.Signal()
	default:
		st.Code = in.cmd.ProcessState.ExitCode()
	}
	return st, nil
}

// Guest implements hypervisor.Instance.
func (in *instance) Guest() hypervisor.GuestChannel {
	if !in.hasAgent {
		return nil
	}
	return in.guest()
}

func (in *instance) guest() *agentChannel {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.agent == nil {
		in.agent = newAgentChannel(agentPath(in.runDir), in.exited, in.closed, in.log)
	}
	return in.agent
}

// Close implements hypervisor.Instance: it drops this process's QMP and
// agent connections and leaves the VMM running. For a VMM this process
// started, Wait still reports its exit after Close (the child is reaped
// either way); State, Stop and Guest need an open handle.
func (in *instance) Close() error {
	in.closeOnce.Do(func() {
		close(in.closed)
		if in.qmp != nil {
			in.qmp.Close()
		}
		in.mu.Lock()
		a, p := in.agent, in.making
		in.making = nil
		in.mu.Unlock()
		if p != nil {
			// The guest never parked: no template from this VM.
			p.making.Abort()
			p.mem.Close()
		}
		if a != nil {
			a.close()
		}
		if in.pidfd != nil {
			in.pidfd.Close()
			<-in.watchDone
		}
		if in.gone() {
			removeSockets(in.runDir)
		}
	})
	return nil
}
