package app

import (
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack"
)

// templateEntry is one boot template as `cache ls --json` prints it.
type templateEntry struct {
	Key       string    `json:"key"`
	Path      string    `json:"path"`
	Machine   string    `json:"machine"`
	Accel     string    `json:"accel"`
	CPUs      int       `json:"cpus"`
	MemoryMB  int       `json:"memory_mb"`
	Kernel    string    `json:"kernel"`
	Devices   []string  `json:"devices"`
	QEMU      string    `json:"qemu"`
	DiskBytes int64     `json:"disk_bytes"`
	Created   time.Time `json:"created"`
	Used      time.Time `json:"used"`
}

func entries(list []*stack.Template) []templateEntry {
	out := make([]templateEntry, 0, len(list))
	for _, t := range list {
		sh := t.Meta.Shape
		out = append(out, templateEntry{Key: t.Meta.Key, Path: t.Dir, Machine: sh.Machine, Accel: sh.Accel,
			CPUs: sh.CPUs, MemoryMB: sh.MemoryMB, Kernel: sh.Kernel, Devices: append([]string{}, sh.Devices...),
			QEMU: sh.QEMU, DiskBytes: t.Disk, Created: t.Meta.Created, Used: t.Used})
	}
	return out
}

func newCacheCmd(g *globals, s Streams) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "cache",
		Short: "Show and remove boot templates (the cache VMs are restored from)",
	}
	var asJSON bool
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List boot templates with their shape and size on disk",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			list, err := stack.Templates()
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(s.Out)
				enc.SetIndent("", "  ")
				return enc.Encode(entries(list))
			}
			tw := tabwriter.NewWriter(s.Out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TEMPLATE\tSHAPE\tDEVICES\tSIZE\tLAST USED")
			var total int64
			for _, e := range entries(list) {
				total += e.DiskBytes
				shape := fmt.Sprintf("%s/%s %d CPU %d MiB", e.Machine, e.Accel, e.CPUs, e.MemoryMB)
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s ago\n", e.Key[:12], shape, strings.Join(e.Devices, ","), mib(e.DiskBytes), time.Since(e.Used).Round(time.Second))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(s.Out, "%d templates, %s on disk\n", len(list), mib(total))
			return nil
		},
	}
	ls.Flags().BoolVar(&asJSON, "json", false, "print the templates as JSON")
	var all bool
	prune := &cobra.Command{
		Use:   "prune",
		Short: "Remove the least recently used boot templates beyond the cache's limit (all of them with --all)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			removed, err := stack.PruneTemplates(all)
			var freed int64
			for _, t := range removed {
				freed += t.Disk
			}
			fmt.Fprintf(s.Out, "Removed %d templates (%s).\n", len(removed), mib(freed))
			return err
		},
	}
	prune.Flags().BoolVar(&all, "all", false, "remove every template")
	cmd.AddCommand(ls, prune)
	return cmd
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }
