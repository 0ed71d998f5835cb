// Package planner turns the desired stack, the recorded state and the
// observed liveness of VMs into a Plan: typed actions, each with its cause,
// its attribute changes and the actions it must wait for. It is a pure
// function: it does no I/O and the same inputs always give the same plan.
//
// What forces a replacement is decided here (see attrs.go and
// docs/stackfile.md); how an action is carried out is the engine's business.
package planner

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"sort"

	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
)

// Kind is what an action does, as named in `plan --json`.
type Kind string

const (
	Create  Kind = "create"
	Update  Kind = "update"
	Replace Kind = "replace"
	Delete  Kind = "delete"
	NoOp    Kind = "no-op"
	// Start boots a VM that was stopped on request (`stack stop`) again,
	// with its disks; in-place changes are applied before it boots.
	Start Kind = "start"
)

// Reason is why an action is planned.
type Reason string

const (
	ReasonNew       Reason = "new"       // in the files, not in state
	ReasonChanged   Reason = "changed"   // attributes differ from state
	ReasonDrift     Reason = "drift"     // recorded VM whose process is gone
	ReasonOrphan    Reason = "orphan"    // in state, no longer in the files
	ReasonUnchanged Reason = "unchanged" // nothing to do
	ReasonStopped   Reason = "stopped"   // recorded VM stopped on request (stack stop)
)

// Resource types, the first element of an address.
const (
	TypeNetwork = "network"
	TypeVolume  = "volume"
	TypeVM      = "vm"
)

// Change is one attribute that differs. Old or New is nil when the attribute
// is absent on that side.
type Change struct {
	Attribute         string          `json:"attribute"`
	Old               json.RawMessage `json:"old"`
	New               json.RawMessage `json:"new"`
	ForcesReplacement bool            `json:"forces_replacement"`
	// Sensitive: Old or New is SensitiveValue, standing for a value
	// derived from a sensitive variable (see sensitive.go).
	Sensitive bool `json:"sensitive,omitempty"`
}

// Action is one planned step.
type Action struct {
	Address string `json:"address"`
	Type    string `json:"-"`
	// Name is the resource's name: the instance name (hostname) for VMs.
	Name    string   `json:"-"`
	Kind    Kind     `json:"action"`
	Reason  Reason   `json:"reason"`
	Detail  string   `json:"detail,omitempty"` // e.g. why a VM drifted
	Changes []Change `json:"changes"`
	// After holds the attributes the resource will have once the action is
	// applied (nil for deletions). The engine records them in state.
	After state.Attributes `json:"-"`
	// Sensitive names the attributes of After that hold values derived
	// from sensitive variables: shown masked, recorded sealed.
	Sensitive []string `json:"-"`
	// DependsOn lists the addresses of actions in this plan, or barriers
	// (Plan.Barriers), that must be done first. No-ops are never waited for.
	DependsOn []string `json:"depends_on,omitempty"`
}

// Plan is the full set of actions for one namespace.
type Plan struct {
	Namespace string
	// Actions are sorted by address (see CompareAddress).
	Actions []*Action
	// NICs are the resolved attachments of every desired VM, by address.
	NICs map[string][]state.NIC
	// Barriers maps a barrier key found in DependsOn to its member actions
	// (see IsBarrier).
	Barriers map[string][]string
	// LeftOut lists, in address order, the actions that would change
	// something but were left out because Input.Targets did not need them.
	LeftOut []string
	// StateSerial and StateLineage identify the state the plan was made
	// against; a saved plan is stale once either has moved.
	StateSerial  uint64
	StateLineage string
}

// Liveness is what the engine observed of a recorded VM's process.
type Liveness struct {
	Alive bool
	// Detail says why it is not alive ("exited with status 3",
	// "killed by signal 9", "process gone").
	Detail string
	// Stopped: it is not alive because it was stopped on request (`stack
	// stop`); its disks are intact, so it is started again rather than
	// re-created.
	Stopped bool
}

// Input is everything the planner looks at.
type Input struct {
	Desired *stackfile.Stack
	State   *state.State
	// Observed maps a recorded VM address to its liveness. A recorded VM
	// missing from the map is taken as alive (nothing was observed).
	Observed map[string]Liveness
	// DeleteVolumes plans orphaned volumes for deletion (`down --volumes`).
	DeleteVolumes bool
	// Destroy plans every recorded resource for deletion (`down`).
	Destroy bool
	// Targets narrows the plan to the VMs named (instance names, block
	// labels or addresses) and, but for Destroy, what they need; see
	// builder.target.
	Targets []string
	// Force lets Destroy with Targets delete VMs that running VMs depend
	// on.
	Force bool
}

// Counts tallies actions by kind.
type Counts struct{ Create, Start, Update, Replace, Delete int }

// Counts returns how many actions of each kind the plan has.
func (p *Plan) Counts() Counts {
	var c Counts
	for _, a := range p.Actions {
		switch a.Kind {
		case Create:
			c.Create++
		case Start:
			c.Start++
		case Update:
			c.Update++
		case Replace:
			c.Replace++
		case Delete:
			c.Delete++
		}
	}
	return c
}

// HasChanges reports whether applying the plan would change anything.
func (p *Plan) HasChanges() bool {
	c := p.Counts()
	return c.Create+c.Start+c.Update+c.Replace+c.Delete > 0
}

// Action returns the action for address, or nil.
func (p *Plan) Action(address string) *Action {
	for _, a := range p.Actions {
		if a.Address == address {
			return a
		}
	}
	return nil
}

// Make computes the plan. Its errors are about inputs that cannot be planned
// at all (a subnet with no free address, a volume that would shrink).
func Make(in Input) (*Plan, error) {
	desired := in.Desired
	if in.Destroy || desired == nil {
		desired = &stackfile.Stack{Namespace: in.State.Namespace}
	}
	st := in.State
	if st == nil {
		st = state.New(desired.Namespace)
	}
	p := &Plan{
		Namespace:    desired.Namespace,
		NICs:         map[string][]state.NIC{},
		StateSerial:  st.Serial,
		StateLineage: st.Lineage,
	}
	b := &builder{in: in, desired: desired, st: st, plan: p, byAddr: map[string]*Action{}}
	if err := b.networks(); err != nil {
		return nil, err
	}
	if err := b.volumes(); err != nil {
		return nil, err
	}
	if err := b.vms(); err != nil {
		return nil, err
	}
	b.orphans()
	b.edges()
	sort.Slice(p.Actions, func(i, j int) bool {
		return CompareAddress(p.Actions[i].Address, p.Actions[j].Address) < 0
	})
	if err := b.target(); err != nil {
		return nil, err
	}
	return p, nil
}

type builder struct {
	in      Input
	desired *stackfile.Stack
	st      *state.State
	plan    *Plan
	byAddr  map[string]*Action
}

func (b *builder) add(a *Action) {
	if a.Changes == nil {
		a.Changes = []Change{}
	}
	b.plan.Actions = append(b.plan.Actions, a)
	b.byAddr[a.Address] = a
}

// diff compares recorded and desired attributes and decides the action
// kind; the attributes named in sensitive are masked in its changes.
func diff(address, typ string, old, want state.Attributes, forces func(string) bool, sensitive []string) *Action {
	a := &Action{Address: address, Type: typ, After: want, Sensitive: sensitive}
	if old == nil {
		a.Kind, a.Reason = Create, ReasonNew
		return a
	}
	names := make([]string, 0, len(want)+len(old))
	for k := range want {
		names = append(names, k)
	}
	for k := range old {
		if _, ok := want[k]; !ok {
			names = append(names, k)
		}
	}
	sort.Strings(names)
	replace := false
	for _, n := range names {
		o, w := old[n], want[n]
		if sameValue(o, w) {
			continue
		}
		f := forces(n)
		replace = replace || f
		c := Change{Attribute: n, Old: o, New: w, ForcesReplacement: f}
		maskChange(&c, slices.Contains(sensitive, n))
		a.Changes = append(a.Changes, c)
	}
	switch {
	case len(a.Changes) == 0:
		a.Kind, a.Reason = NoOp, ReasonUnchanged
	case replace:
		a.Kind, a.Reason = Replace, ReasonChanged
	default:
		a.Kind, a.Reason = Update, ReasonChanged
	}
	return a
}

func (b *builder) networks() error {
	for _, n := range b.desired.Networks {
		var old state.Attributes
		if rec := b.st.Networks[n.Name]; rec != nil {
			old = rec.Attributes
		}
		a := diff(n.Address(), TypeNetwork, old, networkAttributes(n), networkForces, nil)
		a.Name = n.Name
		b.add(a)
	}
	return nil
}

func (b *builder) volumes() error {
	for _, v := range b.desired.Volumes {
		var old state.Attributes
		if rec := b.st.Volumes[v.Name]; rec != nil {
			old = rec.Attributes
		}
		a := diff(v.Address(), TypeVolume, old, volumeAttributes(v), volumeForces, nil)
		a.Name = v.Name
		for _, c := range a.Changes {
			if c.Attribute != "size_bytes" {
				continue
			}
			var was, now int64
			if json.Unmarshal(c.Old, &was) == nil && json.Unmarshal(c.New, &now) == nil && now < was {
				return fmt.Errorf("plan %s: size cannot shrink from %d to %d bytes (data would be lost); remove the volume with `stack down --volumes` to recreate it", a.Address, was, now)
			}
		}
		b.add(a)
	}
	return nil
}

func (b *builder) vms() error {
	nics, err := assignNICs(b.desired, b.st)
	if err != nil {
		return err
	}
	b.plan.NICs = nics
	nets := map[string]*stackfile.Network{}
	for _, n := range b.desired.Networks {
		nets[n.Name] = n
	}
	for _, vm := range b.desired.VMs {
		rec := b.st.VMs[vm.Address]
		var old state.Attributes
		if rec != nil {
			old = rec.Attributes
		}
		a := diff(vm.Address, TypeVM, old, vmAttributes(vm, b.desired.Namespace, nics[vm.Address], nets), vmForces, vm.Sensitive)
		a.Name = vm.Name
		if rec != nil && a.Kind != Replace {
			live, ok := b.in.Observed[vm.Address]
			switch {
			case ok && !live.Alive && live.Stopped:
				// Its in-place changes, if any, stay with it.
				a.Kind, a.Reason, a.Detail = Start, ReasonStopped, live.Detail
			case ok && !live.Alive:
				a.Kind, a.Reason, a.Detail = Replace, ReasonDrift, live.Detail
				if a.Detail == "" {
					a.Detail = "its process is gone"
				}
			}
		}
		b.add(a)
	}
	return nil
}

// orphans plans the deletion of what state has and the files no longer do.
func (b *builder) orphans() {
	for _, addr := range b.st.VMAddresses() {
		if _, ok := b.byAddr[addr]; !ok {
			b.add(&Action{Address: addr, Type: TypeVM, Name: b.st.VMs[addr].Name, Kind: Delete, Reason: ReasonOrphan})
		}
	}
	for _, name := range sortedKeys(b.st.Networks) {
		addr := TypeNetwork + "." + name
		if _, ok := b.byAddr[addr]; !ok {
			b.add(&Action{Address: addr, Type: TypeNetwork, Name: name, Kind: Delete, Reason: ReasonOrphan})
		}
	}
	for _, name := range sortedKeys(b.st.Volumes) {
		addr := TypeVolume + "." + name
		if _, ok := b.byAddr[addr]; !ok && (b.in.DeleteVolumes) {
			b.add(&Action{Address: addr, Type: TypeVolume, Name: name, Kind: Delete, Reason: ReasonOrphan})
		}
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// prefixLen returns the prefix length of a network's subnet, for the NIC
// attribute a VM's guest configuration depends on.
func prefixLen(p netip.Prefix) int { return p.Bits() }
