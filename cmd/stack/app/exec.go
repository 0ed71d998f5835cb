package app

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/stackvm/stack"
	"github.com/stackvm/stack/internal/termsafe"
)

// errNotATTY is `exec -t` without a terminal to give the command.
var errNotATTY = errors.New("exec -t: the input device is not a TTY (run from a terminal, or drop -t)")

func newExecCmd(g *globals, s Streams) *cobra.Command {
	var (
		interactive, tty bool
		env              []string
	)
	cmd := &cobra.Command{
		Use:   "exec [-i] [-t] [-e NAME=VALUE] VM -- COMMAND [ARG...]",
		Short: "Run a command in a running VM; its exit code becomes stack's",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts := stack.ExecOptions{Stdout: s.Out, Stderr: s.Err, Env: map[string]string{}}
			for _, kv := range env {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("--env %q: want NAME=VALUE", kv)
				}
				opts.Env[k] = v
			}
			argv := args[1:]
			if len(argv) > 0 && argv[0] == "--" { // kept by non-interspersed parsing
				argv = argv[1:]
			}
			if len(argv) == 0 {
				return fmt.Errorf("exec %s: no command (stack exec VM -- COMMAND [ARG...])", args[0])
			}
			if interactive {
				opts.Stdin = s.In
			}
			if !tty {
				// The user's terminal is not the guest's here: the
				// command's control characters show as escapes there.
				// Pipes and files get its output byte for byte.
				for _, w := range []*io.Writer{&opts.Stdout, &opts.Stderr} {
					if isTerminal(*w) {
						tw := termsafe.NewWriter(*w)
						*w = tw
						defer tw.Flush()
					}
				}
			}
			if tty {
				restore, err := execTerminal(s, interactive, &opts)
				if err != nil {
					return err
				}
				// Every return below passes here, an interrupt too (it
				// cancels the context, which ends Exec).
				defer restore()
			}
			p, err := project(g, s)
			if err != nil {
				return err
			}
			code, err := p.Exec(cmd.Context(), args[0], argv, opts)
			if err != nil {
				return err
			}
			if code != 0 {
				return &ExitError{Code: code}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&interactive, "interactive", "i", false, "pass standard input to the command as it comes")
	f.BoolVarP(&tty, "tty", "t", false, "run the command on a terminal (with -i: an interactive session); needs a terminal on standard input")
	f.StringArrayVarP(&env, "env", "e", nil, "set an environment variable: NAME=VALUE (repeatable)")
	f.SetInterspersed(false)
	return cmd
}

// execTerminal sets up `exec -t`: the command gets a terminal of the size of
// ours, our $TERM, and our size changes; with -i ours goes to raw mode, so
// that every key reaches the command. restore undoes it all.
func execTerminal(s Streams, interactive bool, opts *stack.ExecOptions) (restore func(), err error) {
	f, ok := s.In.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil, errNotATTY
	}
	fd := int(f.Fd())
	size := func() stack.WindowSize {
		w, h, err := term.GetSize(fd)
		if err != nil || w <= 0 || h <= 0 {
			return stack.WindowSize{Rows: 24, Cols: 80}
		}
		return stack.WindowSize{Rows: uint16(min(h, 0xffff)), Cols: uint16(min(w, 0xffff))}
	}
	name := os.Getenv("TERM")
	if name == "" {
		name = "xterm"
	}
	resize := make(chan stack.WindowSize, 1)
	winch := make(chan os.Signal, 1)
	signal.Notify(winch, syscall.SIGWINCH)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case <-done:
				return
			case <-winch:
			}
			select { // only the latest size matters
			case <-resize:
			default:
			}
			resize <- size()
		}
	}()
	opts.TTY = &stack.ExecTTY{Term: name, Size: size(), Resize: resize}
	var old *term.State
	if interactive {
		if old, err = term.MakeRaw(fd); err != nil {
			signal.Stop(winch)
			close(done)
			return nil, fmt.Errorf("put the terminal in raw mode: %w", err)
		}
	}
	return func() {
		signal.Stop(winch)
		close(done)
		if old != nil {
			term.Restore(fd, old)
		}
	}, nil
}
