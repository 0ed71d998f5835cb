// Package app is the `stack` command line: one file per subcommand, all of
// them thin wrappers around the public package stack. Rendering (colour,
// tables, diagnostics with snippets) lives here and nowhere else.
package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/stackvm/stack"
	"github.com/stackvm/stack/internal/termsafe"
)

// Streams are the command's standard streams.
type Streams struct {
	In       io.Reader
	Out, Err io.Writer
}

// ExitError ends the command with Code. A nil Err prints nothing (for
// --detailed-exitcode and validation failures that were already reported).
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string {
	if e.Err == nil {
		return fmt.Sprintf("exit status %d", e.Code)
	}
	return e.Err.Error()
}

func (e *ExitError) Unwrap() error { return e.Err }

// errReported is returned after the problem was already written to stderr.
var errReported = &ExitError{Code: 1}

// Main runs the command and returns its exit code.
func Main(ctx context.Context, s Streams, args []string) int {
	err := Run(ctx, s, args)
	if err == nil {
		return 0
	}
	var ee *ExitError
	if errors.As(err, &ee) {
		if ee.Err != nil {
			fmt.Fprintf(s.Err, "Error: %s\n", termsafe.String(ee.Err.Error()))
		}
		return ee.Code
	}
	// Errors quote guests (a failed VM's reason).
	fmt.Fprintf(s.Err, "Error: %s\n", termsafe.String(err.Error()))
	return 1
}

// Run executes the command line args.
func Run(ctx context.Context, s Streams, args []string) error {
	root := newRoot(s)
	root.SetArgs(rewriteLogsFollow(args))
	return root.ExecuteContext(ctx)
}

// rewriteLogsFollow gives `-f` after `logs` its compose meaning, --follow,
// while `-f FILE` before the subcommand keeps selecting a stack file. (Cobra
// cannot have a subcommand's shorthand shadow a global one.)
func rewriteLogsFollow(args []string) []string {
	out := append([]string(nil), args...)
	inLogs := false
	for i := 0; i < len(out); i++ {
		switch {
		case out[i] == "--":
			return out
		case !inLogs && (out[i] == "-f" || out[i] == "--file" || out[i] == "-p" || out[i] == "--namespace" ||
			out[i] == "--var" || out[i] == "--var-file" || out[i] == "--state-dir"):
			i++ // skip the flag's value
		case !inLogs && out[i] == "logs":
			inLogs = true
		case inLogs && out[i] == "-f":
			out[i] = "--follow"
		}
	}
	return out
}

// globals are the flags every subcommand takes.
type globals struct {
	files     []string
	namespace string
	vars      []string
	varFiles  []string
	stateDir  string
}

func (g *globals) options() stack.Options {
	return stack.Options{Files: g.files, Namespace: g.namespace, Vars: g.vars, VarFiles: g.varFiles, StateDir: g.stateDir}
}

func newRoot(s Streams) *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:           "stack",
		Short:         "Declarative microVM stacks: real kernels, real networks, one file",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(s.In)
	root.SetOut(s.Out)
	root.SetErr(s.Err)
	f := root.PersistentFlags()
	f.StringArrayVarP(&g.files, "file", "f", nil, "stack file (repeatable; default stack.hcl)")
	f.StringVarP(&g.namespace, "namespace", "p", "", "namespace (default: the stack block's label, else the directory name)")
	f.StringArrayVar(&g.vars, "var", nil, "set a variable: NAME=VALUE (repeatable)")
	f.StringArrayVar(&g.varFiles, "var-file", nil, "read variable values from an HCL file (repeatable)")
	f.StringVar(&g.stateDir, "state-dir", "", "state directory (default $STACK_STATE_DIR, else $XDG_STATE_HOME/stack)")
	root.AddCommand(
		newValidateCmd(g, s),
		newFmtCmd(g, s),
		newPlanCmd(g, s),
		newExportCmd(g, s),
		newUpCmd(g, s),
		newDownCmd(g, s),
		newPsCmd(g, s),
		newLsCmd(g, s),
		newLogsCmd(g, s),
		newConsoleCmd(g, s),
		newExecCmd(g, s),
		newStopCmd(g, s),
		newStartCmd(g, s),
		newCacheCmd(g, s),
		newPullCmd(g, s),
		newSnapshotCmd(g, s),
		newGraphCmd(g, s),
		newRestartCmd(g, s),
		newKillCmd(g, s),
		newPauseCmd(g, s),
		newUnpauseCmd(g, s),
		newCpCmd(g, s),
		newStatsCmd(g, s),
	)
	addVMCompletion(root, g)
	return root
}

// colorEnabled reports whether w gets colour: only a terminal, and never
// with NO_COLOR set (https://no-color.org).
func colorEnabled(w io.Writer) bool {
	if _, ok := os.LookupEnv("NO_COLOR"); ok {
		return false
	}
	return isTerminal(w)
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// termWidth is the width of w for wrapping diagnostics (0 when not a TTY).
func termWidth(w io.Writer) uint {
	if f, ok := w.(*os.File); ok {
		if wd, _, err := term.GetSize(int(f.Fd())); err == nil && wd > 0 {
			return uint(wd)
		}
	}
	return 0
}
