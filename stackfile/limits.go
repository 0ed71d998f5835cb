package stackfile

import (
	"runtime"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
)

// MinCPULimit is the smallest cpu_limit: the kernel's smallest CFS quota
// (1 ms) per the 100 ms period stack uses.
const MinCPULimit = 0.01

// loadCPULimit reads cpu_limit: host CPUs' worth of time the VMM may use,
// as compose's cpus; more than the host has would not limit anything.
func (l *loader) loadCPULimit(vm *VM, a *hcl.Attribute, ctx *hcl.EvalContext, sc scope) {
	if a == nil {
		return
	}
	v, ok := l.eval(a, ctx, cty.Number, sc)
	if !ok {
		return
	}
	f, _ := v.AsBigFloat().Float64()
	if host := runtime.NumCPU(); f < MinCPULimit || f > float64(host) {
		l.errorf(a.Expr.Range(), "cpu_limit out of range", "cpu_limit is host CPUs' worth of time for the VMM, from %g to this host's %d CPUs; got %s.", MinCPULimit, host, v.AsBigFloat().Text('g', 10))
		return
	}
	vm.CPULimit = f
}
