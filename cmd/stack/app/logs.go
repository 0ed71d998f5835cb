package app

import (
	"fmt"
	"os"
	"strings"
	"sync"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack/hypervisor/console"
)

func newLogsCmd(g *globals, s Streams) *cobra.Command {
	var (
		follow bool
		tail   int
	)
	cmd := &cobra.Command{
		Use:   "logs [VM...]",
		Short: "Print the VMs' serial consoles, each line prefixed with the VM name",
		RunE: func(cmd *cobra.Command, args []string) error {
			p, err := project(g, s)
			if err != nil {
				return err
			}
			names, err := p.VMNames()
			if err != nil {
				return err
			}
			if len(args) > 0 {
				known := map[string]bool{}
				for _, n := range names {
					known[n] = true
				}
				for _, a := range args {
					if !known[a] {
						return fmt.Errorf("no VM named %q in namespace %q (it has: %s)", a, p.Stack.Namespace, strings.Join(names, ", "))
					}
				}
				names = args
			}
			width := 0
			for _, n := range names {
				width = max(width, len(n))
			}
			var mu sync.Mutex
			printLine := func(name, line string) {
				mu.Lock()
				fmt.Fprintf(s.Out, "%-*s | %s\n", width, name, line)
				mu.Unlock()
			}
			var wg sync.WaitGroup
			for _, n := range names {
				path := p.ConsoleLog(n)
				lines, err := console.Tail(path, tailCount(tail))
				if err != nil && !os.IsNotExist(err) {
					return err
				}
				for _, l := range lines {
					printLine(n, l)
				}
				if follow {
					wg.Add(1)
					go func() {
						defer wg.Done()
						console.Follow(cmd.Context(), path, -1, func(l string) bool { printLine(n, l); return true })
					}()
				}
			}
			wg.Wait()
			return nil
		},
	}
	cmd.Flags().BoolVar(&follow, "follow", false, "keep printing new lines until interrupted (-f after `logs`)")
	cmd.Flags().IntVar(&tail, "tail", -1, "print only the last N lines of each console (default all)")
	return cmd
}

func tailCount(n int) int {
	if n < 0 {
		return 1 << 30
	}
	return n
}
