package app

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/stackvm/stack"
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
			var opts stack.CopyOptions
			if isTerminal(s.Err) {
				bar := &copyBar{w: s.Err}
				opts.Progress = bar.update
				defer bar.finish()
			}
			if dstVM != "" {
				return p.CopyTo(cmd.Context(), src, dstVM, dst, opts)
			}
			return p.CopyFrom(cmd.Context(), srcVM, src, dst, opts)
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

// copyBar draws a copy's progress on a terminal, once it is large
// (barFrom bytes), at most every barEvery.
type copyBar struct {
	w     io.Writer
	last  time.Time
	shown bool
}

const (
	barFrom  = 1 << 20
	barEvery = 100 * time.Millisecond
)

func (b *copyBar) update(done, total int64) {
	if done < barFrom || time.Since(b.last) < barEvery {
		return
	}
	b.last, b.shown = time.Now(), true
	fmt.Fprintf(b.w, "\r\x1b[2K%s", barLine(done, total, 30))
}

func (b *copyBar) finish() {
	if b.shown {
		fmt.Fprintln(b.w)
	}
}

// barLine is "Copying [#####.....]  50% 1MiB/2MiB", or "Copying 1MiB" when
// the total is unknown (total < 0).
func barLine(done, total int64, width int) string {
	if total <= 0 {
		return "Copying " + bytesText(uint64(done))
	}
	filled := int(min(done, total) * int64(width) / total)
	return fmt.Sprintf("Copying [%s%s] %3d%% %s/%s", strings.Repeat("#", filled), strings.Repeat(".", width-filled),
		min(done, total)*100/total, bytesText(uint64(done)), bytesText(uint64(total)))
}
