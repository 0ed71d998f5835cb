package engine

import (
	"context"
	"fmt"

	"github.com/stackvm/stack/disks"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor"
)

func (e *Engine) applyNetwork(ctx context.Context, plan *planner.Plan, a *planner.Action, n *stackfile.Network) error {
	switch a.Kind {
	case planner.NoOp:
		// Unchanged, but this plan may start VMs on it, and the supervisor
		// may have lost it while the state still records it (a `down` from
		// another state directory could tear it down before such commands
		// were refused). Ensuring a running network does nothing.
		return e.ensureNetwork(ctx, a, n)
	case planner.Delete, planner.Replace:
		if _, err := e.Supervisor.Call(ctx, &supervisor.Request{Op: supervisor.OpRemoveNetwork, Address: a.Name}); err != nil {
			return fmt.Errorf("%s: %w", a.Address, err)
		}
		if a.Kind == planner.Delete {
			e.emit(a.Address, PhaseDelete, "deleted")
			return e.record(plan, a, nil)
		}
	}
	if err := e.ensureNetwork(ctx, a, n); err != nil {
		return err
	}
	e.emit(a.Address, PhaseDone, string(a.Kind)+"d")
	return e.record(plan, a, nil)
}

// ensureNetwork has the supervisor run n (n is desired: a is not a delete).
func (e *Engine) ensureNetwork(ctx context.Context, a *planner.Action, n *stackfile.Network) error {
	spec := supervisor.NetworkSpec{Name: n.Name, Subnet: n.Subnet, Gateway: n.Gateway, DHCP: n.DHCP, DNS: n.DNS, Egress: n.Egress}
	if _, err := e.Supervisor.Call(ctx, &supervisor.Request{Op: supervisor.OpEnsureNetwork, Network: &spec}); err != nil {
		return fmt.Errorf("%s: %w", a.Address, err)
	}
	return nil
}

func (e *Engine) applyVolume(ctx context.Context, plan *planner.Plan, a *planner.Action, v *stackfile.Volume) error {
	path := filenames.Volume(e.StateRoot, e.Namespace, a.Name)
	switch a.Kind {
	case planner.NoOp:
		return nil
	case planner.Delete:
		if err := disks.Remove(path); err != nil {
			return fmt.Errorf("%s: %w", a.Address, err)
		}
		e.emit(a.Address, PhaseDelete, "deleted")
		return e.record(plan, a, nil)
	case planner.Replace:
		if err := disks.Remove(path); err != nil {
			return fmt.Errorf("%s: %w", a.Address, err)
		}
	case planner.Update:
		if _, err := disks.GrowVolume(ctx, path, v.SizeBytes, v.Format); err != nil {
			return fmt.Errorf("%s: %w", a.Address, err)
		}
		e.emit(a.Address, PhaseDone, "grown")
		return e.record(plan, a, func(st *state.State) { st.Volumes[a.Name].Path = path })
	}
	e.emit(a.Address, PhaseDisks, "creating the volume")
	if _, err := disks.EnsureVolume(ctx, path, v.SizeBytes, v.Format); err != nil {
		return fmt.Errorf("%s: %w", a.Address, err)
	}
	e.emit(a.Address, PhaseDone, "created")
	return e.record(plan, a, func(st *state.State) { st.Volumes[a.Name].Path = path })
}
