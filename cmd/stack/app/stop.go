package app

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack"
)

func newStopCmd(g *globals, s Streams) *cobra.Command {
	var (
		timeout     time.Duration
		lockTimeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "stop [VM...]",
		Short: "Stop VMs and keep them (disks, addresses, logs) for start or the next up",
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := project(g, s)
			if err != nil {
				return err
			}
			err = p.Stop(cmd.Context(), args, stack.StopOptions{
				Timeout: timeout, LockTimeout: lockTimeout,
				OnLockWait: lockWaiter(s, p),
			})
			if err != nil {
				return err
			}
			if len(args) == 0 {
				fmt.Fprintf(s.Err, "Stopped every VM of namespace %q.\n", p.Stack.Namespace)
			}
			for _, n := range args {
				fmt.Fprintf(s.Err, "Stopped %s.\n", n)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVarP(&timeout, "timeout", "t", 30*time.Second, "graceful stop timeout per VM, after which it is forced")
	f.DurationVar(&lockTimeout, "lock-timeout", 5*time.Minute, "how long to wait for another command on the namespace")
	return cmd
}
