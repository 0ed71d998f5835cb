package app

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

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
						followFile(cmd.Context(), path, func(l string) { printLine(n, l) })
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

// followFile prints lines appended to path from its current end, across
// rotations, until ctx ends.
func followFile(ctx context.Context, path string, emit func(string)) {
	var off int64 = -1
	var partial string
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		if f, err := os.Open(path); err == nil {
			fi, _ := f.Stat()
			switch {
			case off < 0:
				off = fi.Size()
			case fi.Size() < off:
				off = 0 // rotated: the new file is read from its start
			}
			f.Seek(off, io.SeekStart)
			data, _ := io.ReadAll(f)
			f.Close()
			off += int64(len(data))
			text := partial + string(data)
			cut := strings.LastIndexByte(text, '\n') + 1
			partial = text[cut:]
			sc := bufio.NewScanner(strings.NewReader(text[:cut]))
			sc.Buffer(make([]byte, 64*1024), 1<<20)
			for sc.Scan() {
				emit(strings.TrimRight(sc.Text(), "\r"))
			}
		} else if off < 0 {
			off = 0
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
