package stack

import (
	"context"
	"fmt"

	"github.com/stackvm/stack/engine"
	"github.com/stackvm/stack/guestimage"
	"github.com/stackvm/stack/planner"
)

// Event is one step of `up` or `down`, as --progress shows it.
type Event = engine.Event

// Phase names an Event's step.
type Phase = engine.Phase

// Phases of Events.
const (
	PhaseVMMStart = engine.PhaseVMMStart
	PhaseBooting  = engine.PhaseBooting
	PhaseReady    = engine.PhaseReady
	PhaseFailed   = engine.PhaseFailed
	PhaseWarning  = engine.PhaseWarning
)

// VMError is a VM that failed to start or to become ready, with the end of
// its console.
type VMError = engine.VMError

// UpOptions tune Up.
type UpOptions = engine.UpOptions

// Up applies the stack: it plans against the recorded state and the
// running VMs, and carries out the plan. It returns the plan it applied; a
// plan without changes touches nothing.
func (p *Project) Up(ctx context.Context, opts UpOptions) (*planner.Plan, error) {
	return p.engine().Up(ctx, p.Stack, opts)
}

// defaultImage builds (once, cached) the built-in guest image.
func defaultImage(ctx context.Context) (string, string, error) {
	img, err := guestimage.Ensure(ctx, guestimage.Options{})
	if err != nil {
		return "", "", fmt.Errorf("build the built-in guest image: %w", err)
	}
	return img.Kernel, img.Initramfs, nil
}

// DownOptions tune Down.
type DownOptions = engine.DownOptions

// Down stops and removes everything Up created in the namespace but its
// volumes (and those too with Volumes). It works from the recorded state, so
// it needs no stack files: a Project with only a namespace will do.
func (p *Project) Down(ctx context.Context, opts DownOptions) error {
	return p.engine().Down(ctx, opts)
}

// StopOptions tune Stop.
type StopOptions = engine.StopOptions

// Stop stops the named VMs (none named: all of the namespace) and keeps
// them: their disks, addresses and console logs stay, `ps` shows them
// stopped with their exit code, their restart policy does not bring them
// back, and Start or the next Up boots them again as they were. Stopping a
// stopped VM does nothing. It works from the recorded state, so it needs no
// stack files.
func (p *Project) Stop(ctx context.Context, names []string, opts StopOptions) error {
	return p.engine().Stop(ctx, names, opts)
}

// StartOptions tune Start.
type StartOptions = engine.StartOptions

// Start boots the named VMs (none named: all of the namespace) that do not
// run again: stopped by Stop, or exited or failed. Each boots from the
// spec and disks it had, with its addresses, and its workload starts at
// once (Start does not wait for what it depends on; Up does). It waits
// until they are all ready unless NoWait is set; a VM that runs already is
// only waited for. Like Up, a VM that fails is reported with its console's
// tail (a *VMError).
func (p *Project) Start(ctx context.Context, names []string, opts StartOptions) error {
	return p.engine().Start(ctx, names, opts)
}
