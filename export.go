package stack

import (
	"context"
	"fmt"

	"github.com/stackvm/stack/export"
)

// ExportKubeVirt translates the stack into KubeVirt manifests (see package
// export). It changes nothing.
func (p *Project) ExportKubeVirt(ctx context.Context, opts export.KubeVirtOptions) (*export.Result, error) {
	in, err := p.exportInput(ctx)
	if err != nil {
		return nil, err
	}
	return export.KubeVirt(in, opts)
}

// ExportNomad translates the stack into a Nomad job (see package export).
// It changes nothing.
func (p *Project) ExportNomad(ctx context.Context, opts export.NomadOptions) (*export.Result, error) {
	in, err := p.exportInput(ctx)
	if err != nil {
		return nil, err
	}
	return export.Nomad(in, opts)
}

// exportInput is the stack with its plan's NICs: VMs keep the addresses and
// MACs the recorded state gives them, or those a first `up` would give.
func (p *Project) exportInput(ctx context.Context) (export.Input, error) {
	if p.Stack == nil {
		return export.Input{}, fmt.Errorf("export: the stack files did not load")
	}
	plan, _, err := p.Plan(ctx, PlanOptions{})
	if err != nil {
		return export.Input{}, fmt.Errorf("export: %w", err)
	}
	return export.Input{Stack: p.Stack, NICs: plan.NICs}, nil
}

// WriteKernelImage writes the built-in guest image's kernel and initramfs
// as the OCI image layout that exported kernelBoot VMs name (see
// export.WriteKernelImage), building the guest image first if needed.
func WriteKernelImage(ctx context.Context, dir, tag string) (digest string, err error) {
	kernel, initramfs, err := defaultImage(ctx)
	if err != nil {
		return "", err
	}
	return export.WriteKernelImage(dir, tag, kernel, initramfs)
}
