package engine

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/console"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor"
)

// Event is one step of the apply, as `up --progress` shows it.
type Event = supervisor.Event

// Phases the engine reports itself (the supervisor reports the VMM's).
const (
	PhaseDisks   = "disks"
	PhaseSeed    = "seed"
	PhaseWaiting = "waiting"
	PhaseDone    = "done"
	PhaseDelete  = "delete"
	PhaseUpdate  = "update"
	// PhaseWarning is a note about the whole apply (Address ""), such as
	// KVM falling back to TCG.
	PhaseWarning = "warning"
)

// Images resolves the built-in guest image (kernel, initramfs) for VMs that
// do not name their own. It is called at most once per apply.
type Images func(ctx context.Context) (kernel, initramfs string, err error)

// Engine applies plans to one namespace. The caller holds the state lock.
type Engine struct {
	Namespace   string
	StateRoot   string
	RuntimeRoot string
	Store       *state.Store
	Supervisor  *supervisor.Client
	Images      Images
	// Progress receives every event; it must not block for long.
	Progress func(Event)
	// Concurrency bounds the actions worked on at once (default 8).
	Concurrency int
	// NoWait returns once a VM's VMM runs, without waiting for readiness.
	NoWait bool
	// StopTimeout bounds graceful VM stops (default 30s).
	StopTimeout time.Duration
	Logger      *slog.Logger

	mu sync.Mutex // guards st and its writes
	st *state.State
	// accelOnce: the fallback from KVM to TCG is said once per apply.
	accelOnce sync.Once
	img       struct {
		once              sync.Once
		kernel, initramfs string
		err               error
	}
}

// VMError is a VM that failed to start or to become ready, with the end of
// its console for the user.
type VMError struct {
	Address     string
	Reason      string
	ConsoleTail []string
	ConsoleLog  string
}

func (e *VMError) Error() string { return fmt.Sprintf("%s: %s", e.Address, e.Reason) }

// Apply carries out plan, whose desired side is desired, starting from st.
// Actions run as soon as the actions they depend on are done; state is
// written after every step, so an interrupted apply leaves a state the next
// plan continues from. Every failure is reported (errors.Join); one failed
// VM stops only what depends on it.
func (e *Engine) Apply(ctx context.Context, plan *planner.Plan, desired *stackfile.Stack, st *state.State) error {
	w, err := e.begin(ctx, st)
	if err != nil {
		return err
	}
	defer w.close()

	vms := map[string]*stackfile.VM{}
	for _, vm := range desired.VMs {
		vms[vm.Address] = vm
	}
	nets := map[string]*stackfile.Network{}
	for _, n := range desired.Networks {
		nets[n.Name] = n
	}
	vols := map[string]*stackfile.Volume{}
	for _, v := range desired.Volumes {
		vols[v.Name] = v
	}

	done := map[string]chan struct{}{}
	failed := map[string]bool{}
	for _, a := range plan.Actions {
		done[a.Address] = make(chan struct{})
	}
	sem := make(chan struct{}, e.Concurrency)
	var (
		wg   sync.WaitGroup
		emu  sync.Mutex
		errs []error
	)
	// A barrier is done when all its members are, and failed when any is.
	for key := range plan.Barriers {
		done[key] = make(chan struct{})
	}
	for key, members := range plan.Barriers {
		go func() {
			defer close(done[key])
			for _, m := range members {
				<-done[m]
			}
			emu.Lock()
			for _, m := range members {
				failed[key] = failed[key] || failed[m]
			}
			emu.Unlock()
		}()
	}
	// Every action gets its own goroutine that first waits for its
	// dependencies and only then takes a slot: a goroutine blocked on a
	// dependency never holds a slot, so the limit cannot deadlock.
	for _, a := range plan.Actions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(done[a.Address])
			// A VM that boots early waits here only for its networks and
			// volumes; its VM dependencies are awaited once its VMM runs
			// (see createVM), so that dependents boot in parallel.
			early := bootsEarly(a, vms[a.Address])
			now, later := splitDeps(a.DependsOn, early)
			wait := func(deps []string) string {
				for _, d := range deps {
					select {
					case <-done[d]:
					case <-ctx.Done():
					}
				}
				emu.Lock()
				defer emu.Unlock()
				for _, d := range deps {
					if failed[d] {
						return strings.TrimSuffix(strings.TrimSuffix(d, planner.BarrierReady), planner.BarrierDeleted)
					}
				}
				return ""
			}
			blocked := wait(now)
			fail := func(err error) {
				emu.Lock()
				failed[a.Address] = true
				errs = append(errs, err)
				emu.Unlock()
			}
			if blocked != "" {
				e.emit(a.Address, supervisor.PhaseFailed, "not applied: "+blocked+" failed")
				fail(fmt.Errorf("%s: not applied because %s failed", a.Address, blocked))
				return
			}
			waitLater := func() error {
				if b := wait(later); b != "" {
					return fmt.Errorf("%s: its dependency %s failed", a.Address, b)
				}
				return ctx.Err()
			}
			if ctx.Err() != nil {
				fail(fmt.Errorf("%s: %w", a.Address, ctx.Err()))
				return
			}
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				fail(fmt.Errorf("%s: %w", a.Address, ctx.Err()))
				return
			}
			var once sync.Once
			release := func() { once.Do(func() { <-sem }) }
			var err error
			switch a.Type {
			case planner.TypeNetwork:
				err = e.applyNetwork(ctx, plan, a, nets[a.Name])
			case planner.TypeVolume:
				err = e.applyVolume(ctx, plan, a, vols[a.Name])
			case planner.TypeVM:
				if a.Kind == planner.Start {
					err = e.startVM(ctx, plan, a, vms[a.Address], desired, w, release)
					break
				}
				err = e.applyVM(ctx, plan, a, vms[a.Address], desired, w, release, waitLater)
			}
			release()
			if err != nil {
				fail(err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// begin fills in the defaults, takes st as the state to record into, and
// subscribes to the supervisor's events (before anything is started, so
// that none is missed).
func (e *Engine) begin(ctx context.Context, st *state.State) (*waiters, error) {
	if e.Concurrency <= 0 {
		e.Concurrency = 8
	}
	if e.StopTimeout <= 0 {
		e.StopTimeout = 30 * time.Second
	}
	if e.Logger == nil {
		e.Logger = slog.Default()
	}
	e.st = st
	events, err := e.Supervisor.Watch(ctx)
	if err != nil {
		return nil, err
	}
	return newWaiters(events, e.emit), nil
}

// bootsEarly reports whether a VM action starts its VMM before the VMs it
// depends on are ready: initramfs-mode VMs with depends_on boot at once with
// their workload held, and the engine releases it once the dependencies are
// ready. (A cloud-init guest cannot hold its workload; it waits.)
func bootsEarly(a *planner.Action, vm *stackfile.VM) bool {
	return startsVMM(a) && vm != nil && len(vm.DependsOn) > 0 && vm.Mode() == stackfile.ModeInitramfs
}

// startsVMM reports whether a makes a new VM, and so boots a new VMM.
func startsVMM(a *planner.Action) bool {
	return a.Type == planner.TypeVM && (a.Kind == planner.Create || a.Kind == planner.Replace)
}

// splitDeps separates the VM dependencies (ready barriers) that an early
// booter awaits after its VMM starts from those it needs first.
func splitDeps(deps []string, early bool) (now, later []string) {
	if !early {
		return deps, nil
	}
	for _, d := range deps {
		if strings.HasSuffix(d, planner.BarrierReady) {
			later = append(later, d)
		} else {
			now = append(now, d)
		}
	}
	return now, later
}

// noteAccel tells the user, once, that a VM runs under TCG although the
// host has a KVM device, and why.
func (e *Engine) noteAccel(a *hypervisor.Accel) {
	if a == nil || a.Fallback == "" {
		return
	}
	e.accelOnce.Do(func() {
		e.emit("", PhaseWarning, fmt.Sprintf("KVM is present but cannot run guests here (%s); using TCG (software emulation, slower). Set accel = \"kvm\" to insist or \"tcg\" to skip the check.", a.Fallback))
	})
}

func (e *Engine) emit(address, phase, msg string) {
	if e.Progress != nil {
		e.Progress(Event{Time: time.Now(), Address: address, Phase: phase, Message: msg})
	}
}

// record applies an action's outcome to the in-memory state, lets mutate
// add what only the engine knows, and writes the state file.
func (e *Engine) record(plan *planner.Plan, a *planner.Action, mutate func(*state.State)) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if a != nil {
		plan.Record(e.st, a)
	}
	if mutate != nil {
		mutate(e.st)
	}
	if err := e.Store.Write(e.st); err != nil {
		return err
	}
	return nil
}

// vmFailure builds the error for a VM that did not come up, with the last
// 30 lines of its console.
func (e *Engine) vmFailure(address, name, reason string) error {
	logPath := consoleLogPath(e.StateRoot, e.Namespace, name)
	tail, _ := console.Tail(logPath, 30)
	return &VMError{Address: address, Reason: reason, ConsoleTail: tail, ConsoleLog: logPath}
}

func consoleLogPath(stateRoot, namespace, vm string) string {
	return filenames.VMState(stateRoot, namespace, vm) + "/" + filenames.ConsoleLog
}

// waiters routes supervisor events to the VMs waiting for readiness and
// forwards every event to the progress sink.
type waiters struct {
	mu      sync.Mutex
	waiting map[string]chan Event
	done    chan struct{}
}

func newWaiters(events <-chan Event, forward func(address, phase, msg string)) *waiters {
	w := &waiters{waiting: map[string]chan Event{}, done: make(chan struct{})}
	go func() {
		for ev := range events {
			forward(ev.Address, ev.Phase, ev.Message)
			w.mu.Lock()
			ch := w.waiting[ev.Address]
			w.mu.Unlock()
			if ch != nil {
				select {
				case ch <- ev:
				default:
				}
			}
		}
		close(w.done)
	}()
	return w
}

// expect registers interest in address's events before the VM is started,
// so that a fast ready event is not missed.
func (w *waiters) expect(address string) <-chan Event {
	ch := make(chan Event, 64)
	w.mu.Lock()
	w.waiting[address] = ch
	w.mu.Unlock()
	return ch
}

func (w *waiters) forget(address string) {
	w.mu.Lock()
	delete(w.waiting, address)
	w.mu.Unlock()
}

func (w *waiters) lost() <-chan struct{} { return w.done }

func (w *waiters) close() {}
