package app

import (
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack"
)

func newExecCmd(g *globals, s Streams) *cobra.Command {
	var (
		interactive bool
		env         []string
	)
	cmd := &cobra.Command{
		Use:   "exec VM -- COMMAND [ARG...]",
		Short: "Run a command in a running VM; its exit code becomes stack's",
		Args:  cobra.MinimumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := project(g, s)
			if err != nil {
				return err
			}
			opts := stack.ExecOptions{Stdout: s.Out, Stderr: s.Err, Env: map[string]string{}}
			for _, kv := range env {
				k, v, ok := strings.Cut(kv, "=")
				if !ok {
					return fmt.Errorf("--env %q: want NAME=VALUE", kv)
				}
				opts.Env[k] = v
			}
			if interactive {
				if opts.Stdin, err = io.ReadAll(s.In); err != nil {
					return fmt.Errorf("read stdin: %w", err)
				}
			}
			argv := args[1:]
			if len(argv) > 0 && argv[0] == "--" { // kept by non-interspersed parsing
				argv = argv[1:]
			}
			if len(argv) == 0 {
				return fmt.Errorf("exec %s: no command (stack exec VM -- COMMAND [ARG...])", args[0])
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
	f.BoolVarP(&interactive, "interactive", "i", false, "pass standard input to the command (read to its end first)")
	f.StringArrayVarP(&env, "env", "e", nil, "set an environment variable: NAME=VALUE (repeatable)")
	f.SetInterspersed(false)
	return cmd
}
