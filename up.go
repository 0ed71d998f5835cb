package stack

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/stackvm/stack/engine"
	"github.com/stackvm/stack/guestimage"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor"
)

// Event is one step of `up` or `down`, as --progress shows it.
type Event = engine.Event

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
	// OwnerPID, when set, makes the namespace's supervisor bring everything
	// down when that process dies (stacktest passes the test binary's pid).
	OwnerPID int
}

// Up applies the stack: it plans against the recorded state and the
// running VMs, and carries out the plan. It returns the plan it applied; a
// plan without changes touches nothing.
func (p *Project) Up(ctx context.Context, opts UpOptions) (*planner.Plan, error) {
	if opts.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, opts.Timeout)
		defer cancel()
	}
	store := p.Store()
	lock, err := store.Lock(ctx, lockTimeout(opts.LockTimeout), opts.OnLockWait)
	if err != nil {
		return nil, err
	}
	defer lock.Unlock()
	st, err := store.Read()
	if err != nil {
		return nil, err
	}
	desired := p.Stack
	var plan *planner.Plan
	if opts.SavedPlan != nil {
		plan, desired, err = planner.LoadSaved(opts.SavedPlan, st)
	} else {
		plan, err = planner.Make(planner.Input{Desired: desired, State: st, Observed: engine.Observe(p.StateDir, st)})
	}
	if err != nil {
		return nil, err
	}
	// The supervisor is started even for an empty plan: when it was
	// killed, this is what re-adopts the running VMs.
	if !plan.HasChanges() && len(st.VMs) == 0 {
		return plan, nil
	}
	e := p.engine(store, nil, opts.Progress)
	e.NoWait = opts.NoWait
	e.Prefetch(ctx, plan, desired)
	if e.Supervisor, err = ensureSupervisor(ctx, desired.Namespace, p.StateDir, opts.OwnerPID); err != nil {
		return nil, err
	}
	if !plan.HasChanges() {
		return plan, nil
	}
	return plan, e.Apply(ctx, plan, desired, st)
}

func (p *Project) engine(store *state.Store, client *supervisor.Client, progress func(Event)) *engine.Engine {
	return &engine.Engine{
		Namespace:   p.Stack.Namespace,
		StateRoot:   p.StateDir,
		RuntimeRoot: filenames.RuntimeRoot(),
		Store:       store,
		Supervisor:  client,
		Images:      defaultImage,
		Progress:    progress,
	}
}

// defaultImage builds (once, cached) the built-in guest image.
func defaultImage(ctx context.Context) (string, string, error) {
	img, err := guestimage.Ensure(ctx, guestimage.Options{})
	if err != nil {
		return "", "", fmt.Errorf("build the built-in guest image: %w", err)
	}
	return img.Kernel, img.Initramfs, nil
}

func lockTimeout(d time.Duration) time.Duration {
	if d <= 0 {
		return 5 * time.Minute
	}
	return d
}

// DownOptions tune Down.
type DownOptions struct {
	Volumes     bool // delete volumes too
	StopTimeout time.Duration
	LockTimeout time.Duration
	OnLockWait  func()
	Progress    func(Event)
}

// Down stops and removes everything Up created in the namespace but its
// volumes (and those too with Volumes). It works from the recorded state, so
// it needs no stack files: a Project with only a namespace will do.
func (p *Project) Down(ctx context.Context, opts DownOptions) error {
	store := p.Store()
	lock, err := store.Lock(ctx, lockTimeout(opts.LockTimeout), opts.OnLockWait)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	st, err := store.Read()
	if err != nil {
		return err
	}
	plan, err := planner.Make(planner.Input{State: st, Destroy: true, DeleteVolumes: opts.Volumes})
	if err != nil {
		return err
	}
	client, err := ensureSupervisor(ctx, p.Stack.Namespace, p.StateDir, 0)
	if err != nil {
		return err
	}
	e := p.engine(store, client, opts.Progress)
	e.StopTimeout = opts.StopTimeout
	if err := e.Apply(ctx, plan, &stackfile.Stack{Namespace: p.Stack.Namespace}, st); err != nil {
		return err
	}
	if _, err := client.Call(ctx, &supervisor.Request{Op: supervisor.OpShutdown}); err != nil && !errors.Is(err, supervisor.ErrNotRunning) {
		return err
	}
	if st.Empty() {
		if err := store.Remove(); err != nil {
			return err
		}
		// Leave nothing behind but the lock file, which another command may
		// be waiting on (removing it would let two commands lock two files).
		nsDir := filenames.NamespaceState(p.StateDir, p.Stack.Namespace)
		for _, name := range []string{filenames.NetworkDir, filenames.VMDir, filenames.VolumeDir, filenames.SupervisorLog, filenames.SSHClientKey} {
			os.RemoveAll(filepath.Join(nsDir, name))
		}
	}
	// The supervisor removed its sockets; the directory goes too.
	os.Remove(filenames.NamespaceRuntime(filenames.RuntimeRoot(), p.Stack.Namespace))
	return nil
}

// ForNamespace returns a Project that knows only its namespace: enough for
// Down, Status and Logs, which work from the recorded state.
func ForNamespace(namespace, stateDir string) *Project {
	return &Project{Stack: &stackfile.Stack{Namespace: namespace}, StateDir: StateRoot(stateDir)}
}
