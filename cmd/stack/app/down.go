package app

import (
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack"
)

// project returns the project a namespace-level command works on: with -p
// and no -f it needs no stack files (down, ps, logs and console work from
// the recorded state).
func project(g *globals, s Streams) (*stack.Project, error) {
	if g.namespace != "" && len(g.files) == 0 {
		return stack.ForNamespace(g.namespace, g.stateDir)
	}
	return load(g, s)
}

func newDownCmd(g *globals, s Streams) *cobra.Command {
	var (
		volumes     bool
		force       bool
		timeout     time.Duration
		lockTimeout time.Duration
		progress    string
	)
	cmd := &cobra.Command{
		Use:   "down [VM...]",
		Short: "Stop and remove the namespace's VMs and networks (volumes too with --volumes), or only the VMs named",
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := project(g, s)
			if err != nil {
				return err
			}
			pr, err := newProgress(s, progress)
			if err != nil {
				return err
			}
			err = p.Down(cmd.Context(), stack.DownOptions{
				Targets: args, Force: force, Volumes: volumes, StopTimeout: timeout, LockTimeout: lockTimeout, Progress: pr.event,
				OnLockWait: lockWaiter(s, p),
			})
			pr.finish()
			if err != nil {
				return err
			}
			if len(args) > 0 {
				pr.say("Removed %s from namespace %q.", strings.Join(args, ", "), p.Stack.Namespace)
				return nil
			}
			pr.say("Namespace %q is down.", p.Stack.Namespace)
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&volumes, "volumes", false, "delete the namespace's volumes too")
	f.BoolVar(&force, "force", false, "without VMs named: take the namespace down even when its state file is corrupt (kept as a backup) or its supervisor does not answer; with VMs named: remove them even when running VMs depend on them")
	f.DurationVar(&timeout, "timeout", 30*time.Second, "graceful stop timeout per VM, after which it is forced")
	f.DurationVar(&lockTimeout, "lock-timeout", 5*time.Minute, "how long to wait for another command on the namespace")
	f.StringVar(&progress, "progress", "auto", "progress output: auto, tty, plain or json")
	return cmd
}
