package stack

import (
	"context"
	"syscall"

	"github.com/stackvm/stack/engine"
)

// RestartOptions tune Restart.
type RestartOptions = engine.RestartOptions

// Restart stops the named VMs (none named: all of the namespace) and boots
// them again, as Stop then Start would, under one lock. It works from the
// recorded state, so it needs no stack files.
func (p *Project) Restart(ctx context.Context, names []string, opts RestartOptions) error {
	return p.engine().Restart(ctx, names, opts)
}

// ControlOptions tune Pause, Unpause and Kill.
type ControlOptions = engine.ControlOptions

// Pause stops the named VMs' CPUs (none named: all of the namespace); they
// show as paused until Unpause.
func (p *Project) Pause(ctx context.Context, names []string, opts ControlOptions) error {
	return p.engine().Pause(ctx, names, opts)
}

// Unpause lets paused VMs run again.
func (p *Project) Unpause(ctx context.Context, names []string, opts ControlOptions) error {
	return p.engine().Unpause(ctx, names, opts)
}

// Kill sends sig to the named VMs' VMM processes (none named: all of the
// namespace); a VMM it ends is a VM that ended by itself, for ps and its
// restart policy.
func (p *Project) Kill(ctx context.Context, names []string, sig syscall.Signal, opts ControlOptions) error {
	return p.engine().Kill(ctx, names, sig, opts)
}

// VMStats are a running VM's counters: its VMM's CPU time and resident
// memory, its network traffic (the switch ports' counters) and its disks'
// bytes, all cumulative.
type VMStats = engine.VMStats

// Stats samples the counters of the namespace's running VMs.
func (p *Project) Stats(ctx context.Context) ([]VMStats, error) {
	return p.engine().Stats(ctx)
}
