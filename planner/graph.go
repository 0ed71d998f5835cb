package planner

import (
	"sort"
	"strconv"
	"strings"
)

// edges fills every action's DependsOn with the actions that must finish
// before it starts:
//   - a VM that is created, replaced or updated waits for the networks and
//     volumes it uses and for every instance of the VM blocks in its
//     depends_on, when those are planned too;
//   - deletions run in reverse: a VM is deleted before what it depended on,
//     and a network or volume only once the VMs that used it are gone
//     (deleted or replaced).
//
// No-ops are never waited for: they are done before the plan starts.
func (b *builder) edges() {
	live := func(addr string) bool {
		a := b.byAddr[addr]
		return a != nil && a.Kind != NoOp && a.Kind != Delete
	}
	instances := map[string][]string{} // vm block address → instance addresses
	for _, vm := range b.desired.VMs {
		blk := "vm." + vm.Block
		instances[blk] = append(instances[blk], vm.Address)
	}
	for _, vm := range b.desired.VMs {
		a := b.byAddr[vm.Address]
		if a.Kind == NoOp {
			continue
		}
		deps := map[string]bool{}
		for _, n := range vm.NICs {
			if addr := "network." + n.Network; live(addr) {
				deps[addr] = true
			}
		}
		for _, d := range vm.Disks {
			if d.Volume == "" {
				continue
			}
			if addr := "volume." + d.Volume; live(addr) {
				deps[addr] = true
			}
		}
		for _, blk := range vm.DependsOn {
			for _, inst := range instances[blk] {
				if live(inst) {
					deps[inst] = true
				}
			}
		}
		a.DependsOn = sortedSet(deps)
	}

	// Reverse edges for what goes away. A replaced VM's old instance goes
	// away too, so it counts as "gone" for the networks and volumes it used.
	gone := func(addr string) bool {
		a := b.byAddr[addr]
		return a != nil && (a.Kind == Delete || a.Kind == Replace)
	}
	users := map[string]map[string]bool{} // network/volume/vm address → VMs that used it
	use := func(res, vm string) {
		if users[res] == nil {
			users[res] = map[string]bool{}
		}
		users[res][vm] = true
	}
	recordedBlocks := map[string][]string{}
	for addr, rec := range b.st.VMs {
		recordedBlocks[blockOf(addr)] = append(recordedBlocks[blockOf(addr)], addr)
		for _, n := range rec.NICs {
			use("network."+n.Network, addr)
		}
		for _, v := range RecordedVolumes(rec.Attributes) {
			use("volume."+v, addr)
		}
	}
	for addr, rec := range b.st.VMs {
		for _, blk := range RecordedDependsOn(rec.Attributes) {
			for _, dep := range recordedBlocks[blk] {
				use(dep, addr)
			}
		}
	}
	for _, a := range b.plan.Actions {
		if a.Kind != Delete && !(a.Kind == Replace && a.Type == TypeNetwork) {
			continue
		}
		deps := map[string]bool{}
		for _, d := range a.DependsOn {
			deps[d] = true
		}
		for u := range users[a.Address] {
			if u == a.Address {
				continue
			}
			if gone(u) && b.byAddr[u].Kind == Delete {
				deps[u] = true
			}
		}
		a.DependsOn = sortedSet(deps)
	}
}

// blockOf returns the block address of a VM instance address:
// vm.web[0] → vm.web.
func blockOf(addr string) string {
	if i := strings.IndexByte(addr, '['); i >= 0 {
		return addr[:i]
	}
	return addr
}

func sortedSet(m map[string]bool) []string {
	if len(m) == 0 {
		return nil
	}
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return CompareAddress(out[i], out[j]) < 0 })
	return out
}

// CompareAddress orders addresses the way plans list them: by resource type
// and name, then count indexes numerically and for_each keys as strings
// (vm.web[2] before vm.web[10]).
func CompareAddress(a, b string) int {
	ab, ai := splitIndex(a)
	bb, bi := splitIndex(b)
	if ab != bb {
		return strings.Compare(ab, bb)
	}
	an, aerr := strconv.Atoi(ai)
	bn, berr := strconv.Atoi(bi)
	switch {
	case aerr == nil && berr == nil:
		return an - bn
	case aerr == nil:
		return -1
	case berr == nil:
		return 1
	}
	return strings.Compare(ai, bi)
}

func splitIndex(addr string) (block, index string) {
	i := strings.IndexByte(addr, '[')
	if i < 0 || !strings.HasSuffix(addr, "]") {
		return addr, ""
	}
	return addr[:i], addr[i+1 : len(addr)-1]
}

// Order returns the actions in an order that respects DependsOn (a
// topological order, ties broken by address). The engine runs them in
// parallel; this order is for callers that need one sequence.
func (p *Plan) Order() []*Action {
	indeg := map[string]int{}
	next := map[string][]string{}
	for _, a := range p.Actions {
		indeg[a.Address] += 0
		for _, d := range a.DependsOn {
			indeg[a.Address]++
			next[d] = append(next[d], a.Address)
		}
	}
	var ready []string
	for _, a := range p.Actions {
		if indeg[a.Address] == 0 {
			ready = append(ready, a.Address)
		}
	}
	byAddr := make(map[string]*Action, len(p.Actions))
	for _, a := range p.Actions {
		byAddr[a.Address] = a
	}
	var out []*Action
	for len(ready) > 0 {
		sort.Slice(ready, func(i, j int) bool { return CompareAddress(ready[i], ready[j]) < 0 })
		cur := ready[0]
		ready = ready[1:]
		out = append(out, byAddr[cur])
		for _, n := range next[cur] {
			indeg[n]--
			if indeg[n] == 0 {
				ready = append(ready, n)
			}
		}
	}
	return out
}
