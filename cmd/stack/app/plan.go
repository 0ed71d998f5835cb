package app

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"

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
		Use:   "plan [VM...]",
		Short: "Show what `stack up` would do (for the VMs named and what they need); changes nothing",
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := load(g, s)
			if err != nil {
				return err
			}
			plan, _, err := p.Plan(cmd.Context(), stack.PlanOptions{Destroy: destroy, DeleteVolumes: volumes, Targets: args})
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
				enc.SetEscapeHTML(false) // show `a >> f && b` as written
				if err := enc.Encode(plan); err != nil {
					return err
				}
			} else {
				printPlan(s.Out, plan)
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
	f.StringVar(&out, "out", "", "save the plan to this file, for stack up --plan")
	f.BoolVar(&asJSON, "json", false, "print the plan as JSON")
	f.BoolVar(&detailed, "detailed-exitcode", false, "exit 0 when there are no changes, 2 when there are, 1 on error")
	f.BoolVar(&destroy, "destroy", false, "plan the deletion of everything in the namespace (what down does)")
	f.BoolVar(&volumes, "volumes", false, "with --destroy or for orphans: plan volumes for deletion too")
	return cmd
}

// printPlan writes the plan: plain text, coloured like Terraform's plans on
// a terminal.
func printPlan(w io.Writer, plan *planner.Plan) {
	if !colorEnabled(w) {
		fmt.Fprint(w, plan.String())
		return
	}
	fmt.Fprint(w, styledPlan(plan, lipgloss.NewRenderer(w, termenv.WithProfile(termenv.ANSI))))
}

// styledPlan is plan.String() with its parts coloured by r: comments grey,
// each action's header in the colour of its kind.
func styledPlan(plan *planner.Plan, r *lipgloss.Renderer) string {
	fg := func(c string) lipgloss.Style { return r.NewStyle().Foreground(lipgloss.Color(c)) }
	comment := fg("8")
	action := map[planner.Kind]lipgloss.Style{planner.Create: fg("2"), planner.Start: fg("2"),
		planner.Update: fg("3"), planner.Replace: fg("5"), planner.Delete: fg("1")}
	var b strings.Builder
	for _, line := range plan.Lines() {
		for _, seg := range line {
			text := seg.Text
			switch seg.Part {
			case planner.PartComment, planner.PartNote:
				text = comment.Render(text)
			case planner.PartHeader:
				if st, ok := action[seg.Kind]; ok {
					text = st.Render(text)
				}
			}
			b.WriteString(text)
		}
		b.WriteByte('\n')
	}
	return b.String()
}
