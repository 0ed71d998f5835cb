package app

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/charmbracelet/lipgloss"
	"github.com/muesli/termenv"
	"github.com/spf13/cobra"

	"github.com/stackvm/stack"
	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/state"
)

func newPlanCmd(g *globals, s Streams) *cobra.Command {
	var (
		out              string
		asJSON, detailed bool
		destroy, volumes bool
	)
	cmd := &cobra.Command{
		Use:   "plan",
		Short: "Show what `stack up` would do; changes nothing",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			p, err := load(g, s)
			if err != nil {
				return err
			}
			plan, _, err := p.Plan(cmd.Context(), stack.PlanOptions{Destroy: destroy, DeleteVolumes: volumes})
			if err != nil {
				return err
			}
			if out != "" {
				data, err := plan.Save(p.Stack)
				if err != nil {
					return err
				}
				if err := state.WriteFileAtomic(out, data); err != nil {
					return fmt.Errorf("write plan %s: %w", out, err)
				}
			}
			if asJSON {
				enc := json.NewEncoder(s.Out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(plan); err != nil {
					return err
				}
			} else {
				fmt.Fprint(s.Out, plan.Render(planStyles(s)))
				if out != "" {
					fmt.Fprintf(s.Out, "\nSaved the plan to %s. Apply exactly this plan with:\n    stack up --plan %s\n", out, out)
				}
			}
			if detailed && plan.HasChanges() {
				return &ExitError{Code: 2}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&out, "out", "", "save the plan to FILE for `stack up --plan FILE`")
	f.BoolVar(&asJSON, "json", false, "print the plan as JSON")
	f.BoolVar(&detailed, "detailed-exitcode", false, "exit 0 when there are no changes, 2 when there are, 1 on error")
	f.BoolVar(&destroy, "destroy", false, "plan the deletion of everything in the namespace (what `down` does)")
	f.BoolVar(&volumes, "volumes", false, "with --destroy or for orphans: plan volumes for deletion too")
	return cmd
}

// planStyles colours the plan like Terraform does, on a terminal only.
func planStyles(s Streams) planner.Styles {
	if !colorEnabled(s.Out) {
		return planner.Styles{}
	}
	r := lipgloss.NewRenderer(s.Out.(*os.File), termenv.WithProfile(termenv.ANSI))
	fg := func(c string) func(string) string {
		st := r.NewStyle().Foreground(lipgloss.Color(c))
		return func(x string) string { return st.Render(x) }
	}
	return planner.Styles{Create: fg("2"), Start: fg("2"), Update: fg("3"), Replace: fg("5"), Delete: fg("1"), Comment: fg("8")}
}
