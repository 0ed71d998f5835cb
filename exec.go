package stack

import (
	"context"
	"fmt"
	"io"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/supervisor"
)

// ExecOptions tune Exec.
type ExecOptions struct {
	Env    map[string]string
	Stdin  []byte
	Stdout io.Writer
	Stderr io.Writer
}

// Exec runs argv in the running VM named vm (initramfs mode: through the
// guest init's agent channel) and returns its exit code. Output is copied
// to opts.Stdout and opts.Stderr as it comes.
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
	c, err := supervisor.Dial(ctx, filenames.RuntimeRoot(), p.Stack.Namespace)
	if err != nil {
		return -1, fmt.Errorf("exec in %s: %w; run `stack up`", vm, err)
	}
	if opts.Stdout == nil {
		opts.Stdout = io.Discard
	}
	if opts.Stderr == nil {
		opts.Stderr = io.Discard
	}
	return c.Exec(ctx, address, supervisor.ExecSpec{Argv: argv, Env: opts.Env, Stdin: opts.Stdin}, opts.Stdout, opts.Stderr)
}
