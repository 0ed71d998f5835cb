package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor/client"
)

// PlanOptions tune Plan.
type PlanOptions struct {
	DeleteVolumes bool // plan orphaned volumes for deletion
	Destroy       bool // plan everything for deletion (down)
	// Targets narrows the plan to the VMs named and what they need (with
	// Destroy: to the VMs named); see planner.Input.Targets.
	Targets []string
	Force   bool // with Destroy and Targets: even when running VMs depend on them
}

// Plan reads the recorded state, observes which VMs still run, and plans
// desired against them. It changes nothing and takes no lock. Image
// references are resolved to the images they name now (see images.go).
func (e *Engine) Plan(ctx context.Context, desired *stackfile.Stack, opts PlanOptions) (*planner.Plan, *state.State, error) {
	if !opts.Destroy {
		if err := e.resolveImages(ctx, desired); err != nil {
			return nil, nil, err
		}
	}
	st, err := e.store.Read()
	if err != nil {
		return nil, nil, err
	}
	plan, err := planner.Make(planner.Input{
		Desired: desired, State: st, Observed: e.Observe(st),
		DeleteVolumes: opts.DeleteVolumes, Destroy: opts.Destroy,
		Targets: opts.Targets, Force: opts.Force,
	})
	if err != nil {
		return nil, nil, err
	}
	return plan, st, nil
}

// UpOptions tune Up.
type UpOptions struct {
	// SavedPlan is a plan written by `plan --out`; it is applied exactly,
	// or refused when the state moved since it was made.
	SavedPlan []byte
	// NoWait returns once every VMM runs, without waiting for readiness.
	NoWait bool
	// Timeout bounds the whole command (0: none beyond the VMs' own
	// ready timeouts).
	Timeout time.Duration
	// LockTimeout bounds the wait for another command on the namespace.
	LockTimeout time.Duration
	// OnLockWait is called once when the lock is busy (to tell the user).
	OnLockWait func()
	// Progress receives every event.
	Progress func(Event)
	// Targets narrows the plan to the VMs named and what they need
	// (planner.Input.Targets); warm pools are then left as they are.
	Targets []string
	// OwnerPID, when set, makes the namespace's supervisor bring everything
	// down when that process dies (stacktest passes the test binary's pid).
	OwnerPID int
}

// Up applies desired: it plans against the recorded state and the running
// VMs (or takes the saved plan), and carries out the plan. It returns the
// plan it applied; a plan without changes touches nothing.
func (e *Engine) Up(ctx context.Context, desired *stackfile.Stack, opts UpOptions) (*planner.Plan, error) {
	if opts.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.Timeout)
		defer cancel()
	}
	lock, err := e.lock(ctx, opts.LockTimeout, opts.OnLockWait)
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	st, err := e.store.Read()
	if err != nil {
		return nil, err
	}
	var plan *planner.Plan
	if opts.SavedPlan != nil {
		if len(opts.Targets) > 0 {
			return nil, fmt.Errorf("up: a saved plan is applied as it is: name the VMs when you make it (stack plan --out FILE VM...)")
		}
		plan, desired, err = planner.LoadSaved(opts.SavedPlan, st, desired)
		if err != nil {
			return nil, err
		}
	}
	// Images are pulled before planning: the plan compares the digests
	// they resolve to, and the VMs it boots need their file systems.
	images, err := e.pullImages(ctx, desired, opts.Progress)
	if err != nil {
		return nil, err
	}
	if opts.SavedPlan == nil {
		plan, err = planner.Make(planner.Input{Desired: desired, State: st, Observed: e.Observe(st), Targets: opts.Targets})
		if err != nil {
			return nil, err
		}
	}
	// The supervisor is started even for an empty plan: when it was
	// killed, this is what re-adopts the running VMs.
	if !plan.HasChanges() && len(st.VMs) == 0 && !hasPools(desired) {
		return plan, nil
	}
	a := e.newApplier(st, desired, opts.Progress)
	a.images = images
	a.noWait = opts.NoWait
	a.prefetch(ctx, plan)
	sup, err := e.connect(ctx, opts.OwnerPID)
	if err != nil {
		return nil, err
	}
	if plan.HasChanges() {
		if err := a.begin(ctx, sup); err != nil {
			return nil, err
		}
		defer a.end()
		if err := a.apply(ctx, plan); err != nil {
			return plan, err
		}
	}
	// Pools are set once the plan's networks run; an unchanged stack may
	// still have changed its pools. Part of a stack leaves them alone, as
	// does a saved plan of part of one.
	if len(opts.Targets) > 0 || len(plan.LeftOut) > 0 {
		return plan, nil
	}
	pools, err := a.pools(ctx)
	if err == nil {
		err = sup.SetPools(ctx, pools)
	}
	if err == nil && !opts.NoWait && !plan.HasChanges() {
		err = e.awaitUnchanged(ctx, desired)
	}
	return plan, err
}

// awaitUnchanged waits, as an apply does, for the VMs of an unchanged plan
// that still boot: an up killed (or whose supervisor was killed) while
// they booted left them so, and the next up, which has nothing to change,
// must still not return before they are ready. It waits at most the
// longest ready timeout of the stack's VMs.
func (e *Engine) awaitUnchanged(ctx context.Context, desired *stackfile.Stack) error {
	timeout := stackfile.DefaultReadyTimeout
	for _, vm := range desired.VMs {
		timeout = max(timeout, vm.Ready.Timeout)
	}
	wctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if err := e.wait(wctx, nil); err != nil {
		return fmt.Errorf("up: the VMs that were already booting: %w", err)
	}
	return nil
}

// applyDown carries out a plan of deletions.
func (e *Engine) applyDown(ctx context.Context, st *state.State, plan *planner.Plan, sup Supervisor, opts DownOptions) error {
	a := e.newApplier(st, &stackfile.Stack{Namespace: e.opts.Namespace}, opts.Progress)
	if opts.StopTimeout > 0 {
		a.stopTimeout = opts.StopTimeout
	}
	if err := a.begin(ctx, sup); err != nil {
		return err
	}
	defer a.end()
	return a.apply(ctx, plan)
}

func hasPools(st *stackfile.Stack) bool {
	for _, vm := range st.VMs {
		if vm.Pool > 0 {
			return true
		}
	}
	return false
}

// DownOptions tune Down.
type DownOptions struct {
	Volumes     bool // delete volumes too
	StopTimeout time.Duration
	LockTimeout time.Duration
	OnLockWait  func()
	Progress    func(Event)
	// Targets names the VMs to remove (instance names or block labels);
	// none: everything. Networks, volumes, the warm pools and the
	// supervisor stay. A VM that runs and depends on one of them refuses
	// it, unless Force.
	Targets []string
	// Force, with Targets, removes them even when running VMs depend on
	// them. Without, it takes the namespace down when its state or
	// supervisor cannot be used: a corrupt state file is moved aside as a
	// backup (state.json.corrupt-<time>) and down stops what the
	// supervisor runs, as without a state file; a supervisor that does not
	// answer is killed, with the VMMs the records name (by pid and start
	// time), and a new one takes the namespace down from the records. It
	// says what it does (PhaseWarning events) before doing it.
	Force bool
}

// warn reports a note about the whole operation.
func (o DownOptions) warn(format string, args ...any) {
	if o.Progress != nil {
		o.Progress(Event{Time: time.Now(), Phase: PhaseWarning, Message: fmt.Sprintf(format, args...)})
	}
}

// Down stops and removes everything Up created in the namespace but its
// volumes (and those too with Volumes), or only the VMs in
// DownOptions.Targets. It works from the recorded state: it needs no stack
// files.
func (e *Engine) Down(ctx context.Context, opts DownOptions) error {
	lock, err := e.lock(ctx, opts.LockTimeout, opts.OnLockWait)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	st, err := e.store.Read()
	if errors.Is(err, state.ErrCorrupt) && opts.Force {
		opts.warn("%v. --force: moving it aside as a backup and stopping whatever the namespace's supervisor runs, as if there were no state.", err)
		backup, err := e.store.MoveAside(time.Now())
		if err != nil {
			return err
		}
		opts.warn("The corrupt state file is kept as the backup %s.", backup)
		st = state.New(e.opts.Namespace)
	} else if err != nil {
		return err
	}
	in := planner.Input{State: st, Destroy: true, DeleteVolumes: opts.Volumes, Targets: opts.Targets, Force: opts.Force}
	if len(opts.Targets) > 0 {
		in.Observed = e.Observe(st)
	}
	plan, err := planner.Make(in)
	if err != nil {
		return fmt.Errorf("down: %w", err)
	}
	sup, err := e.connect(ctx, 0)
	var na *client.NoAnswerError
	if errors.As(err, &na) && opts.Force {
		if err := e.killWedged(ctx, na, st, opts); err != nil {
			return err
		}
		sup, err = e.connect(ctx, 0) // a new supervisor, from the records
	}
	if err != nil {
		return err
	}
	// Part of a namespace leaves its pools, networks and supervisor alone.
	part := len(opts.Targets) > 0
	// Warm pools go first: their VMs sit on the networks the plan removes.
	if !part {
		if err := sup.SetPools(ctx, nil); err != nil {
			return err
		}
	}
	if err := e.applyDown(ctx, st, plan, sup, opts); err != nil || part {
		return err
	}
	if err := sup.Shutdown(ctx); err != nil && !IsNoSupervisor(err) {
		return err
	}
	if st.Empty() {
		if err := e.store.Remove(); err != nil {
			return err
		}
		// Leave nothing behind: the lock file goes last, while held (a
		// command waiting on it locks the path anew, see fsutil.LockFile),
		// then the directory when nothing else (snapshots) is in it.
		nsDir := filenames.NamespaceState(e.opts.StateRoot, e.opts.Namespace)
		for _, name := range []string{filenames.NetworkDir, filenames.VMDir, filenames.VolumeDir, filenames.SupervisorLog, filenames.SupervisorLogOld, filenames.SSHClientKey} {
			os.RemoveAll(filepath.Join(nsDir, name))
		}
		if err := lock.Remove(); err != nil {
			return fmt.Errorf("remove state lock: %w", err)
		}
		os.Remove(nsDir)
	}
	// The supervisor removed its sockets; the directory goes too.
	os.Remove(filenames.Secrets(e.opts.RuntimeRoot, e.opts.Namespace))
	os.Remove(filepath.Join(filenames.NamespaceRuntime(e.opts.RuntimeRoot, e.opts.Namespace), filenames.RecordKey))
	os.Remove(filenames.NamespaceRuntime(e.opts.RuntimeRoot, e.opts.Namespace))
	return nil
}

// Graph plans desired as if nothing of it existed: every resource is
// created, so the plan's graph holds every resource of the stack and every
// dependency between them (`stack graph`). It reads and changes nothing.
func Graph(desired *stackfile.Stack) ([]*planner.Node, error) {
	plan, err := planner.Make(planner.Input{Desired: desired, State: state.New(desired.Namespace)})
	if err != nil {
		return nil, fmt.Errorf("graph: %w", err)
	}
	return plan.Graph(), nil
}
