package stack

import (
	"context"
	"fmt"

	"github.com/stackvm/stack/export"
)

// ExportKubeVirt translates the stack into KubeVirt manifests (see package
// export). VMs keep the addresses and MACs the recorded state gives them,
// or those a first `up` would give; it changes nothing.
func (p *Project) ExportKubeVirt(ctx context.Context, opts export.KubeVirtOptions) (*export.Result, error) {
	if p.Stack == nil {
		return nil, fmt.Errorf("export: the stack files did not load")
	}
	plan, _, err := p.Plan(ctx, PlanOptions{})
	if err != nil {
		return nil, fmt.Errorf("export: %w", err)
	}
	return export.KubeVirt(export.Input{Stack: p.Stack, NICs: plan.NICs}, opts)
}
