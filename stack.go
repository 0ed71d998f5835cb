// Package stack is the Go API of stack: load stack files, plan, bring
// stacks up and down, and act on their VMs. It is a facade: every
// operation is package engine's, which alone talks to the namespace's
// supervisor. The `stack` command is a thin wrapper around it, and package
// stacktest builds test fixtures on it.
package stack

import (
	"context"
	"fmt"
	"path/filepath"

	"github.com/hashicorp/hcl/v2"

	"github.com/stackvm/stack/engine"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
)

// Options selects the stack files and where state lives.
type Options struct {
	Files     []string // default: stack.hcl in Dir
	Dir       string   // default: the working directory
	Namespace string   // default: the stack label, else the directory name
	Vars      []string // K=V
	VarFiles  []string
	Environ   []string // for STACK_VAR_*; nil means os.Environ()
	StateDir  string   // default: filenames.StateRoot()
}

// Project is a loaded set of stack files bound to a state directory.
type Project struct {
	Stack    *stackfile.Stack
	Sources  *stackfile.Sources
	StateDir string
}

// Load reads and checks the stack files. The diagnostics are user errors;
// render them with Sources.WriteDiagnostics. A nil Project means the files
// could not be loaded.
func Load(opts Options) (*Project, hcl.Diagnostics) {
	st, src, diags := stackfile.Load(stackfile.Options{
		Files: opts.Files, Dir: opts.Dir, Namespace: opts.Namespace,
		Vars: opts.Vars, VarFiles: opts.VarFiles, Environ: opts.Environ,
		Private: []string{StateRoot(opts.StateDir), filenames.RuntimeRoot()},
	})
	p := &Project{Stack: st, Sources: src, StateDir: StateRoot(opts.StateDir)}
	if diags.HasErrors() {
		return &Project{Sources: src, StateDir: p.StateDir}, diags
	}
	return p, diags
}

// Store is the project's namespace state store.
func (p *Project) Store() *state.Store { return state.Open(p.StateDir, p.Stack.Namespace) }

// PlanOptions tune Plan.
type PlanOptions = engine.PlanOptions

// Plan reads the recorded state, observes which VMs still run, and plans.
// It changes nothing.
func (p *Project) Plan(ctx context.Context, opts PlanOptions) (*planner.Plan, *state.State, error) {
	if p.Stack == nil {
		return nil, nil, fmt.Errorf("plan: the stack files did not load")
	}
	return p.engine().Plan(ctx, p.Stack, opts)
}

// engine is the namespace's engine.
func (p *Project) engine() *engine.Engine {
	return engine.New(engine.Options{
		Namespace: p.Stack.Namespace, StateRoot: p.StateDir, RuntimeRoot: filenames.RuntimeRoot(),
		Images: defaultImage,
	})
}

// Supervise runs a namespace's supervisor in this process when the process
// was started as one, and returns its exit code; started is false, and
// nothing is done, otherwise. stack starts a namespace's supervisor by
// re-executing its own binary: a program that uses this package to bring
// stacks up calls Supervise first thing in main, as the stack command does:
//
//	if code, started := stack.Supervise(); started {
//		os.Exit(code)
//	}
//
// (Test binaries that use package stacktest need not: it does so itself.)
func Supervise() (code int, started bool) { return engine.SupervisorMain() }

// Namespaces lists the namespaces that have state under stateDir.
func Namespaces(stateDir string) ([]string, error) {
	return state.List(StateRoot(stateDir))
}

// StateRoot returns dir, or the default state root when dir is empty, as an
// absolute path: the supervisor runs in another working directory and must
// write its records where the command that started it reads them.
func StateRoot(dir string) string {
	if dir == "" {
		dir = filenames.StateRoot()
	}
	if abs, err := filepath.Abs(dir); err == nil {
		return abs
	}
	return dir
}

// ForNamespace returns a Project that knows only its namespace: enough for
// Down, Status, Stop, Start, Exec and Logs, which work from the recorded
// state. A name that is not a namespace (filenames.CheckNamespace: "../x",
// "./al") is refused here, before any path is built on it.
func ForNamespace(namespace, stateDir string) (*Project, error) {
	if err := filenames.CheckNamespace(namespace); err != nil {
		return nil, err
	}
	return &Project{Stack: &stackfile.Stack{Namespace: namespace}, StateDir: StateRoot(stateDir)}, nil
}
