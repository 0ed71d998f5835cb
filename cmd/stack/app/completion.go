package app

import (
	"strings"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack"
)

// vmArgs are the commands whose arguments are VM names, with how many they
// take (0: any number). Their completion offers the namespace's VMs.
var vmArgs = map[string]int{
	"up": 0, "plan": 0, "down": 0, "stop": 0, "start": 0, "logs": 0,
	"console": 1, "exec": 1, "restart": 0, "kill": 0, "pause": 0, "unpause": 0,
}

// addVMCompletion sets the completion of VM names on the commands of
// vmArgs.
func addVMCompletion(root *cobra.Command, g *globals) {
	for _, c := range root.Commands() {
		if max, ok := vmArgs[c.Name()]; ok {
			c.ValidArgsFunction = completeVMs(g, max)
		}
	}
}

// completeVMs offers the VM names that start with what is typed and are
// not given yet, and no file names: up to max arguments (0: any number).
func completeVMs(g *globals, max int) cobra.CompletionFunc {
	return func(_ *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
		if max > 0 && len(args) >= max {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		given := map[string]bool{}
		for _, a := range args {
			given[a] = true
		}
		var out []string
		for _, n := range vmNames(g) {
			if !given[n] && strings.HasPrefix(n, toComplete) {
				out = append(out, n)
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// vmNames are the names a command takes for the namespace the flags select,
// quietly (completion prints nothing else): the VMs its state records, in
// address order, then those of the stack files that it does not (which
// `up` and `plan` take), then the labels of blocks of several instances.
func vmNames(g *globals) []string {
	p, diags := stack.Load(g.options())
	if diags.HasErrors() {
		if g.namespace == "" {
			return nil
		}
		var err error
		if p, err = stack.ForNamespace(g.namespace, g.stateDir); err != nil {
			return nil
		}
	}
	seen := map[string]bool{}
	var out []string
	add := func(n string) {
		if n != "" && !seen[n] {
			seen[n] = true
			out = append(out, n)
		}
	}
	vms, _ := p.VMs() // no state: no names from it
	var blocks []string
	for _, v := range vms {
		add(v.Name)
		if i := strings.IndexByte(v.Address, '['); i >= 0 {
			blocks = append(blocks, strings.TrimPrefix(v.Address[:i], "vm."))
		}
	}
	for _, vm := range p.Stack.VMs {
		add(vm.Name)
		if vm.Block != vm.Name {
			blocks = append(blocks, vm.Block)
		}
	}
	for _, b := range blocks {
		add(b)
	}
	return out
}
