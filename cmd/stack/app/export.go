package app

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack/export"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/state"
)

func newExportCmd(g *globals, s Streams) *cobra.Command {
	var (
		format, out string
		kv          export.KubeVirtOptions
	)
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Write the stack as another orchestrator's manifests (KubeVirt); changes nothing",
		Long: `Write the stack as KubeVirt manifests, for stacks that outgrow one host.
Everything that does not translate is listed as a warning on stderr.
See docs/scale-out.md for the mapping and its limits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "kubevirt" {
				return fmt.Errorf("export: format %q: only kubevirt is supported", format)
			}
			p, err := load(g, s)
			if err != nil {
				return err
			}
			r, err := p.ExportKubeVirt(cmd.Context(), kv)
			if err != nil {
				return err
			}
			for _, w := range r.Warnings {
				fmt.Fprintf(s.Err, "warning: %s\n", w)
			}
			if out == "-" {
				_, err := s.Out.Write(r.Stream())
				return err
			}
			return writeObjects(out, r.Objects)
		},
	}
	f := cmd.Flags()
	f.StringVar(&format, "format", "kubevirt", "target: kubevirt")
	f.StringVarP(&out, "output", "o", "-", "directory to write one file per object into, or - for one YAML stream on stdout")
	f.StringVar(&kv.RootDisk, "root-disk", export.RootContainerDisk, "cloud-init VMs' root disk: containerdisk or datavolume")
	f.StringVar(&kv.DiskImage, "disk-image", "", "container image holding the cloud-init VMs' root disk (stack cannot upload disks)")
	f.StringVar(&kv.DiskSize, "disk-size", "10Gi", "size of a datavolume root disk")
	f.StringVar(&kv.KernelImage, "kernel-image", "", "container image with "+export.KernelPath+" and "+export.InitramfsPath+" for kernelBoot")
	return cmd
}

// writeObjects writes each object to its own file in dir (made 0700 when
// missing), atomically.
func writeObjects(dir string, objs []export.Object) error {
	if err := os.MkdirAll(dir, filenames.DirMode); err != nil {
		return fmt.Errorf("make output directory: %w", err)
	}
	for _, o := range objs {
		path := filepath.Join(dir, o.File)
		if err := state.WriteFileAtomic(path, o.YAML); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	return nil
}
