package stack

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor"
)

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
// stopped VM does nothing. It works from the recorded state, so it needs no
// stack files.
func (p *Project) Stop(ctx context.Context, names []string, opts StopOptions) error {
	o, err := p.openVMs(ctx, "stop", names, opts.LockTimeout, opts.OnLockWait)
	if err != nil {
		return err
	}
	defer o.unlock()
	st, addrs, client := o.st, o.addrs, o.client
	errs := parallel(addrs, func(addr string) error {
		_, err := client.Call(ctx, &supervisor.Request{Op: supervisor.OpHaltVM, Address: addr, Timeout: supervisor.Duration(opts.Timeout)})
		return err
	})
	// The supervisor's records say how each VM ended; the state file only
	// stops naming a process that is gone.
	for _, addr := range addrs {
		if errs[addr] == nil {
			v := st.VMs[addr]
			v.Status, v.Process, v.Reason = state.StatusStopped, nil, "stopped by request"
		}
	}
	if err := o.store.Write(st); err != nil {
		return err
	}
	return joinErrs(addrs, errs)
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

// Start boots the named VMs (none named: all of the namespace) that do not
// run again: stopped by Stop, or exited or failed. Each boots from the
// spec and disks it had, with its addresses, and its workload starts at
// once (Start does not wait for what it depends on; Up does). It waits
// until they are all ready unless NoWait is set; a VM that runs already is
// only waited for. Like Up, a VM that fails is reported with its console's
// tail (an *engine.VMError).
func (p *Project) Start(ctx context.Context, names []string, opts StartOptions) error {
	o, err := p.openVMs(ctx, "start", names, opts.LockTimeout, opts.OnLockWait)
	if err != nil {
		return err
	}
	defer o.unlock()
	st, addrs, client := o.st, o.addrs, o.client
	resp, err := client.Call(ctx, &supervisor.Request{Op: supervisor.OpStatus})
	if err != nil {
		return fmt.Errorf("start: %w", err)
	}
	current := map[string]VMStatus{}
	for _, v := range resp.VMs {
		current[v.Address] = v
	}
	var boot []string
	running := map[string]bool{}
	for _, addr := range addrs {
		switch v, ok := current[addr]; {
		case !ok:
			return fmt.Errorf("start %s: the supervisor has no record of it; run `stack up`", st.VMs[addr].Name)
		case v.Halted || v.State == state.StatusStopped || v.State == state.StatusFailed:
			boot = append(boot, addr)
		default:
			running[addr] = true
		}
	}
	e := p.engine(o.store, client, opts.Progress)
	e.NoWait = opts.NoWait
	if err := e.Start(ctx, st, boot); err != nil {
		return err
	}
	if opts.NoWait || len(running) == 0 {
		return nil
	}
	return p.wait(ctx, running)
}

// openVMs is what Stop and Start work with: the namespace locked, its
// state, the addresses of the VMs named (none: all) and the supervisor.
type openVMs struct {
	store  *state.Store
	unlock func() error
	st     *state.State
	addrs  []string
	client *supervisor.Client
}

func (p *Project) openVMs(ctx context.Context, verb string, names []string, lockWait time.Duration, onLockWait func()) (*openVMs, error) {
	store := p.Store()
	lock, err := store.Lock(ctx, lockTimeout(lockWait), onLockWait)
	if err != nil {
		return nil, err
	}
	o := &openVMs{store: store, unlock: lock.Unlock}
	if o.st, err = store.Read(); err == nil {
		if o.addrs, err = p.resolve(o.st, names); err != nil {
			err = fmt.Errorf("%s: %w", verb, err)
		}
	}
	if err == nil {
		o.client, err = ensureSupervisor(ctx, p.Stack.Namespace, p.StateDir, 0)
	}
	if err != nil {
		lock.Unlock()
		return nil, err
	}
	return o, nil
}

// resolve maps VM names to their addresses; no names means every VM.
func (p *Project) resolve(st *state.State, names []string) ([]string, error) {
	if len(names) == 0 {
		addrs := sortedAddresses(st)
		if len(addrs) == 0 {
			return nil, fmt.Errorf("namespace %q has no VMs", p.Stack.Namespace)
		}
		return addrs, nil
	}
	var addrs []string
	seen := map[string]bool{}
	for _, n := range names {
		rec := findVM(st, n)
		if rec == nil {
			return nil, noSuchVM(st, p.Stack.Namespace, n)
		}
		if !seen[rec.Address] {
			seen[rec.Address] = true
			addrs = append(addrs, rec.Address)
		}
	}
	return addrs, nil
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
