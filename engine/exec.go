package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"strings"

	"github.com/stackvm/stack/hypervisor/console"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/supervisor/api"
	"github.com/stackvm/stack/supervisor/client"
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
type WindowSize = api.WindowSize

// Exec runs argv in the running VM named vm and returns its exit code
// (128+n for a command killed by signal n). Initramfs VMs run it through
// the guest init's agent channel, with the workload's environment;
// cloud-init VMs over SSH as root, with the key stack installed through the
// seed and the host key it pinned there. Output is copied to opts.Stdout
// and opts.Stderr as it comes.
func (e *Engine) Exec(ctx context.Context, vm string, argv []string, opts ExecOptions) (int, error) {
	if len(argv) == 0 {
		return -1, fmt.Errorf("exec: no command")
	}
	st, err := e.store.Read()
	if err != nil {
		return -1, err
	}
	rec, err := FindVM(st, vm)
	if err != nil {
		return -1, fmt.Errorf("exec: %w", err)
	}
	sup, err := e.dial(ctx)
	if IsNoSupervisor(err) {
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
	spec := api.ExecSpec{Argv: argv, Env: opts.Env, Stdin: opts.Stdin != nil}
	stdio := client.ExecIO{Stdin: opts.Stdin, Stdout: opts.Stdout, Stderr: opts.Stderr}
	if t := opts.TTY; t != nil {
		spec.TTY = &api.TTY{Term: t.Term, WindowSize: t.Size}
		stdio.Resize = t.Resize
	}
	return sup.Exec(ctx, rec.Address, spec, stdio)
}

// LogOptions tune Logs.
type LogOptions struct {
	// Follow continues with new output (across VM restarts and log
	// rotation) until ctx ends or the reader is closed, like `logs -f`.
	Follow bool
	// Tail starts with the last Tail lines (negative: all of the log).
	Tail int
}

// Logs returns a VM's serial console, one line per line, carriage returns
// dropped: what the log holds now (or its last opts.Tail lines), and with
// opts.Follow what comes after, with no line lost or repeated in between.
func (e *Engine) Logs(ctx context.Context, vm string, opts LogOptions) (io.ReadCloser, error) {
	n := opts.Tail
	if n < 0 {
		n = 1 << 30
	}
	if !opts.Follow {
		lines, err := console.Tail(e.consoleLog(vm), n)
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("logs of %s: %w", vm, err)
		}
		return io.NopCloser(strings.NewReader(joinLines(lines))), nil
	}
	path := e.consoleLog(vm)
	lines, end, err := console.TailFrom(path, n)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("logs of %s: %w", vm, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	go func() {
		_, werr := io.WriteString(pw, joinLines(lines))
		if werr == nil {
			console.Follow(ctx, path, end, func(line string) bool {
				_, werr = io.WriteString(pw, line+"\n")
				return werr == nil
			})
		}
		pw.Close() // the reader sees EOF once ctx ends
	}()
	return &followReader{PipeReader: pr, cancel: cancel}, nil
}

func joinLines(lines []string) string {
	if len(lines) == 0 {
		return ""
	}
	return strings.Join(lines, "\n") + "\n"
}

// followReader stops following when closed.
type followReader struct {
	*io.PipeReader
	cancel context.CancelFunc
}

func (r *followReader) Close() error {
	r.cancel()
	return r.PipeReader.Close()
}

// ConsoleLog is the path of a VM's console log.
func (e *Engine) ConsoleLog(vm string) string { return e.consoleLog(vm) }

// ConsoleSocket is the socket `stack console` attaches to.
func (e *Engine) ConsoleSocket(vm string) string {
	return filepath.Join(filenames.VMRuntime(e.opts.RuntimeRoot, e.opts.Namespace, vm), filenames.ConsoleSocket)
}
