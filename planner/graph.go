package planner

import (
	"container/heap"
	"sort"
	"strconv"
	"strings"
)

// Barriers stand for a group of actions, so that `depends_on = [vm.db]` on a
// block with N instances, naming a block with M instances, costs N+M edges
// rather than N×M. A barrier is done when every member action is done.
// Barrier keys never collide with resource addresses: they end in
// BarrierReady (the block's instances that this plan creates, replaces or
// updates) or BarrierDeleted (those it deletes).
const (
	BarrierReady   = "/ready"
	BarrierDeleted = "/deleted"
)

// IsBarrier reports whether a DependsOn entry names a barrier.
func IsBarrier(key string) bool {
	return strings.HasSuffix(key, BarrierReady) || strings.HasSuffix(key, BarrierDeleted)
}

// edges fills every action's DependsOn with what must finish before it
// starts:
//   - a VM that is created, replaced, updated or started waits for the networks and
//     volumes it uses and for the instances of the VM blocks in its
//     depends_on that this plan touches (through the block's ready barrier);
//   - deletions run in reverse: a VM is deleted after the VMs that depended
//     on it (their block's deleted barrier), and a network or volume only
//     once the VMs that used it are gone.
//
// No-ops are never waited for: they are done before the plan starts.
func (b *builder) edges() {
	p := b.plan
	p.Barriers = map[string][]string{}
	member := func(key, addr string) {
		p.Barriers[key] = append(p.Barriers[key], addr)
	}
	for _, a := range p.Actions {
		if a.Type != TypeVM {
			continue
		}
		switch a.Kind {
		case Create, Replace, Update, Start:
			member(blockOf(a.Address)+BarrierReady, a.Address)
		case Delete:
			member(blockOf(a.Address)+BarrierDeleted, a.Address)
		}
	}
	live := func(addr string) bool {
		a := b.byAddr[addr]
		return a != nil && a.Kind != NoOp && a.Kind != Delete
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
			if addr := "volume." + d.Volume; d.Volume != "" && live(addr) {
				deps[addr] = true
			}
		}
		for _, blk := range vm.DependsOn {
			if key := blk + BarrierReady; len(p.Barriers[key]) > 0 && blk != blockOf(vm.Address) {
				deps[key] = true
			}
		}
		a.DependsOn = sortedSet(deps)
	}

	// Reverse edges for what goes away. A replaced VM's old instance goes
	// away too, so it counts as gone for the networks and volumes it used.
	gone := func(addr string) bool {
		a := b.byAddr[addr]
		return a != nil && (a.Kind == Delete || a.Kind == Replace)
	}
	users := map[string]map[string]bool{}      // network/volume address → VMs that used it
	dependents := map[string]map[string]bool{} // vm block → blocks that depended on it
	for addr, rec := range b.st.VMs {
		if !gone(addr) {
			continue
		}
		for _, n := range rec.NICs {
			addTo(users, "network."+n.Network, addr)
		}
		for _, v := range RecordedVolumes(rec.Attributes) {
			addTo(users, "volume."+v, addr)
		}
		for _, blk := range RecordedDependsOn(rec.Attributes) {
			addTo(dependents, blk, blockOf(addr))
		}
	}
	for _, a := range p.Actions {
		if a.Kind != Delete {
			continue
		}
		deps := map[string]bool{}
		for u := range users[a.Address] {
			if b.byAddr[u].Kind == Delete {
				deps[u] = true
			}
		}
		if a.Type == TypeVM {
			for blk := range dependents[blockOf(a.Address)] {
				if key := blk + BarrierDeleted; len(p.Barriers[key]) > 0 && blk != blockOf(a.Address) {
					deps[key] = true
				}
			}
		}
		a.DependsOn = sortedSet(deps)
	}
	p.dropUnusedBarriers()
}

// dropUnusedBarriers keeps only the barriers that something waits for.
func (p *Plan) dropUnusedBarriers() {
	used := map[string]bool{}
	for _, a := range p.Actions {
		for _, d := range a.DependsOn {
			used[d] = true
		}
	}
	for k := range p.Barriers {
		if !used[k] {
			delete(p.Barriers, k)
		}
	}
}

func addTo(m map[string]map[string]bool, key, v string) {
	if m[key] == nil {
		m[key] = map[string]bool{}
	}
	m[key][v] = true
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
	an, aok := index(ai)
	bn, bok := index(bi)
	switch {
	case aok && bok:
		return an - bn
	case aok:
		return -1
	case bok:
		return 1
	}
	return strings.Compare(ai, bi)
}

// index parses a count index without allocating on for_each keys.
func index(s string) (int, bool) {
	if s == "" || len(s) > 9 || s[0] == '"' {
		return 0, false
	}
	n, err := strconv.Atoi(s)
	return n, err == nil
}

func splitIndex(addr string) (block, index string) {
	i := strings.IndexByte(addr, '[')
	if i < 0 || !strings.HasSuffix(addr, "]") {
		return addr, ""
	}
	return addr[:i], addr[i+1 : len(addr)-1]
}

// Order returns the actions in an order that respects DependsOn and the
// barriers (a topological order, ties broken by address). The engine runs
// them in parallel; this order is for callers that need one sequence.
func (p *Plan) Order() []*Action {
	byAddr := make(map[string]*Action, len(p.Actions))
	indeg := map[string]int{}
	next := map[string][]string{}
	for _, a := range p.Actions {
		byAddr[a.Address] = a
		indeg[a.Address] = len(a.DependsOn)
		for _, d := range a.DependsOn {
			next[d] = append(next[d], a.Address)
		}
	}
	for key, members := range p.Barriers {
		indeg[key] = len(members)
		for _, m := range members {
			next[m] = append(next[m], key)
		}
	}
	ready := &addrHeap{}
	for k, n := range indeg {
		if n == 0 {
			heap.Push(ready, k)
		}
	}
	out := make([]*Action, 0, len(p.Actions))
	for ready.Len() > 0 {
		cur := heap.Pop(ready).(string)
		if a := byAddr[cur]; a != nil {
			out = append(out, a)
		}
		for _, n := range next[cur] {
			indeg[n]--
			if indeg[n] == 0 {
				heap.Push(ready, n)
			}
		}
	}
	return out
}

type addrHeap []string

func (h addrHeap) Len() int           { return len(h) }
func (h addrHeap) Less(i, j int) bool { return CompareAddress(h[i], h[j]) < 0 }
func (h addrHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *addrHeap) Push(x any)        { *h = append(*h, x.(string)) }
func (h *addrHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// BarrierKind says what a barrier waits for.
type BarrierKind int

const (
	// BarrierReadyKind: the instances of a VM block that the plan creates,
	// replaces, updates or starts are ready (depends_on).
	BarrierReadyKind BarrierKind = iota + 1
	// BarrierDeletedKind: the instances of a VM block that the plan
	// deletes are gone (deletions run in reverse).
	BarrierDeletedKind
)

// Node is one step of the plan's dependency graph: an action, or a barrier
// that joins a group of actions. Deps must be done before it starts.
type Node struct {
	Action  *Action  // nil for a barrier
	Barrier *Barrier // nil for an action
	Deps    []*Node
}

// Barrier is a group of actions waited for as one (see Plan.Barriers).
type Barrier struct {
	Key   string // as found in Action.DependsOn
	Block string // the VM block: vm.web
	Kind  BarrierKind
}

// Name is what the node stands for in messages: an action's address, a
// barrier's VM block.
func (n *Node) Name() string {
	if n.Action != nil {
		return n.Action.Address
	}
	return n.Barrier.Block
}

// Graph returns the plan as a graph: one node per action, in Actions
// order, then one per barrier, each with pointers to what it waits for.
// DependsOn entries that name nothing in the plan are ignored, as no-ops
// are (they are done before the plan starts).
func (p *Plan) Graph() []*Node {
	byKey := make(map[string]*Node, len(p.Actions)+len(p.Barriers))
	nodes := make([]*Node, 0, len(p.Actions)+len(p.Barriers))
	for _, a := range p.Actions {
		n := &Node{Action: a}
		byKey[a.Address] = n
		nodes = append(nodes, n)
	}
	keys := make([]string, 0, len(p.Barriers))
	for k := range p.Barriers {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		b := &Barrier{Key: k}
		switch {
		case strings.HasSuffix(k, BarrierReady):
			b.Block, b.Kind = strings.TrimSuffix(k, BarrierReady), BarrierReadyKind
		case strings.HasSuffix(k, BarrierDeleted):
			b.Block, b.Kind = strings.TrimSuffix(k, BarrierDeleted), BarrierDeletedKind
		default:
			panic("planner: barrier key without a kind: " + k) // made by edges
		}
		n := &Node{Barrier: b}
		byKey[k] = n
		nodes = append(nodes, n)
	}
	for _, n := range nodes {
		var deps []string
		if n.Action != nil {
			deps = n.Action.DependsOn
		} else {
			deps = p.Barriers[n.Barrier.Key]
		}
		for _, d := range deps {
			if dn := byKey[d]; dn != nil {
				n.Deps = append(n.Deps, dn)
			}
		}
	}
	return nodes
}
