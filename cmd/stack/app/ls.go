package app

import (
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack"
	"github.com/stackvm/stack/state"
)

type nsSummary struct {
	Namespace string `json:"namespace"`
	VMs       int    `json:"vms"`
	Ready     int    `json:"ready"`
	Failed    int    `json:"failed"`
	Networks  int    `json:"networks"`
	Volumes   int    `json:"volumes"`
}

func newLsCmd(g *globals, s Streams) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the namespaces that have state on this host",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			root := g.options().StateDir
			names, err := stack.Namespaces(root)
			if err != nil {
				return err
			}
			list := []nsSummary{}
			for _, ns := range names {
				st, err := state.Open(stack.StateRoot(root), ns).Read()
				if err != nil {
					return err
				}
				sum := nsSummary{Namespace: ns, VMs: len(st.VMs), Networks: len(st.Networks), Volumes: len(st.Volumes)}
				for _, vm := range st.VMs {
					switch vm.Status {
					case state.StatusReady:
						sum.Ready++
					case state.StatusFailed:
						sum.Failed++
					}
				}
				list = append(list, sum)
			}
			if asJSON {
				enc := json.NewEncoder(s.Out)
				enc.SetIndent("", "  ")
				return enc.Encode(list)
			}
			tw := tabwriter.NewWriter(s.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAMESPACE\tVMS\tREADY\tFAILED\tNETWORKS\tVOLUMES")
			for _, n := range list {
				fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d\n", n.Namespace, n.VMs, n.Ready, n.Failed, n.Networks, n.Volumes)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the list as JSON")
	return cmd
}
