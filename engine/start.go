package engine

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor"
)

// unknownReadyWait bounds the engine's own wait for a VM started outside a
// plan, whose ready timeout it does not know: the supervisor fails the VM
// after that timeout anyway, so this only guards against a lost event.
const unknownReadyWait = 10 * time.Minute

// startVM carries out a Start action: a VM stopped on request boots again
// with its disks. Its in-place changes are applied first, and what it
// depends on and this plan leaves alone must be ready, as for a new VM.
func (e *Engine) startVM(ctx context.Context, plan *planner.Plan, a *planner.Action, vm *stackfile.VM, desired *stackfile.Stack, w *waiters, release func()) error {
	if err := e.awaitDependencies(ctx, plan, vm, desired); err != nil {
		return fmt.Errorf("%s: %w", a.Address, err)
	}
	if len(a.Changes) > 0 {
		update := *a
		update.Kind = planner.Update
		if err := e.applyVM(ctx, plan, &update, vm, desired, w, release, nil); err != nil {
			return err
		}
	} else if err := e.record(plan, a, nil); err != nil {
		return err
	}
	return e.boot(ctx, a.Address, vm.Name, vm.Ready.Timeout+30*time.Second, w, release)
}

// Start boots the VMs at addresses again, each stopped on request (or
// exited or failed), from the spec and disks they had, and waits until they
// are ready unless NoWait is set. Unlike a plan, it does not wait for what
// they depend on. The caller holds the state lock; st is the state read
// under it.
func (e *Engine) Start(ctx context.Context, st *state.State, addresses []string) error {
	w, err := e.begin(ctx, st)
	if err != nil {
		return err
	}
	defer w.close()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	for _, addr := range addresses {
		vm := st.VMs[addr]
		if vm == nil {
			return fmt.Errorf("start %s: not in the namespace's state", addr)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.boot(ctx, addr, vm.Name, unknownReadyWait, w, func() {}); err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// boot asks the supervisor to boot a VM that does not run again (boot-vm),
// records its new process like createVM, lets go of the caller's slot, and
// waits until it is ready.
func (e *Engine) boot(ctx context.Context, address, name string, timeout time.Duration, w *waiters, release func()) error {
	var tok [8]byte
	rand.Read(tok[:])
	instance := hex.EncodeToString(tok[:])
	events := w.expect(address)
	defer w.forget(address)
	resp, err := e.Supervisor.Call(ctx, &supervisor.Request{Op: supervisor.OpBootVM, Address: address, Instance: instance})
	if err != nil {
		e.record(nil, nil, func(st *state.State) {
			if v := st.VMs[address]; v != nil {
				v.Status, v.Reason = state.StatusFailed, err.Error()
			}
		})
		return e.vmFailure(address, name, err.Error())
	}
	e.noteAccel(resp.Accel)
	if err := e.record(nil, nil, func(st *state.State) {
		v := st.VMs[address]
		v.Status, v.Process, v.StartedAt, v.ExitCode, v.Reason = state.StatusBooting, resp.Process, time.Now().UTC(), nil, ""
	}); err != nil {
		return err
	}
	release()
	if e.NoWait {
		return nil
	}
	return e.awaitReady(ctx, w, events, address, name, instance, timeout)
}

// awaitReady waits for the ready event of one VM incarnation (instance),
// records the outcome in state, and turns a failure into a VMError with
// the console's tail.
func (e *Engine) awaitReady(ctx context.Context, w *waiters, events <-chan Event, address, name, instance string, timeout time.Duration) error {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", address, ctx.Err())
		case <-w.lost():
			return e.vmFailure(address, name, "lost the connection to the supervisor")
		case <-deadline.C:
			return e.vmFailure(address, name, fmt.Sprintf("no readiness report after %s", timeout))
		case ev := <-events:
			if ev.Instance != instance {
				continue
			}
			switch ev.Phase {
			case supervisor.PhaseReady:
				return e.record(nil, nil, func(st *state.State) { st.VMs[address].Status = state.StatusReady })
			case supervisor.PhaseFailed, supervisor.PhaseExited, supervisor.PhaseStopped:
				reason := ev.Message
				e.record(nil, nil, func(st *state.State) {
					v := st.VMs[address]
					v.Status, v.Reason = state.StatusFailed, reason
				})
				return e.vmFailure(address, name, reason)
			}
		}
	}
}
