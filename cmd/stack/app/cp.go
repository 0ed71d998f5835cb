package app

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"
)

func newCpCmd(g *globals, s Streams) *cobra.Command {
	return &cobra.Command{
		Use:   "cp SRC DST",
		Short: "Copy files or directories between the host and a VM (VM:PATH on one side)",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			srcVM, src := splitVMPath(args[0])
			dstVM, dst := splitVMPath(args[1])
			switch {
			case srcVM != "" && dstVM != "":
				return fmt.Errorf("cp: copying between two VMs is not supported; copy through the host")
			case srcVM == "" && dstVM == "":
				return fmt.Errorf("cp: one of SRC and DST must be VM:PATH")
			case (srcVM != "" && src == "") || (dstVM != "" && dst == ""):
				return fmt.Errorf("cp: VM:PATH needs a path")
			}
			p, err := project(g, s)
			if err != nil {
				return err
			}
			if dstVM != "" {
				return p.CopyTo(cmd.Context(), src, dstVM, dst)
			}
			return p.CopyFrom(cmd.Context(), srcVM, src, dst)
		},
	}
}

// splitVMPath splits VM:PATH; a host path (no colon, or a slash before it,
// as in ./a:b) has no VM.
func splitVMPath(arg string) (vm, path string) {
	i := strings.IndexByte(arg, ':')
	if i <= 0 || strings.ContainsRune(arg[:i], '/') {
		return "", arg
	}
	return arg[:i], arg[i+1:]
}
