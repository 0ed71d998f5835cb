package app

import (
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack"
)

func newValidateCmd(g *globals, s Streams) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "validate",
		Short: "Check the stack files; exit 1 with diagnostics when they are not valid",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, diags := stack.Load(g.options())
			if asJSON {
				enc := json.NewEncoder(s.Out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(map[string]any{"valid": !diags.HasErrors(), "diagnostics": toJSONDiagnostics(diags)}); err != nil {
					return err
				}
			} else if len(diags) > 0 {
				writeDiagnostics(s.Err, p, diags)
			}
			if diags.HasErrors() {
				return errReported
			}
			if !asJSON {
				fmt.Fprintf(s.Out, "The stack files are valid (namespace %q: %s, %s, %s).\n", p.Stack.Namespace,
					plural(len(p.Stack.VMs), "VM"), plural(len(p.Stack.Networks), "network"), plural(len(p.Stack.Volumes), "volume"))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

// plural is "1 VM", "2 VMs".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
