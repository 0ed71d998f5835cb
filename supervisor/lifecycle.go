package supervisor

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/console"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/supervisor/api"
)

// startVM starts (or restarts from scratch) one VM and says which VMM it
// started. Readiness is reported later through events.
func (s *Supervisor) startVM(ctx context.Context, spec api.VMSpec) (*api.Started, error) {
	if s.vm(spec.Address) != nil {
		if err := s.stopVM(ctx, spec.Address, s.opts.StopTimeout); err != nil {
			return nil, err
		}
	}
	if p, m := s.take(spec); m != nil {
		st, err := s.claim(ctx, spec, p, m)
		if err == nil {
			return st, nil
		}
		s.log.Warn("take a VM from its pool failed; starting it", "vm", spec.Address, "err", err)
	}
	v := &vmRun{s: s, spec: spec, runDir: filenames.VMRuntime(s.opts.RuntimeRoot, s.opts.Namespace, spec.Name),
		st: api.VMStatus{Address: spec.Address, Name: spec.Name, State: api.StateCreating}}
	for _, dir := range []string{v.runDir, spec.StateDir} {
		if err := os.MkdirAll(dir, filenames.DirMode); err != nil {
			return nil, fmt.Errorf("start %s: %w", spec.Address, err)
		}
	}
	// A start that fails leaves nothing in the runtime directory: nothing
	// would remove it later (the VM is not kept), and the error quotes
	// QEMU's stderr.
	if err := s.wire(v); err != nil {
		s.unwire(v)
		os.RemoveAll(v.runDir)
		return nil, fmt.Errorf("start %s: %w", spec.Address, err)
	}
	s.mu.Lock()
	s.vms[spec.Address] = v
	s.mu.Unlock()
	if err := s.launch(ctx, v); err != nil {
		s.mu.Lock()
		delete(s.vms, spec.Address)
		s.mu.Unlock()
		s.unwire(v)
		os.Remove(recordPath(&v.spec))
		os.RemoveAll(v.runDir)
		return nil, err
	}
	return started(v.instance())
}

// launch starts the VMM and the goroutine that supervises it.
func (s *Supervisor) launch(ctx context.Context, v *vmRun) error {
	cfg := v.config()
	loopCtx, cancel := context.WithCancel(context.Background())
	v.mu.Lock()
	relay := v.relay // the previous VMM's console (restart)
	v.relay = nil
	v.mu.Unlock()
	if relay != nil {
		relay.Close() // before the log's size is taken: it writes the last lines
	}
	var logStart int64
	if fi, err := os.Stat(consoleLogPath(&v.spec)); err == nil {
		logStart = fi.Size()
	}
	v.mu.Lock()
	previous := v.cancel
	v.loopCtx, v.cancel = loopCtx, cancel
	v.logStart = logStart
	v.mu.Unlock()
	if previous != nil {
		// A restart: what still waits on the VMM before (a readiness
		// probe, a console follow) ends with it.
		previous()
	}
	s.mu.Lock()
	s.booting[v.runDir] = v
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.booting, v.runDir)
		s.mu.Unlock()
	}()
	s.emitVM(v, api.PhaseVMMStart, "starting the VMM")
	inst, err := s.opts.Driver.Start(ctx, &cfg)
	if err != nil {
		cancel()
		s.emitVM(v, api.PhaseFailed, err.Error())
		return fmt.Errorf("start %s: %w", v.spec.Address, err)
	}
	s.adopt(v, inst, adoptStarted)
	return nil
}

// BeforeBoot is the driver hook that runs while the VMM is up but its CPUs
// have not started: the console relay connects here, so the log has the
// guest's first line. Wire it into the driver's options.
func (s *Supervisor) BeforeBoot(ctx context.Context, cfg *hypervisor.Config) error {
	s.mu.Lock()
	v := s.booting[cfg.RunDir]
	s.mu.Unlock()
	if v == nil {
		return nil
	}
	pid, err := runDirPID(cfg.RunDir)
	if err != nil {
		return fmt.Errorf("read the VMM's pid: %w", err)
	}
	if err := s.limitCPU(v, pid); err != nil {
		return err
	}
	v.mu.Lock()
	loopCtx := v.loopCtx
	v.mu.Unlock()
	relay, err := s.startRelay(loopCtx, v)
	if err != nil {
		return err
	}
	v.mu.Lock()
	v.relay = relay
	v.mu.Unlock()
	return nil
}

// startRelay connects v's console relay; it lives until ctx, v's
// supervising loop's, ends or it is closed.
func (s *Supervisor) startRelay(ctx context.Context, v *vmRun) (*console.Relay, error) {
	return console.Start(ctx, console.Options{
		VMMSocket: filepath.Join(v.runDir, filenames.ConsoleVMMSocket),
		Socket:    filepath.Join(v.runDir, filenames.ConsoleSocket),
		LogPath:   consoleLogPath(&v.spec),
		Logger:    s.log,
	})
}

// adoption is how adopt came by a VMM.
type adoption int

const (
	adoptStarted   adoption = iota // started here, booting
	adoptReadopted                 // started by an earlier supervisor
	// adoptRestored: restored from a snapshot here and running again;
	// v.st already says how it was at the save.
	adoptRestored
)

// adopt takes over a running VMM: console relay (unless BeforeBoot already
// started it), readiness, exit.
func (s *Supervisor) adopt(v *vmRun, inst hypervisor.Instance, how adoption) {
	v.mu.Lock()
	if how == adoptReadopted {
		v.loopCtx, v.cancel = context.WithCancel(context.Background())
	}
	loopCtx := v.loopCtx
	if v.relay == nil {
		// A re-adopted VM: connect the relay in the background (it retries
		// until the VMM's console socket answers or the VM goes away).
		go func(ctx context.Context) {
			r, err := s.startRelay(ctx, v)
			if err != nil {
				if ctx.Err() == nil {
					s.log.Warn("console relay", "vm", v.spec.Address, "err", err)
				}
				return
			}
			v.mu.Lock()
			keep := v.relay == nil && ctx.Err() == nil
			if keep {
				v.relay = r
			}
			v.mu.Unlock()
			if !keep {
				r.Close()
			}
		}(loopCtx)
	}
	v.inst = inst
	v.loopDone = make(chan struct{})
	v.wake = make(chan struct{})
	if how != adoptReadopted {
		if how == adoptStarted {
			v.st.State, v.st.Reason, v.st.ExitCode, v.st.Warnings = api.StateBooting, "", nil, nil
		}
		v.st.Held = v.spec.Hold && !v.released
		v.st.StartedAt = time.Now().UTC()
		v.guestExit, v.guestReady, v.guestErr = nil, false, ""
		v.st.Boot = string(inst.Boot().Kind)
	}
	// A VM restored from a template is parked: it is told to go on at
	// once rather than after the round trip of its hello.
	restored := how == adoptStarted && inst.Boot().Kind.Restored()
	v.unparking = restored
	v.st.PID = inst.Identity().PID
	if a := inst.Accel().Name; a != "" {
		v.st.Accel = a
	}
	v.writeRecordLocked()
	v.mu.Unlock()
	if how == adoptStarted {
		s.emitVM(v, api.PhaseBooting, bootingMessage(inst))
	}
	if restored {
		go s.unpark(v, inst, true)
	}
	v.mu.Lock()
	resend := v.spec.Hold && v.released
	v.mu.Unlock()
	if resend {
		s.sendStart(v, inst)
	}
	go s.superviseLoop(loopCtx, v, inst, how != adoptStarted)
}

// bootingMessage says how the VMM came up.
func bootingMessage(inst hypervisor.Instance) string {
	pid := inst.Identity().PID
	switch b := inst.Boot(); b.Kind {
	case hypervisor.BootTemplate:
		return fmt.Sprintf("VMM restored from the boot template of its shape in %s (pid %d); booting", b.Took.Round(time.Millisecond), pid)
	case hypervisor.BootPool:
		return fmt.Sprintf("VMM taken from the warm pool (pid %d); booting", pid)
	}
	return fmt.Sprintf("VMM running (pid %d); booting", pid)
}

// superviseLoop waits for readiness (unless the VM was ready when a VMM
// running already was adopted) and for the VMM's exit, and applies the
// restart policy.
func (s *Supervisor) superviseLoop(ctx context.Context, v *vmRun, inst hypervisor.Instance, readopted bool) {
	v.mu.Lock()
	done, wake := v.loopDone, v.wake
	ready := v.st.State == api.StateReady
	v.mu.Unlock()
	defer close(done)
	go s.guestEvents(ctx, v, inst)
	if !readopted || !ready {
		go s.awaitReady(ctx, v, inst)
	}
	status, err := inst.Wait(ctx)
	if ctx.Err() != nil {
		return // released: the VMM keeps running without us
	}
	v.mu.Lock()
	relay := v.relay
	v.mu.Unlock()
	if relay != nil {
		// Give the relay a moment to drain the last console lines.
		select {
		case <-relay.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
	v.mu.Lock()
	stopping := v.stopping
	guestExit := v.guestExit
	unhealthy := v.unhealthyKill
	v.unhealthyKill = false
	v.mu.Unlock()
	code, reason := exitOf(status, err, guestExit)
	if unhealthy {
		reason = "unhealthy, restarted by its health check (" + reason + ")"
	}
	switch {
	case stopping:
		s.setState(v, api.StateStopped, "stopped by request", &code)
		s.emitVM(v, api.PhaseStopped, "stopped")
		return
	case code == 0:
		s.setState(v, api.StateStopped, reason, &code)
		s.emitVM(v, api.PhaseExited, "exited: "+reason)
	default:
		s.setState(v, api.StateFailed, reason, &code)
		s.emitVM(v, api.PhaseFailed, reason)
	}
	v.mu.Lock()
	restart := v.spec.Restart
	if !restart.Applies(code) {
		v.mu.Unlock()
		return
	}
	v.st.Restarts++
	n := v.st.Restarts
	v.mu.Unlock()
	delay := min(time.Duration(1<<min(n-1, 5))*time.Second, 30*time.Second)
	s.emitVM(v, api.PhaseRestart, fmt.Sprintf("restarting in %s (restart = %q, restart %d)", delay, restart, n))
	select {
	case <-time.After(delay):
	case <-ctx.Done():
		return
	case <-wake:
	}
	v.mu.Lock()
	stopping = v.stopping
	v.mu.Unlock()
	if stopping {
		return
	}
	if err := s.launch(context.Background(), v); err != nil {
		s.setState(v, api.StateFailed, "restart failed: "+err.Error(), &code)
	}
}

// exitOf turns a VMM exit into the exit code `ps` shows and its reason.
// The workload's own exit code, as the guest reported it, wins over the
// VMM's: the guest powers off after a one-shot workload, and QEMU exits 0.
func exitOf(st hypervisor.ExitStatus, err error, guestExit *int) (int, string) {
	switch {
	case err != nil:
		return -1, "lost track of the VMM: " + err.Error()
	case st.Signal != 0:
		return 128 + int(st.Signal), fmt.Sprintf("the VMM was killed by signal %d (%s)", int(st.Signal), st.Signal)
	case guestExit != nil:
		return *guestExit, fmt.Sprintf("the workload exited with status %d", *guestExit)
	case !st.Known:
		return -1, "the VMM exited while unwatched; its status is unknown"
	case st.Code != 0:
		return st.Code, fmt.Sprintf("the VMM exited with status %d", st.Code)
	case st.GuestShutdown:
		return 0, "the guest powered off"
	}
	return 0, "the VMM exited"
}
