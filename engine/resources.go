package engine

import (
	"context"
	"fmt"

	"github.com/stackvm/stack/disks"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor/api"
)

// network carries out a network action.
func (a *applier) network(ctx context.Context, act *planner.Action, n *stackfile.Network) error {
	switch act.Kind {
	case planner.NoOp:
		// Unchanged, but this plan may start VMs on it, and the supervisor
		// may have lost it while the state still records it (a `down` from
		// another state directory could tear it down before such commands
		// were refused). Ensuring a running network does nothing.
		return a.ensureNetwork(ctx, act, n)
	case planner.Delete, planner.Replace:
		if err := a.sup.RemoveNetwork(ctx, act.Name); err != nil {
			return fmt.Errorf("%s: %w", act.Address, err)
		}
		if act.Kind == planner.Delete {
			a.emit(act.Address, PhaseDelete, "deleted")
			return a.record(act, nil)
		}
	}
	if err := a.ensureNetwork(ctx, act, n); err != nil {
		return err
	}
	a.emit(act.Address, PhaseDone, string(act.Kind)+"d")
	return a.record(act, nil)
}

// ensureNetwork has the supervisor run n (n is desired: act is not a
// delete).
func (a *applier) ensureNetwork(ctx context.Context, act *planner.Action, n *stackfile.Network) error {
	spec := api.NetworkSpec{Name: n.Name, Subnet: n.Subnet, Gateway: n.Gateway, DHCP: n.DHCP, DNS: n.DNS,
		Egress: n.Egress, EgressAllow: n.EgressAllow}
	if err := a.sup.EnsureNetwork(ctx, spec); err != nil {
		return fmt.Errorf("%s: %w", act.Address, err)
	}
	return nil
}

// volume carries out a volume action.
func (a *applier) volume(ctx context.Context, act *planner.Action, v *stackfile.Volume) error {
	path := filenames.Volume(a.e.opts.StateRoot, a.e.opts.Namespace, act.Name)
	switch act.Kind {
	case planner.NoOp:
		return nil
	case planner.Delete:
		if err := disks.Remove(path); err != nil {
			return fmt.Errorf("%s: %w", act.Address, err)
		}
		a.emit(act.Address, PhaseDelete, "deleted")
		return a.record(act, nil)
	case planner.Replace:
		if err := disks.Remove(path); err != nil {
			return fmt.Errorf("%s: %w", act.Address, err)
		}
	case planner.Update:
		if _, err := disks.GrowVolume(ctx, path, v.SizeBytes, v.Format); err != nil {
			return fmt.Errorf("%s: %w", act.Address, err)
		}
		a.emit(act.Address, PhaseDone, "grown")
		return a.record(act, func(st *state.State) { st.Volumes[act.Name].Path = path })
	}
	a.emit(act.Address, PhaseDisks, "creating the volume")
	if _, err := disks.EnsureVolume(ctx, path, v.SizeBytes, v.Format); err != nil {
		return fmt.Errorf("%s: %w", act.Address, err)
	}
	a.emit(act.Address, PhaseDone, "created")
	return a.record(act, func(st *state.State) { st.Volumes[act.Name].Path = path })
}
