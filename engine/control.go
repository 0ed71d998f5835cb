package engine

import (
	"context"
	"fmt"
	"syscall"
	"time"

	"github.com/stackvm/stack/supervisor/api"
)

// RestartOptions tune Restart.
type RestartOptions struct {
	// Timeout bounds each VM's graceful stop, as in Stop.
	Timeout time.Duration
	// The rest are Start's.
	StartOptions
}

// Restart stops the named VMs (none named: all of the namespace) as Stop
// does and boots them again as Start does, under one lock: `stack restart`.
// A VM that does not run is started.
func (e *Engine) Restart(ctx context.Context, names []string, opts RestartOptions) error {
	o, err := e.openVMs(ctx, "restart", names, opts.LockTimeout, opts.OnLockWait)
	if err != nil {
		return err
	}
	defer o.lock.Unlock()
	if err := e.halt(ctx, o, opts.Timeout); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	return e.start(ctx, o, opts.StartOptions)
}

// ControlOptions tune Pause, Unpause and Kill.
type ControlOptions struct {
	LockTimeout time.Duration
	OnLockWait  func()
}

// Pause stops the named VMs' CPUs (none named: all of the namespace):
// `stack pause`. They keep their memory and show as paused; their
// readiness waits meanwhile.
func (e *Engine) Pause(ctx context.Context, names []string, opts ControlOptions) error {
	return e.control(ctx, "pause", names, opts, func(o *openVMs, addr string) error {
		return o.sup.PauseVM(ctx, addr)
	})
}

// Unpause lets paused VMs run again: `stack unpause`.
func (e *Engine) Unpause(ctx context.Context, names []string, opts ControlOptions) error {
	return e.control(ctx, "unpause", names, opts, func(o *openVMs, addr string) error {
		return o.sup.ResumeVM(ctx, addr)
	})
}

// Kill sends sig to the named VMs' VMM processes (none named: all of the
// namespace): `stack kill`. A VMM that a signal ends is a VM that ended by
// itself: `ps` shows it failed with 128+sig, and its restart policy
// decides what follows.
func (e *Engine) Kill(ctx context.Context, names []string, sig syscall.Signal, opts ControlOptions) error {
	return e.control(ctx, "kill", names, opts, func(o *openVMs, addr string) error {
		return o.sup.SignalVM(ctx, addr, sig)
	})
}

// control runs f on every VM named, at once, under the namespace's lock.
func (e *Engine) control(ctx context.Context, verb string, names []string, opts ControlOptions, f func(*openVMs, string) error) error {
	o, err := e.openVMs(ctx, verb, names, opts.LockTimeout, opts.OnLockWait)
	if err != nil {
		return err
	}
	defer o.lock.Unlock()
	return joinErrs(o.addrs, parallel(o.addrs, func(addr string) error { return f(o, addr) }))
}

// VMStats are a running VM's counters (see api.VMStats).
type VMStats = api.VMStats

// Stats samples the counters of the namespace's running VMs; none run
// without a supervisor.
func (e *Engine) Stats(ctx context.Context) ([]VMStats, error) {
	sup, err := e.dial(ctx)
	if IsNoSupervisor(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return sup.Stats(ctx)
}
