package engine

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/stackvm/stack/cloudinit"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor/api"
)

// readyMargin is added to a VM's own ready timeout for the engine's wait:
// the supervisor fails the VM at its timeout, and the engine hears of it;
// the margin only guards against a lost event.
const readyMargin = 30 * time.Second

// vm carries out a VM action other than Start.
func (a *applier) vm(ctx context.Context, act *planner.Action, vm *stackfile.VM, s *Slot) error {
	switch act.Kind {
	case planner.NoOp:
		return nil
	case planner.Update:
		return a.updateVM(ctx, act, vm)
	case planner.Delete, planner.Replace:
		a.emit(act.Address, PhaseDelete, "stopping")
		if err := a.sup.StopVM(ctx, act.Address, a.stopTimeout); err != nil {
			return fmt.Errorf("%s: %w", act.Address, err)
		}
		if err := a.removeVMFiles(act.Name, act.Kind == planner.Delete); err != nil {
			return fmt.Errorf("%s: %w", act.Address, err)
		}
		if act.Kind == planner.Delete {
			a.emit(act.Address, PhaseDelete, "deleted")
			return a.record(act, nil)
		}
	}
	return a.createVM(ctx, act, vm, s)
}

// updateVM applies the attributes that change in place.
func (a *applier) updateVM(ctx context.Context, act *planner.Action, vm *stackfile.VM) error {
	ready := readySpec(vm, "")
	if vm.Mode() == stackfile.ModeCloudInit {
		// The seed is not rebuilt by an update: the ready line is that of
		// the seed the VM booted with (without its sidecar, any instance's
		// ready line counts).
		if id, err := cloudinit.RecordedInstanceID(filepath.Join(a.vmDir(act.Name), filenames.SeedISO)); err == nil {
			ready = readySpec(vm, id)
		}
	}
	u := api.Update{Address: act.Address, Publish: publishSpecs(vm), Restart: api.Restart(vm.Restart), Ready: ready, CPULimit: vm.CPULimit}
	if err := a.sup.UpdateVM(ctx, u); err != nil {
		return fmt.Errorf("%s: %w", act.Address, err)
	}
	a.emit(act.Address, PhaseUpdate, "updated in place")
	return a.record(act, nil)
}

// removeVMFiles removes what a VM owned on disk: its overlay, seed, scratch
// disks, supervisor record and the copies of its secret files; the console log only when the VM goes for
// good (a replaced VM keeps its history).
func (a *applier) removeVMFiles(name string, all bool) error {
	if err := os.RemoveAll(filenames.VMSecrets(a.e.opts.RuntimeRoot, a.e.opts.Namespace, name)); err != nil {
		return err
	}
	dir := a.vmDir(name)
	if all {
		return os.RemoveAll(dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	for _, ent := range entries {
		if strings.HasPrefix(ent.Name(), filenames.ConsoleLog) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, ent.Name())); err != nil {
			return err
		}
	}
	return nil
}

func (a *applier) vmDir(name string) string {
	return filenames.VMState(a.e.opts.StateRoot, a.e.opts.Namespace, name)
}

// createVM makes a new VM (create, or the second half of a replace).
func (a *applier) createVM(ctx context.Context, act *planner.Action, vm *stackfile.VM, s *Slot) error {
	early := bootsEarly(act, vm)
	if !early {
		if err := a.awaitDependencies(ctx, vm); err != nil {
			return fmt.Errorf("%s: %w", act.Address, err)
		}
	}
	spec, err := a.vmSpec(ctx, vm, early)
	if err != nil {
		a.emit(act.Address, PhaseFailed, err.Error())
		return fmt.Errorf("%s: %w", act.Address, err)
	}
	// Record the VM before its VMM exists: an interrupted apply then leaves
	// a VM without a process in state, which the next plan re-creates,
	// rather than a VMM that nobody knows about.
	if err := a.record(act, func(st *state.State) {
		v := st.VMs[act.Address]
		v.Status, v.Process, v.ExitCode, v.Reason = state.StatusCreating, nil, nil, ""
	}); err != nil {
		return err
	}
	start := func(instance string) (api.Started, error) {
		spec.Instance = instance
		return a.sup.StartVM(ctx, *spec)
	}
	var held func() error
	if early {
		// The VM boots; its workload starts once what it depends on is
		// ready: those in this plan, then those it leaves alone.
		held = func() error {
			err := s.WaitLater()
			if err == nil {
				err = a.awaitDependencies(ctx, vm)
			}
			if err == nil {
				err = a.sup.ReleaseVM(ctx, act.Address)
			}
			if err != nil {
				a.sup.StopVM(context.WithoutCancel(ctx), act.Address, 5*time.Second)
				a.recordVM(act.Address, func(v *state.VM) { v.Status, v.Reason, v.Process = state.StatusFailed, err.Error(), nil })
				a.emit(act.Address, PhaseFailed, err.Error())
			}
			return err
		}
	}
	return a.launch(ctx, act.Address, vm.Name, vm.Ready.Timeout+readyMargin, s, start, held)
}

// startVM carries out a Start action: a VM stopped on request boots again
// with its disks. Its in-place changes are applied first, and what it
// depends on and this plan leaves alone must be ready, as for a new VM.
func (a *applier) startVM(ctx context.Context, act *planner.Action, vm *stackfile.VM, s *Slot) error {
	if err := a.awaitDependencies(ctx, vm); err != nil {
		return fmt.Errorf("%s: %w", act.Address, err)
	}
	if len(act.Changes) > 0 {
		update := *act
		update.Kind = planner.Update
		if err := a.updateVM(ctx, &update, vm); err != nil {
			return err
		}
	} else if err := a.record(act, nil); err != nil {
		return err
	}
	return a.boot(ctx, act.Address, vm.Name, vm.Ready.Timeout+readyMargin, s)
}

// boot asks the supervisor to boot a VM that does not run again (boot-vm)
// and waits until it is ready.
func (a *applier) boot(ctx context.Context, address, name string, timeout time.Duration, s *Slot) error {
	return a.launch(ctx, address, name, timeout, s, func(instance string) (api.Started, error) {
		return a.sup.BootVM(ctx, address, instance)
	}, nil)
}

// awaitDependencies waits until the VMs that vm depends on and that this
// plan leaves alone are ready: the plan's edges cover those it creates, but
// an unchanged VM can still be booting (an earlier, interrupted up).
func (a *applier) awaitDependencies(ctx context.Context, vm *stackfile.VM) error {
	want := map[string]bool{}
	for _, other := range a.desired.VMs {
		for _, blk := range vm.DependsOn {
			if "vm."+other.Block == blk {
				if act := a.plan.Action(other.Address); act != nil && act.Kind == planner.NoOp {
					want[other.Address] = true
				}
			}
		}
	}
	if len(want) == 0 {
		return nil
	}
	a.emit(vm.Address, PhaseWaiting, "waiting for its dependencies to be ready")
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		vms, err := a.sup.Status(ctx)
		if err != nil {
			return err
		}
		pending := 0
		for _, v := range vms {
			if !want[v.Address] {
				continue
			}
			switch v.State {
			case api.StateReady:
			case api.StateFailed, api.StateStopped:
				return fmt.Errorf("its dependency %s is %s: %s", v.Address, v.State, v.Reason)
			default:
				pending++
			}
		}
		if pending == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}
