package app

import (
	"cmp"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack"
)

func newSnapshotCmd(g *globals, s Streams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Save the running namespace, restore it, list and remove snapshots",
	}
	var lockTimeout time.Duration

	save := &cobra.Command{
		Use:   "save NAME",
		Short: "Pause the namespace's VMs together, save them with their disks and volumes, and let them run on",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := project(g, s)
			if err != nil {
				return err
			}
			fmt.Fprintf(s.Err, "Saving namespace %q as snapshot %q...\n", p.Stack.Namespace, args[0])
			snap, err := p.SaveSnapshot(cmd.Context(), args[0], stack.SnapshotOptions{LockTimeout: lockTimeout, OnLockWait: lockWaiter(s, p)})
			if err != nil {
				return err
			}
			fmt.Fprintf(s.Out, "Saved snapshot %q: %d VMs (%s), %s on disk; the VMs were paused for %s.\n",
				snap.Name, len(snap.VMs), strings.Join(snap.VMs, ", "), mib(snap.Bytes), snap.Paused.Round(time.Millisecond))
			return nil
		},
	}

	var into, progress string
	restore := &cobra.Command{
		Use:   "restore [NS/]NAME",
		Short: "Bring the namespace (or, with --into, another one) to a snapshot's state",
		Long: `Restore stops what runs in the target namespace and restores the snapshot's
networks and VMs, each with its memory, devices and disks as saved; they run
again at one moment. With --into NS the snapshot is restored into namespace NS
as an independent copy: its own networks, the same guest addresses, and its
published ports moved to free host ports (ps shows them). NS/NAME names
namespace NS's snapshot NAME: -p other snapshot restore NS/NAME is the same
as -p NS snapshot restore NAME --into other.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := project(g, s)
			if err != nil {
				return err
			}
			target, name := p, args[0]
			opts := stack.RestoreOptions{LockTimeout: lockTimeout}
			if ns, n, ok := strings.Cut(name, "/"); ok {
				// NS/NAME: namespace NS's snapshot, restored into this one.
				opts.From, name = ns, n
			}
			if into != "" && into != p.Stack.Namespace {
				if target, err = stack.ForNamespace(into, g.stateDir); err != nil {
					return err
				}
				opts.From = cmp.Or(opts.From, p.Stack.Namespace)
			}
			pr, err := newProgress(s, progress)
			if err != nil {
				return err
			}
			opts.Progress, opts.OnLockWait = pr.event, lockWaiter(s, target)
			t0 := time.Now()
			snap, err := target.RestoreSnapshot(cmd.Context(), name, opts)
			pr.finish()
			if err != nil {
				return err
			}
			pr.say("Restored snapshot %q into namespace %q in %s: %s.", snap.Name, target.Stack.Namespace,
				time.Since(t0).Round(time.Millisecond), strings.Join(snap.VMs, ", "))
			return nil
		},
	}
	restore.Flags().StringVar(&into, "into", "", "restore into this namespace, as an independent copy")
	restore.Flags().StringVar(&progress, "progress", "auto", "progress output: auto, tty, plain or json")

	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the namespace's snapshots with what they hold and their size",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := project(g, s)
			if err != nil {
				return err
			}
			list, err := p.Snapshots()
			if err != nil {
				return err
			}
			if asJSON {
				if list == nil {
					list = []*stack.Snapshot{}
				}
				enc := json.NewEncoder(s.Out)
				enc.SetIndent("", "  ")
				return enc.Encode(list)
			}
			tw := tabwriter.NewWriter(s.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SNAPSHOT\tCREATED\tVMS\tNETWORKS\tVOLUMES\tSIZE")
			for _, sn := range list {
				fmt.Fprintf(tw, "%s\t%s ago\t%s\t%s\t%s\t%s\n", sn.Name, time.Since(sn.Created).Round(time.Second),
					orNone(sn.VMs), orNone(sn.Networks), orNone(sn.Volumes), mib(sn.Bytes))
			}
			return tw.Flush()
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print the snapshots as JSON")

	rm := &cobra.Command{
		Use:   "rm NAME...",
		Short: "Remove snapshots",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := project(g, s)
			if err != nil {
				return err
			}
			for _, name := range args {
				if err := p.RemoveSnapshot(name); err != nil {
					return err
				}
				fmt.Fprintf(s.Out, "Removed snapshot %q.\n", name)
			}
			return nil
		},
	}
	for _, c := range []*cobra.Command{save, restore} {
		c.Flags().DurationVar(&lockTimeout, "lock-timeout", 5*time.Minute, "how long to wait for another command on the namespace")
	}
	cmd.AddCommand(save, restore, ls, rm)
	return cmd
}

func orNone(names []string) string {
	if len(names) == 0 {
		return "-"
	}
	return strings.Join(names, ",")
}
