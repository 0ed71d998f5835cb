package supervisor

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/supervisor/api"
)

// Three ways a VM stops:
//   - stop-vm (stopVM) stops it and forgets it: record and runtime files go;
//     the engine uses it to delete and replace VMs.
//   - halt-vm (haltVM) stops it and keeps it, record, spec and disks, marked
//     Halted: `stack stop`. The restart policy does not apply to it, and
//     boot-vm or the next `up` starts it again as it was.
//   - the VM stops by itself (its workload exits, it powers off, its VMM is
//     killed): the restart policy decides.

// stopTimeout is the request's graceful stop timeout, or the default.
func (s *Supervisor) stopTimeout(req *api.Request) time.Duration {
	if req.Timeout > 0 {
		return time.Duration(req.Timeout)
	}
	return s.opts.StopTimeout
}

// quiesce brings v to rest: its VMM, if one runs, is stopped (gracefully,
// then forcibly after timeout), its supervising loop has ended without
// restarting it, and its console relay, switch ports, gateway entries and
// runtime directory are gone. v stays in s.vms with its record; the caller
// decides what becomes of it. v.stopping stays set until the caller clears
// it (boot-vm).
func (s *Supervisor) quiesce(ctx context.Context, v *vmRun, timeout time.Duration) error {
	var err error
	for {
		if err := s.awaitLaunch(ctx, v); err != nil {
			return err
		}
		v.mu.Lock()
		v.stopping = true
		if v.wake != nil {
			close(v.wake) // a loop waiting to restart the VM looks at stopping now
			v.wake = nil
		}
		inst, done := v.inst, v.loopDone
		v.mu.Unlock()
		if inst == nil {
			break
		}
		// A paused guest cannot power off: it runs again to be asked.
		if paused, _ := v.pausedNow(); paused {
			if inst.Resume(ctx) == nil {
				v.setPaused(false)
			}
		}
		if err = inst.Stop(ctx, timeout); err == nil && done != nil {
			<-done
		}
		inst.Close()
		// The loop may have launched a restart just before it saw stopping:
		// then the VM has a new VMM to stop.
		again := err == nil && v.instance() != inst
		if !again {
			break
		}
	}
	v.mu.Lock()
	cancel, relay := v.cancel, v.relay
	v.relay = nil
	v.mu.Unlock()
	if cancel != nil {
		cancel() // ends the readiness wait and the guest event reader
	}
	if relay != nil {
		relay.Close()
	}
	s.unwire(v)
	os.RemoveAll(v.runDir)
	return err
}

// awaitLaunch waits while a VMM of v is being started: the supervisor
// carries a start through when its client hangs up (a killed `up`), and the
// next command's stop must find the VMM that start makes, not miss it and
// leave it running unknown.
func (s *Supervisor) awaitLaunch(ctx context.Context, v *vmRun) error {
	for {
		s.mu.Lock()
		v.mu.Lock()
		busy := s.booting[v.runDir] == v ||
			(s.vms[v.spec.Address] == v && v.inst == nil && v.st.State == api.StateCreating) // start-vm before its launch
		v.mu.Unlock()
		s.mu.Unlock()
		if !busy {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stopVM stops a VM gracefully (then forcibly after timeout) and removes
// everything the supervisor made for it.
func (s *Supervisor) stopVM(ctx context.Context, address string, timeout time.Duration) error {
	v := s.vm(address)
	if v == nil {
		return nil // already gone: stopping is idempotent
	}
	err := s.quiesce(ctx, v, timeout)
	s.mu.Lock()
	delete(s.vms, address)
	s.mu.Unlock()
	os.Remove(recordPath(&v.spec))
	s.removeCPUGroup(v)
	s.emitVM(v, api.PhaseStopped, "stopped and removed")
	if err != nil {
		return fmt.Errorf("stop %s: %w", address, err)
	}
	return nil
}

// haltVM stops a VM and keeps it (halt-vm, `stack stop`): its record says
// Halted, with the state and exit code of its last run, and the next `ps`,
// plan and supervisor see it so. Halting a halted VM does nothing more.
func (s *Supervisor) haltVM(ctx context.Context, address string, timeout time.Duration) error {
	v := s.vm(address)
	if v == nil {
		return fmt.Errorf("stop %s: no such VM", address)
	}
	if err := s.quiesce(ctx, v, timeout); err != nil {
		return fmt.Errorf("stop %s: %w", address, err)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	v.st.Halted, v.st.Held, v.st.PID = true, false, 0
	if v.st.State != api.StateStopped && v.st.State != api.StateFailed {
		// No loop saw it exit: it never ran, or was re-adopted without a VMM.
		v.st.State, v.st.Reason = api.StateStopped, "stopped by request"
	}
	v.writeRecordLocked()
	return nil
}

// bootVM starts a VM that does not run again, from the spec it was started
// with and with the disks it left (boot-vm, `stack start`, and `up` for a
// halted VM). instance tags the new incarnation's events. A VM that runs is
// refused; a failed one whose VMM is still up (not ready in time) is stopped
// first. Its workload is not held: what it depends on was ready when it
// first started.
func (s *Supervisor) bootVM(ctx context.Context, address, instance string) (*api.Started, error) {
	v := s.vm(address)
	if v == nil {
		return nil, fmt.Errorf("start %s: no such VM", address)
	}
	v.mu.Lock()
	st := v.st
	v.mu.Unlock()
	if !st.Halted && st.State != api.StateStopped && st.State != api.StateFailed {
		return nil, fmt.Errorf("start %s: it is %s", address, st.State)
	}
	if err := s.quiesce(ctx, v, s.opts.StopTimeout); err != nil {
		return nil, fmt.Errorf("start %s: %w", address, err)
	}
	v.mu.Lock()
	v.stopping, v.st.Halted, v.released = false, false, true
	if instance != "" {
		v.spec.Instance = instance
	}
	if v.ports != nil {
		// Taken from a pool: its member's VMM and ports are gone with
		// the stop; it boots again as any VM does.
		v.ports, v.runDir = nil, filenames.VMRuntime(s.opts.RuntimeRoot, s.opts.Namespace, v.spec.Name)
	}
	v.mu.Unlock()
	if err := os.MkdirAll(v.runDir, filenames.DirMode); err != nil {
		return nil, fmt.Errorf("start %s: %w", address, err)
	}
	fail := func(err error) (*api.Started, error) {
		s.unwire(v)
		s.setState(v, api.StateFailed, err.Error(), nil)
		return nil, err
	}
	if err := s.wire(v); err != nil {
		return fail(fmt.Errorf("start %s: %w", address, err))
	}
	if err := s.launch(ctx, v); err != nil {
		return fail(err)
	}
	return started(v.instance())
}
