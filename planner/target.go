package planner

import (
	"fmt"
	"sort"
	"strings"

	"github.com/stackvm/stack/stackfile"
)

// target narrows the plan to the VMs that Input.Targets names, as
// `stack up web`, `stack plan web` and `stack down web` do:
//   - up and plan keep the named VMs and, transitively, what they need: the
//     instances of the blocks in their depends_on and the networks and
//     volumes they use;
//   - down (Destroy) keeps the deletions of the named VMs only: networks and
//     volumes stay for the VMs that remain. A VM that runs and depends on a
//     named one refuses the plan, unless Input.Force.
//
// Every action left out that would have changed something is listed in
// Plan.LeftOut. A name is an instance name (web-0), a block label (web: all
// its instances) or an address (vm.web[0]).
func (b *builder) target() error {
	if len(b.in.Targets) == 0 {
		return nil
	}
	var keep map[string]bool
	var err error
	if b.in.Destroy {
		keep, err = b.destroyTargets()
	} else {
		keep, err = b.upTargets()
	}
	if err != nil {
		return err
	}
	b.plan.keepOnly(keep)
	return nil
}

// upTargets is the closure of the named desired VMs under what they need.
func (b *builder) upTargets() (map[string]bool, error) {
	type vmRef struct{ addr, name, block string }
	refs := make([]vmRef, len(b.desired.VMs))
	byAddr := map[string]*stackfile.VM{}
	for i, vm := range b.desired.VMs {
		refs[i] = vmRef{vm.Address, vm.Name, blockOf(vm.Address)}
		byAddr[vm.Address] = vm
	}
	var queue []string
	for _, n := range b.in.Targets {
		found := false
		for _, r := range refs {
			if matches(n, r.addr, r.name, r.block) {
				queue, found = append(queue, r.addr), true
			}
		}
		if !found {
			names := make([]string, len(refs))
			for i, r := range refs {
				names[i] = r.name
			}
			return nil, unknownVM(n, "the stack files", names)
		}
	}
	keep := map[string]bool{}
	for len(queue) > 0 {
		addr := queue[0]
		queue = queue[1:]
		if keep[addr] {
			continue
		}
		keep[addr] = true
		vm := byAddr[addr]
		for _, nic := range vm.NICs {
			keep[TypeNetwork+"."+nic.Network] = true
		}
		for _, d := range vm.Disks {
			if d.Volume != "" {
				keep[TypeVolume+"."+d.Volume] = true
			}
		}
		for _, blk := range vm.DependsOn {
			for _, r := range refs {
				if r.block == blk {
					queue = append(queue, r.addr)
				}
			}
		}
	}
	return keep, nil
}

// destroyTargets is the set of named recorded VMs; it refuses when a VM
// that is left running depends on one of them, unless Force.
func (b *builder) destroyTargets() (map[string]bool, error) {
	addrs := b.st.VMAddresses()
	sort.Slice(addrs, func(i, j int) bool { return CompareAddress(addrs[i], addrs[j]) < 0 })
	keep := map[string]bool{}
	for _, n := range b.in.Targets {
		found := false
		for _, addr := range addrs {
			if matches(n, addr, b.st.VMs[addr].Name, blockOf(addr)) {
				keep[addr], found = true, true
			}
		}
		if !found {
			names := make([]string, len(addrs))
			for i, a := range addrs {
				names[i] = b.st.VMs[a].Name
			}
			return nil, unknownVM(n, "namespace "+fmt.Sprintf("%q", b.st.Namespace), names)
		}
	}
	if b.in.Force {
		return keep, nil
	}
	named := map[string]bool{}
	for addr := range keep {
		named[blockOf(addr)] = true
	}
	var blocking []string
	for _, addr := range addrs {
		if keep[addr] {
			continue
		}
		if live, ok := b.in.Observed[addr]; ok && !live.Alive {
			continue
		}
		for _, blk := range RecordedDependsOn(b.st.VMs[addr].Attributes) {
			if named[blk] {
				blocking = append(blocking, fmt.Sprintf("%s (depends on %s)", b.st.VMs[addr].Name, blk))
				break
			}
		}
	}
	if len(blocking) > 0 {
		return nil, fmt.Errorf("%w: %s; name them too, stop them first, or use --force", ErrDependents, strings.Join(blocking, ", "))
	}
	return keep, nil
}

// ErrDependents refuses to take down a VM that running VMs depend on.
var ErrDependents = fmt.Errorf("running VMs depend on the VMs named")

// matches reports whether the name n designates the VM at addr, named name,
// of block blk ("vm.web").
func matches(n, addr, name, blk string) bool {
	return n == name || n == addr || "vm."+n == blk || n == blk
}

func unknownVM(n, where string, names []string) error {
	if len(names) == 0 {
		return fmt.Errorf("no VM named %q: %s has no VMs", n, where)
	}
	return fmt.Errorf("no VM named %q in %s (it has: %s)", n, where, strings.Join(names, ", "))
}

// keepOnly drops the actions whose address keep does not hold, listing
// those that would have changed something in LeftOut, and drops the
// barrier members and dependencies that went with them.
func (p *Plan) keepOnly(keep map[string]bool) {
	kept := p.Actions[:0]
	for _, a := range p.Actions {
		switch {
		case keep[a.Address]:
			kept = append(kept, a)
		case a.Kind != NoOp:
			p.LeftOut = append(p.LeftOut, a.Address)
		}
	}
	p.Actions = kept
	for key, members := range p.Barriers {
		var in []string
		for _, m := range members {
			if keep[m] {
				in = append(in, m)
			}
		}
		if len(in) == 0 {
			delete(p.Barriers, key)
		} else {
			p.Barriers[key] = in
		}
	}
	for _, a := range p.Actions {
		var deps []string
		for _, d := range a.DependsOn {
			if _, barrier := p.Barriers[d]; keep[d] || barrier {
				deps = append(deps, d)
			}
		}
		a.DependsOn = deps
	}
	p.dropUnusedBarriers()
}
