package app

import (
	"context"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack"
)

func newUnpauseCmd(g *globals, s Streams) *cobra.Command {
	return newControlCmd(g, s, "unpause [VM...]", "Let paused VMs run again", "Unpaused",
		func(ctx context.Context, p *stack.Project, names []string, opts stack.ControlOptions) error {
			return p.Unpause(ctx, names, opts)
		})
}
