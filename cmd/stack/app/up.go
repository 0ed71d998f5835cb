package app

import (
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack"
	"github.com/stackvm/stack/internal/termsafe"
)

func newUpCmd(g *globals, s Streams) *cobra.Command {
	var (
		planFile    string
		noWait      bool
		timeout     time.Duration
		lockTimeout time.Duration
		progress    string
	)
	cmd := &cobra.Command{
		Use:   "up [VM...]",
		Short: "Create or update the stack's VMs and networks (or the VMs named and what they need), and wait until they are ready",
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := load(g, s)
			if err != nil {
				return err
			}
			opts := stack.UpOptions{Targets: args, NoWait: noWait, Timeout: timeout, LockTimeout: lockTimeout,
				OnLockWait: func() {
					fmt.Fprintf(s.Err, "Waiting for another stack command on namespace %q to finish (up to %s)...\n", p.Stack.Namespace, lockTimeout)
				}}
			if planFile != "" {
				if opts.SavedPlan, err = os.ReadFile(planFile); err != nil {
					return fmt.Errorf("read plan: %w", err)
				}
			}
			pr, err := newProgress(s, progress)
			if err != nil {
				return err
			}
			opts.Progress = pr.event
			plan, err := p.Up(cmd.Context(), opts)
			pr.finish()
			if err != nil {
				return reportApplyError(s, err)
			}
			defer sayOpenPorts(s.Err, p)
			if !plan.HasChanges() {
				pr.say("Nothing to do: namespace %q already matches the stack files.", p.Stack.Namespace)
				return nil
			}
			c := plan.Counts()
			started := ""
			if c.Start > 0 {
				started = fmt.Sprintf("%d started, ", c.Start)
			}
			pr.say("Namespace %q is up: %d created, %s%d updated, %d replaced, %d deleted.", p.Stack.Namespace, c.Create, started, c.Update, c.Replace, c.Delete)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&planFile, "plan", "", "apply the plan saved in this file by stack plan --out (refused when stale)")
	f.BoolVar(&noWait, "no-wait", false, "return once the VMs are started, without waiting for them to be ready")
	f.DurationVar(&timeout, "timeout", 0, "give up after this long (default: the VMs' own ready timeouts)")
	f.DurationVar(&lockTimeout, "lock-timeout", 5*time.Minute, "how long to wait for another command on the namespace")
	f.StringVar(&progress, "progress", "auto", "progress output: auto, tty, plain or json")
	return cmd
}

// sayOpenPorts prints a line for each published port that other hosts can
// reach (host_ip other than a loopback address), after up's last line, so
// that opening one is never silent. It goes to stderr with up's messages,
// in every progress mode.
func sayOpenPorts(w io.Writer, p *stack.Project) {
	for _, vm := range p.Stack.VMs {
		for _, pb := range vm.Publish {
			pt := stack.Port{HostPort: pb.HostPort, GuestPort: pb.GuestPort, Protocol: pb.Protocol, HostIP: pb.HostIP}
			if pt.OpenToOtherHosts() {
				fmt.Fprintf(w, "Port %d/%s of %s is open to other hosts: it listens on %s (host_ip).\n", pt.HostPort, pt.Protocol, vm.Address, pt.Host())
			}
		}
	}
}

// reportApplyError prints each failed VM's reason and console tail, the
// guest's control characters escaped.
func reportApplyError(s Streams, err error) error {
	var vmErrs []*stack.VMError
	collectVMErrors(err, &vmErrs)
	for _, ve := range vmErrs {
		fmt.Fprintf(s.Err, "\n%s failed: %s\n", ve.Address, termsafe.String(ve.Reason))
		if len(ve.ConsoleTail) > 0 {
			fmt.Fprintf(s.Err, "Last %d lines of its console (%s):\n", len(ve.ConsoleTail), ve.ConsoleLog)
			for _, l := range ve.ConsoleTail {
				fmt.Fprintf(s.Err, "  | %s\n", termsafe.String(l))
			}
		}
	}
	return err
}

func collectVMErrors(err error, out *[]*stack.VMError) {
	var ve *stack.VMError
	if errors.As(err, &ve) {
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				collectVMErrors(e, out)
			}
			return
		}
		*out = append(*out, ve)
	}
}
