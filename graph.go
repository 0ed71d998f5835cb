package stack

import (
	"fmt"

	"github.com/stackvm/stack/engine"
	"github.com/stackvm/stack/planner"
)

// Graph returns the stack's resources and their dependencies: the graph of
// the plan that would create the whole stack from nothing (one node per
// network, volume and VM, and a barrier node per VM block that others
// depend on). It reads no state and changes nothing.
func (p *Project) Graph() ([]*planner.Node, error) {
	if p.Stack == nil {
		return nil, fmt.Errorf("graph: the stack files did not load")
	}
	return engine.Graph(p.Stack)
}
