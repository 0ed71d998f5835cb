package stack

import (
	"context"
	"errors"
	"fmt"
	"io"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/supervisor"
)

// ExecOptions tune Exec.
type ExecOptions struct {
	Env map[string]string
	// Stdin, when set, is streamed to the command as it is read, and its
	// end closes the command's standard input (with TTY, the end is not
	// passed on: a terminal has none). Nil: the command's input is empty.
	// Exec may return before a blocked Read does.
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer // with TTY, the terminal merges stderr into Stdout
	// TTY runs the command on a pseudo-terminal in the guest.
	TTY *ExecTTY
}

// ExecTTY is the terminal of an exec.
type ExecTTY struct {
	Term string     // $TERM for the command
	Size WindowSize // the initial size
	// Resize delivers later sizes (on SIGWINCH); nil for none.
	Resize <-chan WindowSize
}

// WindowSize is a terminal's size in characters.
type WindowSize = supervisor.WindowSize

// Exec runs argv in the running VM named vm and returns its exit code
// (128+n for a command killed by signal n). Initramfs VMs run it through
// the guest init's agent channel, with the workload's environment;
// cloud-init VMs over SSH as root, with the key stack installed through the
// seed and the host key it pinned there. Output is copied to opts.Stdout
// and opts.Stderr as it comes.
func (p *Project) Exec(ctx context.Context, vm string, argv []string, opts ExecOptions) (int, error) {
	if len(argv) == 0 {
		return -1, fmt.Errorf("exec: no command")
	}
	st, err := p.Store().Read()
	if err != nil {
		return -1, err
	}
	address := ""
	for addr, v := range st.VMs {
		if v.Name == vm {
			address = addr
		}
	}
	if address == "" {
		return -1, fmt.Errorf("exec: no VM named %q in namespace %q", vm, p.Stack.Namespace)
	}
	c, err := supervisor.Dial(ctx, filenames.RuntimeRoot(), p.StateDir, p.Stack.Namespace)
	if errors.Is(err, supervisor.ErrNotRunning) {
		return -1, fmt.Errorf("exec in %s: %w; run `stack up`", vm, err)
	}
	if err != nil {
		return -1, fmt.Errorf("exec in %s: %w", vm, err)
	}
	if opts.Stdout == nil {
		opts.Stdout = io.Discard
	}
	if opts.Stderr == nil {
		opts.Stderr = io.Discard
	}
	spec := supervisor.ExecSpec{Argv: argv, Env: opts.Env, Stdin: opts.Stdin != nil}
	stdio := supervisor.ExecIO{Stdin: opts.Stdin, Stdout: opts.Stdout, Stderr: opts.Stderr}
	if t := opts.TTY; t != nil {
		spec.TTY = &supervisor.ExecTTY{Term: t.Term, WindowSize: t.Size}
		stdio.Resize = t.Resize
	}
	return c.Exec(ctx, address, spec, stdio)
}
