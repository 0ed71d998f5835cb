package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/stackvm/stack/hypervisor/proc"
	"github.com/stackvm/stack/supervisor"
	"github.com/stackvm/stack/supervisor/api"
	"github.com/stackvm/stack/supervisor/client"
)

// Supervisor is what the engine asks of a namespace's supervisor: the
// operations of supervisor/api, as supervisor/client carries them. Tests
// give the engine a fake.
type Supervisor interface {
	EnsureNetwork(ctx context.Context, n api.NetworkSpec) error
	RemoveNetwork(ctx context.Context, name string) error
	StartVM(ctx context.Context, spec api.VMSpec) (api.Started, error)
	BootVM(ctx context.Context, address, instance string) (api.Started, error)
	StopVM(ctx context.Context, address string, timeout time.Duration) error
	HaltVM(ctx context.Context, address string, timeout time.Duration) error
	UpdateVM(ctx context.Context, u api.Update) error
	ReleaseVM(ctx context.Context, address string) error
	Stats(ctx context.Context) ([]api.VMStats, error)
	PauseVM(ctx context.Context, address string) error
	ResumeVM(ctx context.Context, address string) error
	SignalVM(ctx context.Context, address string, sig syscall.Signal) error
	Status(ctx context.Context) ([]api.VMStatus, error)
	Watch(ctx context.Context) (<-chan api.Event, error)
	Exec(ctx context.Context, address string, spec api.ExecSpec, stdio client.ExecIO) (int, error)
	Shutdown(ctx context.Context) error
	SetPools(ctx context.Context, specs []api.PoolSpec) error
	Pools(ctx context.Context) ([]api.PoolStatus, error)
	SaveSnapshot(ctx context.Context, dir string) (*api.Saved, error)
	CheckRestore(ctx context.Context, vms []api.RestoreVM) error
	RestoreVMs(ctx context.Context, vms []api.RestoreVM) ([]api.Started, error)
}

var _ Supervisor = (*client.Client)(nil)

// ErrNoSupervisor: no supervisor runs for the namespace.
var ErrNoSupervisor = client.ErrNotRunning

// connect returns the namespace's supervisor, starting one when none
// answers (the engine's own binary, re-executed; see SupervisorMain). owner,
// when non-zero, is a process whose death brings the namespace down.
func (e *Engine) connect(ctx context.Context, owner int) (Supervisor, error) {
	if e.opts.Connect != nil {
		return e.opts.Connect(ctx, owner)
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start supervisor: %w", err)
	}
	a := api.SuperviseArgs{Namespace: e.opts.Namespace, StateRoot: e.opts.StateRoot, RuntimeRoot: e.opts.RuntimeRoot}
	if owner != 0 {
		a.OwnerPID = owner
		a.OwnerStartTime, _ = proc.StartTime(owner)
	}
	raw, err := json.Marshal(a)
	if err != nil {
		return nil, err
	}
	return client.Ensure(ctx, client.SpawnOptions{
		Namespace: e.opts.Namespace, StateRoot: e.opts.StateRoot, RuntimeRoot: e.opts.RuntimeRoot,
		Executable: exe, Env: append(os.Environ(), api.SuperviseEnv+"="+string(raw)),
		Dir: filepath.Dir(exe),
	})
}

// dial returns the namespace's supervisor if one runs; it starts none
// (ErrNoSupervisor wrapped when none answers).
func (e *Engine) dial(ctx context.Context) (Supervisor, error) {
	if e.opts.Dial != nil {
		return e.opts.Dial(ctx)
	}
	c, err := client.Dial(ctx, e.opts.RuntimeRoot, e.opts.StateRoot, e.opts.Namespace)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// SupervisorMain runs a namespace's supervisor in this process when the
// process was started as one by the engine, and returns its exit code;
// started is false, and nothing is done, otherwise. Programs that the engine
// may re-execute call it first (the stack command's main, and stacktest's
// init for test binaries).
func SupervisorMain() (code int, started bool) { return supervisor.Main() }

// IsNoSupervisor reports whether err says that no supervisor runs.
func IsNoSupervisor(err error) bool { return errors.Is(err, ErrNoSupervisor) }
