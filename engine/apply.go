package engine

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/stackvm/stack/image"
	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor/api"
)

// applier carries out one plan (or one start): it owns the state being
// recorded and the subscription to the supervisor's events.
type applier struct {
	e        *Engine
	sup      Supervisor
	plan     *planner.Plan // nil for Start
	desired  *stackfile.Stack
	progress func(Event)
	// noWait returns once a VM's VMM runs, without waiting for readiness.
	noWait      bool
	stopTimeout time.Duration

	mu sync.Mutex // guards st and its writes
	st *state.State
	w  *waiters
	// unwatch ends the subscription to the supervisor's events (end).
	unwatch context.CancelFunc
	// accelOnce: the fallback from KVM to TCG is said once per apply.
	accelOnce sync.Once
	img       struct {
		once              sync.Once
		kernel, initramfs string
		err               error
	}
	// images are the pulled images of the desired stack, by reference.
	images map[string]*image.Image
	vms    map[string]*stackfile.VM
	nets   map[string]*stackfile.Network
	vols   map[string]*stackfile.Volume
}

// newApplier prepares to record into st; begin connects it to the
// supervisor.
func (e *Engine) newApplier(st *state.State, desired *stackfile.Stack, progress func(Event)) *applier {
	a := &applier{e: e, st: st, desired: desired, progress: progress, stopTimeout: 30 * time.Second,
		vms: map[string]*stackfile.VM{}, nets: map[string]*stackfile.Network{}, vols: map[string]*stackfile.Volume{}}
	if desired != nil {
		for _, vm := range desired.VMs {
			a.vms[vm.Address] = vm
		}
		for _, n := range desired.Networks {
			a.nets[n.Name] = n
		}
		for _, v := range desired.Volumes {
			a.vols[v.Name] = v
		}
	}
	return a
}

// begin subscribes to the supervisor's events before anything is started,
// so that none is missed.
func (a *applier) begin(ctx context.Context, sup Supervisor) error {
	wctx, cancel := context.WithCancel(ctx)
	events, err := sup.Watch(wctx)
	if err != nil {
		cancel()
		return err
	}
	a.sup, a.w, a.unwatch = sup, newWaiters(events, a.forward), cancel
	return nil
}

// end stops the subscription and returns once no event is forwarded any
// more: the operation's progress ends with it.
func (a *applier) end() {
	if a.unwatch != nil {
		a.unwatch()
		<-a.w.done
	}
}

// apply carries out plan. Actions run as soon as what they depend on is
// done; state is written after every step, so an interrupted apply leaves a
// state the next plan continues from. Every failure is reported
// (errors.Join); one failed VM stops only what depends on it.
func (a *applier) apply(ctx context.Context, plan *planner.Plan) error {
	a.plan = plan
	nodes := plan.Graph()
	tasks := make(map[*planner.Node]*task, len(nodes))
	list := make([]*task, 0, len(nodes))
	for _, n := range nodes {
		t := &task{name: n.Name()}
		tasks[n] = t
		list = append(list, t)
	}
	for _, n := range nodes {
		t := tasks[n]
		act := n.Action
		early := act != nil && bootsEarly(act, a.vms[act.Address])
		for _, d := range n.Deps {
			// A VM that boots early waits here only for its networks and
			// volumes; it awaits the VMs it depends on once its VMM runs.
			if early && d.Barrier != nil && d.Barrier.Kind == planner.BarrierReadyKind {
				t.later = append(t.later, tasks[d])
			} else {
				t.deps = append(t.deps, tasks[d])
			}
		}
		if act != nil {
			t.run = func(ctx context.Context, s *Slot) error { return a.action(ctx, act, s) }
		}
	}
	return runGraph(ctx, list, a.e.opts.Concurrency, func(t *task, err *BlockedError) {
		a.emit(t.name, PhaseFailed, "not applied: "+err.By+" failed")
	})
}

// action carries out one planned action.
func (a *applier) action(ctx context.Context, act *planner.Action, s *Slot) error {
	switch act.Type {
	case planner.TypeNetwork:
		return a.network(ctx, act, a.nets[act.Name])
	case planner.TypeVolume:
		return a.volume(ctx, act, a.vols[act.Name])
	case planner.TypeVM:
		if act.Kind == planner.Start {
			return a.startVM(ctx, act, a.vms[act.Address], s)
		}
		return a.vm(ctx, act, a.vms[act.Address], s)
	}
	panic("engine: action of unknown type " + act.Type) // the planner makes only these
}

// bootsEarly reports whether a VM action starts its VMM before the VMs it
// depends on are ready: initramfs-mode VMs with depends_on boot at once with
// their workload held, and the engine releases it once the dependencies are
// ready. (A cloud-init guest cannot hold its workload; it waits.)
func bootsEarly(act *planner.Action, vm *stackfile.VM) bool {
	return startsVMM(act) && vm != nil && len(vm.DependsOn) > 0 && vm.Mode() == stackfile.ModeInitramfs
}

// startsVMM reports whether act makes a new VM, and so boots a new VMM.
func startsVMM(act *planner.Action) bool {
	return act.Type == planner.TypeVM && (act.Kind == planner.Create || act.Kind == planner.Replace)
}

// forward passes a supervisor event on to the progress sink.
func (a *applier) forward(ev api.Event) {
	if a.progress != nil {
		a.progress(Event{Time: ev.Time, Address: ev.Address, Instance: ev.Instance, Phase: Phase(ev.Phase), Message: ev.Message})
	}
}

func (a *applier) emit(address string, phase Phase, msg string) {
	if a.progress != nil {
		a.progress(Event{Time: time.Now(), Address: address, Phase: phase, Message: msg})
	}
}

// record applies an action's outcome to the state being recorded (act may
// be nil), lets mutate add what only the engine knows, and writes the state
// file.
func (a *applier) record(act *planner.Action, mutate func(*state.State)) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if act != nil {
		a.plan.Record(a.st, act)
	}
	if mutate != nil {
		mutate(a.st)
	}
	return a.e.store.Write(a.st)
}

// recordVM changes one recorded VM (if it is still recorded) and writes
// the state file.
func (a *applier) recordVM(address string, mutate func(*state.VM)) error {
	return a.record(nil, func(st *state.State) {
		if v := st.VMs[address]; v != nil {
			mutate(v)
		}
	})
}

// noteAccel tells the user, once, that a VM runs under TCG although the
// host has a KVM device, and why.
func (a *applier) noteAccel(s api.Started) {
	if s.AccelFallback == "" {
		return
	}
	a.accelOnce.Do(func() {
		a.emit("", PhaseWarning, fmt.Sprintf("KVM is present but cannot run guests here (%s); using TCG (software emulation, slower). Set accel = \"kvm\" to insist or \"tcg\" to skip the check.", s.AccelFallback))
	})
}

// image returns the built-in guest image, resolving it at most once.
func (a *applier) image(ctx context.Context) (string, string, error) {
	a.img.once.Do(func() {
		if a.e.opts.Images == nil {
			a.img.err = fmt.Errorf("no built-in guest image is configured")
			return
		}
		a.img.kernel, a.img.initramfs, a.img.err = a.e.opts.Images(ctx)
	})
	return a.img.kernel, a.img.initramfs, a.img.err
}

// prefetch starts resolving the built-in guest image (a cache check of
// about 10 ms, or a build) in the background when the plan boots a VM that
// uses it, so that the work overlaps with starting the supervisor and the
// networks instead of delaying the first VMM. It reports whether it did.
func (a *applier) prefetch(ctx context.Context, plan *planner.Plan) bool {
	for _, act := range plan.Actions {
		vm := a.vms[act.Address]
		if startsVMM(act) && vm != nil && vm.Mode() == stackfile.ModeInitramfs && (vm.Kernel == "" || vm.Initramfs == "") {
			go a.image(ctx)
			return true
		}
	}
	return false
}
