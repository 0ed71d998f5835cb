package app

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack"
)

func newPauseCmd(g *globals, s Streams) *cobra.Command {
	return newControlCmd(g, s, "pause [VM...]", "Pause VMs: stop their CPUs, keeping their memory, until unpause", "Paused",
		func(ctx context.Context, p *stack.Project, names []string, opts stack.ControlOptions) error {
			return p.Pause(ctx, names, opts)
		})
}

// newControlCmd makes a command that acts on the VMs named (none: all of
// them) at once and says what it did: pause, unpause, kill.
func newControlCmd(g *globals, s Streams, use, short, did string,
	act func(context.Context, *stack.Project, []string, stack.ControlOptions) error) *cobra.Command {
	var lockTimeout time.Duration
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := project(g, s)
			if err != nil {
				return err
			}
			if err := act(cmd.Context(), p, args, stack.ControlOptions{LockTimeout: lockTimeout, OnLockWait: lockWaiter(s, p)}); err != nil {
				return err
			}
			fmt.Fprintln(s.Err, done(did, p, args))
			return nil
		},
	}
	cmd.Flags().DurationVar(&lockTimeout, "lock-timeout", 5*time.Minute, "how long to wait for another command on the namespace")
	return cmd
}

// lockWaiter tells the user that the command waits for another one.
func lockWaiter(s Streams, p *stack.Project) func() {
	return func() {
		fmt.Fprintf(s.Err, "Waiting for another stack command on namespace %q to finish...\n", p.Stack.Namespace)
	}
}

// done is what a command that acted on the VMs named says: "Paused web-0,
// db." or "Paused every VM of namespace "shop".".
func done(did string, p *stack.Project, names []string) string {
	if len(names) == 0 {
		return fmt.Sprintf("%s every VM of namespace %q.", did, p.Stack.Namespace)
	}
	return fmt.Sprintf("%s %s.", did, strings.Join(names, ", "))
}
