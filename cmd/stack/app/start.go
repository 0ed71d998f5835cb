package app

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack"
)

func newStartCmd(g *globals, s Streams) *cobra.Command {
	var (
		noWait      bool
		lockTimeout time.Duration
		progress    string
	)
	cmd := &cobra.Command{
		Use:   "start [VM...]",
		Short: "Boot stopped VMs again, with their disks, and wait until they are ready",
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := project(g, s)
			if err != nil {
				return err
			}
			pr, err := newProgress(s, progress)
			if err != nil {
				return err
			}
			err = p.Start(cmd.Context(), args, stack.StartOptions{
				NoWait: noWait, LockTimeout: lockTimeout, Progress: pr.event,
				OnLockWait: lockWaiter(s, p),
			})
			pr.finish()
			if err != nil {
				return reportApplyError(s, err)
			}
			if len(args) == 0 {
				pr.say("Started every VM of namespace %q.", p.Stack.Namespace)
			}
			for _, n := range args {
				pr.say("Started %s.", n)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&noWait, "no-wait", false, "return once the VMs are started, without waiting for them to be ready")
	f.DurationVar(&lockTimeout, "lock-timeout", 5*time.Minute, "how long to wait for another command on the namespace")
	f.StringVar(&progress, "progress", "auto", "progress output: auto, tty, plain or json")
	return cmd
}
