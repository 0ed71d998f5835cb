package app

import (
	"bufio"
	"fmt"
	"strconv"
	"sync"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack"
	"github.com/stackvm/stack/internal/termsafe"
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
			var vms []*stack.VM
			if len(args) == 0 {
				if vms, err = p.VMs(); err != nil {
					return err
				}
			}
			for _, name := range args {
				vm, err := p.VM(name)
				if err != nil {
					return err
				}
				vms = append(vms, vm)
			}
			width := 0
			for _, vm := range vms {
				width = max(width, len(vm.Name))
			}
			var mu sync.Mutex
			var wg sync.WaitGroup
			for _, vm := range vms {
				r, err := vm.ReadLogs(cmd.Context(), stack.LogOptions{Follow: follow, Tail: tail})
				if err != nil {
					return err
				}
				// Without follow the consoles print one after the other;
				// with it, lines interleave as they come. The guest's
				// control characters show as escapes (`stack console`
				// passes them).
				print := func() {
					defer r.Close()
					sc := bufio.NewScanner(r)
					sc.Buffer(make([]byte, 64<<10), 1<<20)
					for sc.Scan() {
						mu.Lock()
						fmt.Fprintf(s.Out, "%-*s | %s\n", width, vm.Name, termsafe.String(sc.Text()))
						mu.Unlock()
					}
				}
				if !follow {
					print()
					continue
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					print()
				}()
			}
			wg.Wait()
			return nil
		},
	}
	cmd.Flags().BoolVar(&follow, "follow", false, "keep printing new lines until interrupted (-f after the subcommand)")
	tail = -1
	cmd.Flags().Var((*tailValue)(&tail), "tail", "print only the last N lines of each console")
	return cmd
}

// tailValue is --tail: a number of lines, or all (-1). Its own type gives
// the help "(default all)" rather than an int's "(default -1)".
type tailValue int

func (v *tailValue) String() string {
	if *v < 0 {
		return "all"
	}
	return strconv.Itoa(int(*v))
}

func (v *tailValue) Set(s string) error {
	if s == "all" {
		*v = -1
		return nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("want a number of lines or all, got %q", s)
	}
	*v = tailValue(n)
	return nil
}

func (v *tailValue) Type() string { return "int" }
