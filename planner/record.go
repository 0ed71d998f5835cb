package planner

import "github.com/stackvm/stack/state"

// Record writes the outcome of a successfully applied action into st: the
// attributes it applied and, for VMs, the assigned NICs. The engine calls it
// after each step (and adds what only it knows: process identity, status);
// it keeps a VM's runtime fields when the VM was only updated.
func (p *Plan) Record(st *state.State, a *Action) {
	name := a.Name
	switch a.Type {
	case TypeVM:
		if a.Kind == Delete {
			delete(st.VMs, a.Address)
			return
		}
		vm := st.VMs[a.Address]
		var prev state.Attributes
		if vm != nil {
			prev = vm.Attributes
		}
		if vm == nil || a.Kind == Replace || a.Kind == Create {
			vm = &state.VM{Address: a.Address, Status: state.StatusCreating}
			st.VMs[a.Address] = vm
		}
		vm.Name = a.Name
		vm.Attributes = sealedAfter(a, prev)
		vm.NICs = p.NICs[a.Address]
	case TypeNetwork:
		if a.Kind == Delete {
			delete(st.Networks, name)
			return
		}
		st.Networks[name] = &state.Network{Name: name, Attributes: a.After}
	case TypeVolume:
		if a.Kind == Delete {
			delete(st.Volumes, name)
			return
		}
		old := st.Volumes[name]
		v := &state.Volume{Name: name, Attributes: a.After}
		if old != nil && a.Kind != Replace {
			v.Path = old.Path
		}
		st.Volumes[name] = v
	}
}
