package engine

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor/api"
)

// FindVM returns the recorded VM named name (an instance name: web, web-0,
// web-blue), or an error that lists the namespace's VMs.
func FindVM(st *state.State, name string) (*state.VM, error) {
	for _, v := range st.VMs {
		if v.Name == name {
			return v, nil
		}
	}
	addrs := SortedAddresses(st)
	if len(addrs) == 0 {
		return nil, fmt.Errorf("no VM named %q: namespace %q has no VMs", name, st.Namespace)
	}
	names := make([]string, len(addrs))
	for i, a := range addrs {
		names[i] = st.VMs[a].Name
	}
	return nil, fmt.Errorf("no VM named %q in namespace %q (it has: %s)", name, st.Namespace, strings.Join(names, ", "))
}

// SortedAddresses are the recorded VMs' addresses in plan order.
func SortedAddresses(st *state.State) []string {
	addrs := st.VMAddresses()
	sort.Slice(addrs, func(i, j int) bool { return planner.CompareAddress(addrs[i], addrs[j]) < 0 })
	return addrs
}

// resolve maps VM names to their addresses; no names means every VM.
func resolve(st *state.State, names []string) ([]string, error) {
	if len(names) == 0 {
		addrs := SortedAddresses(st)
		if len(addrs) == 0 {
			return nil, fmt.Errorf("namespace %q has no VMs", st.Namespace)
		}
		return addrs, nil
	}
	var addrs []string
	seen := map[string]bool{}
	for _, n := range names {
		rec, err := FindVM(st, n)
		if err != nil {
			return nil, err
		}
		if !seen[rec.Address] {
			seen[rec.Address] = true
			addrs = append(addrs, rec.Address)
		}
	}
	return addrs, nil
}

// StopOptions tune Stop.
type StopOptions struct {
	// Timeout bounds the graceful stop (the guest is asked to power off),
	// after which the VMM is told to quit, then killed. Default 30s.
	Timeout     time.Duration
	LockTimeout time.Duration
	OnLockWait  func()
}

// Stop stops the named VMs (none named: all of the namespace) and keeps
// them: their disks, addresses and console logs stay, `ps` shows them
// stopped with their exit code, their restart policy does not bring them
// back, and Start or the next Up boots them again as they were. Stopping a
// stopped VM does nothing.
func (e *Engine) Stop(ctx context.Context, names []string, opts StopOptions) error {
	o, err := e.openVMs(ctx, "stop", names, opts.LockTimeout, opts.OnLockWait)
	if err != nil {
		return err
	}
	defer o.lock.Unlock()
	return e.halt(ctx, o, opts.Timeout)
}

// halt is Stop on the VMs of o, whose lock the caller holds.
func (e *Engine) halt(ctx context.Context, o *openVMs, timeout time.Duration) error {
	errs := parallel(o.addrs, func(addr string) error {
		return o.sup.HaltVM(ctx, addr, timeout)
	})
	// The supervisor's records say how each VM ended; the state file only
	// stops naming a process that is gone.
	for _, addr := range o.addrs {
		if errs[addr] == nil {
			v := o.st.VMs[addr]
			v.Status, v.Process, v.Reason = state.StatusStopped, nil, "stopped by request"
		}
	}
	if err := e.store.Write(o.st); err != nil {
		return err
	}
	return joinErrs(o.addrs, errs)
}

// StartOptions tune Start.
type StartOptions struct {
	// NoWait returns once the VMMs run, without waiting for readiness.
	NoWait      bool
	LockTimeout time.Duration
	OnLockWait  func()
	// Progress receives every event, as in Up.
	Progress func(Event)
}

// unknownReadyWait bounds the engine's own wait for a VM that Start boots,
// whose ready timeout it does not know: the supervisor fails the VM after
// that timeout anyway, so this only guards against a lost event.
const unknownReadyWait = 10 * time.Minute

// Start boots the named VMs (none named: all of the namespace) that do not
// run again: stopped by Stop, or exited or failed. Each boots from the
// spec and disks it had, with its addresses, and its workload starts at
// once (Start does not wait for what it depends on; Up does). It waits
// until they are all ready unless NoWait is set; a VM that runs already is
// only waited for. A VM that fails is reported with its console's tail (a
// *VMError).
func (e *Engine) Start(ctx context.Context, names []string, opts StartOptions) error {
	o, err := e.openVMs(ctx, "start", names, opts.LockTimeout, opts.OnLockWait)
	if err != nil {
		return err
	}
	defer o.lock.Unlock()
	return e.start(ctx, o, opts)
}

// start is Start on the VMs of o, whose lock the caller holds.
func (e *Engine) start(ctx context.Context, o *openVMs, opts StartOptions) error {
	current, err := o.sup.Status(ctx)
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	byAddr := map[string]api.VMStatus{}
	for _, v := range current {
		byAddr[v.Address] = v
	}
	var boot []string
	running := map[string]bool{}
	for _, addr := range o.addrs {
		switch v, ok := byAddr[addr]; {
		case !ok:
			return fmt.Errorf("start %s: the supervisor has no record of it; run `stack up`", o.st.VMs[addr].Name)
		case v.Halted || v.State.Ended():
			boot = append(boot, addr)
		default:
			running[addr] = true
		}
	}
	a := e.newApplier(o.st, nil, opts.Progress)
	a.noWait = opts.NoWait
	if err := a.begin(ctx, o.sup); err != nil {
		return err
	}
	defer a.end()
	errs := parallel(boot, func(addr string) error {
		return a.boot(ctx, addr, o.st.VMs[addr].Name, unknownReadyWait, &Slot{release: func() {}})
	})
	if err := joinErrs(boot, errs); err != nil {
		return err
	}
	if opts.NoWait || len(running) == 0 {
		return nil
	}
	return e.wait(ctx, running)
}

// openVMs is what Stop and Start work with: the namespace locked, its
// state, the addresses of the VMs named (none: all) and the supervisor.
type openVMs struct {
	lock  *state.Lock
	st    *state.State
	addrs []string
	sup   Supervisor
}

func (e *Engine) openVMs(ctx context.Context, verb string, names []string, lockWait time.Duration, onLockWait func()) (*openVMs, error) {
	lock, err := e.lock(ctx, lockWait, onLockWait)
	if err != nil {
		return nil, err
	}
	o := &openVMs{lock: lock}
	if o.st, err = e.store.Read(); err == nil {
		if o.addrs, err = resolve(o.st, names); err != nil {
			err = fmt.Errorf("%s: %w", verb, err)
		}
	}
	if err == nil {
		o.sup, err = e.connect(ctx, 0)
	}
	if err != nil {
		lock.Unlock()
		return nil, err
	}
	return o, nil
}

// parallel runs f for every address at once and returns the errors by
// address.
func parallel(addrs []string, f func(addr string) error) map[string]error {
	errs := make(map[string]error, len(addrs))
	var (
		wg sync.WaitGroup
		mu sync.Mutex
	)
	for _, a := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := f(a)
			mu.Lock()
			errs[a] = err
			mu.Unlock()
		}()
	}
	wg.Wait()
	return errs
}

func joinErrs(addrs []string, errs map[string]error) error {
	var out []error
	for _, a := range addrs {
		if errs[a] != nil {
			out = append(out, errs[a])
		}
	}
	return errors.Join(out...)
}
