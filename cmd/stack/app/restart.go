package app

import (
	"time"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack"
)

func newRestartCmd(g *globals, s Streams) *cobra.Command {
	var (
		timeout     time.Duration
		noWait      bool
		lockTimeout time.Duration
		progress    string
	)
	cmd := &cobra.Command{
		Use:   "restart [VM...]",
		Short: "Stop VMs and boot them again, and wait until they are ready",
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := project(g, s)
			if err != nil {
				return err
			}
			pr, err := newProgress(s, progress)
			if err != nil {
				return err
			}
			err = p.Restart(cmd.Context(), args, stack.RestartOptions{Timeout: timeout,
				StartOptions: stack.StartOptions{NoWait: noWait, LockTimeout: lockTimeout, Progress: pr.event,
					OnLockWait: lockWaiter(s, p)}})
			pr.finish()
			if err != nil {
				return reportApplyError(s, err)
			}
			pr.say("%s", done("Restarted", p, args))
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVarP(&timeout, "timeout", "t", 30*time.Second, "graceful stop timeout per VM, after which it is forced")
	f.BoolVar(&noWait, "no-wait", false, "return once the VMs are started, without waiting for them to be ready")
	f.DurationVar(&lockTimeout, "lock-timeout", 5*time.Minute, "how long to wait for another command on the namespace")
	f.StringVar(&progress, "progress", "auto", "progress output: auto, tty, plain or json")
	return cmd
}
