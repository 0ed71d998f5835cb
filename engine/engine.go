// Package engine runs a namespace. It plans the stack files against the
// recorded state and what still runs, applies plans in parallel along their
// dependency graph through the namespace's supervisor (which it starts when
// none runs), records state after every step and waits for readiness; and
// it answers ps, exec, logs, stop and start. It is the only package that
// talks to the supervisor (through package supervisor/client); package stack
// is its public facade.
package engine

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/stackvm/stack/hypervisor/console"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor/api"
)

// Images resolves the built-in guest image (kernel, initramfs) for VMs that
// do not name their own. It is called at most once per apply.
type Images func(ctx context.Context) (kernel, initramfs string, err error)

// Options configure an Engine.
type Options struct {
	Namespace   string
	StateRoot   string // absolute: the supervisor runs in another directory
	RuntimeRoot string
	Images      Images
	// CacheRoot is where OCI images are cached (default: the user's
	// cache, filenames.CacheRoot).
	CacheRoot string
	Logger    *slog.Logger
	// Concurrency bounds the plan's actions worked on at once (default 8).
	Concurrency int
	// Connect and Dial reach the namespace's supervisor: Connect starts
	// one when none runs (owner: see UpOptions.OwnerPID), Dial does not.
	// Nil means the real supervisor; tests set fakes.
	Connect func(ctx context.Context, owner int) (Supervisor, error)
	Dial    func(ctx context.Context) (Supervisor, error)
}

// Engine runs one namespace. It holds no connection and no lock between
// calls; each operation takes what it needs.
type Engine struct {
	opts  Options
	store *state.Store
	log   *slog.Logger
}

// New returns an engine for the namespace of o.
func New(o Options) *Engine {
	if o.Concurrency <= 0 {
		o.Concurrency = 8
	}
	if o.RuntimeRoot == "" {
		o.RuntimeRoot = filenames.RuntimeRoot()
	}
	lg := o.Logger
	if lg == nil {
		lg = slog.Default()
	}
	return &Engine{opts: o, store: state.Open(o.StateRoot, o.Namespace), log: lg}
}

// Store is the namespace's state store.
func (e *Engine) Store() *state.Store { return e.store }

// Event is one step of an operation, as `up --progress` shows it.
type Event struct {
	Time    time.Time `json:"time"`
	Address string    `json:"address"`
	// Instance is the VM incarnation the event is about ("" for networks
	// and the engine's own steps).
	Instance string `json:"instance,omitempty"`
	Phase    Phase  `json:"phase"`
	Message  string `json:"message,omitempty"`
}

// Phase names a step in an Event.
type Phase string

func (p Phase) String() string { return string(p) }

// Phases the supervisor reports: the VMM's life.
const (
	PhaseNetwork  = Phase(api.PhaseNetwork)
	PhaseVMMStart = Phase(api.PhaseVMMStart)
	PhaseBooting  = Phase(api.PhaseBooting)
	PhaseReady    = Phase(api.PhaseReady)
	PhaseFailed   = Phase(api.PhaseFailed)
	PhaseExited   = Phase(api.PhaseExited)
	PhaseRestart  = Phase(api.PhaseRestart)
	PhaseStopped  = Phase(api.PhaseStopped)
)

// Phases the engine reports itself.
const (
	PhaseDisks   Phase = "disks"
	PhaseSeed    Phase = "seed"
	PhaseWaiting Phase = "waiting"
	PhaseDone    Phase = "done"
	PhaseDelete  Phase = "delete"
	PhaseUpdate  Phase = "update"
	// PhaseWarning is a note about the whole operation (Address ""), such
	// as KVM falling back to TCG, or about a VM that is ready all the
	// same (Address set), such as a cloud-init module that failed.
	PhaseWarning Phase = "warning"
)

// VMError is a VM that failed to start or to become ready, with the end of
// its console for the user.
type VMError struct {
	Address     string
	Reason      string
	ConsoleTail []string
	ConsoleLog  string
}

func (e *VMError) Error() string { return fmt.Sprintf("%s: %s", e.Address, e.Reason) }

// consoleTailLines is how much of its console a VMError carries.
const consoleTailLines = 30

// vmFailure builds the error for a VM that did not come up, with the end
// of its console.
func (e *Engine) vmFailure(address, name, reason string) error {
	logPath := e.consoleLog(name)
	tail, _ := console.Tail(logPath, consoleTailLines)
	return &VMError{Address: address, Reason: reason, ConsoleTail: tail, ConsoleLog: logPath}
}

// consoleLog is the path of a VM's console log.
func (e *Engine) consoleLog(vm string) string {
	return filenames.ConsoleLogPath(e.opts.StateRoot, e.opts.Namespace, vm)
}

// lockTimeout is the default wait for another command on the namespace.
const lockTimeout = 5 * time.Minute

// lock takes the namespace's lock for a mutating operation.
func (e *Engine) lock(ctx context.Context, timeout time.Duration, onWait func()) (*state.Lock, error) {
	if timeout <= 0 {
		timeout = lockTimeout
	}
	return e.store.Lock(ctx, timeout, onWait)
}
