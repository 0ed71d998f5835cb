package app

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/stackvm/stack"
	"github.com/stackvm/stack/cloudinit"
	"github.com/stackvm/stack/export"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/state"
)

func newExportCmd(g *globals, s Streams) *cobra.Command {
	var (
		format, out string
		kernelOut   string
		configOut   string
		kv          export.KubeVirtOptions
		nomad       export.NomadOptions
	)
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Write the stack as another orchestrator's manifests (KubeVirt); changes nothing",
		Long: `Write the stack as KubeVirt manifests, for stacks that outgrow one host.
Everything that does not translate is listed as a warning on stderr.
See docs/scale-out.md for the mapping and its limits.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if format != "kubevirt" && format != "nomad" {
				return fmt.Errorf("export: format %q: want kubevirt or nomad", format)
			}
			p, err := load(g, s)
			if err != nil {
				return err
			}
			var r *export.Result
			if format == "nomad" {
				r, err = p.ExportNomad(cmd.Context(), nomad)
			} else {
				r, err = p.ExportKubeVirt(cmd.Context(), kv)
			}
			if err != nil {
				return err
			}
			if kernelOut != "" {
				digest, err := stack.WriteKernelImage(cmd.Context(), kernelOut, "latest")
				if err != nil {
					return err
				}
				fmt.Fprintf(s.Err, "Wrote the kernel image to %s (oci:%s:latest, %s); push it and name it with --kernel-image.\n", kernelOut, kernelOut, digest)
			}
			if configOut != "" {
				if len(r.ConfigDisks) == 0 {
					return fmt.Errorf("export: --write-config-images needs --config-image and a VM in initramfs mode")
				}
				if _, err := export.WriteConfigImages(configOut, r.ConfigDisks); err != nil {
					return err
				}
				fmt.Fprintf(s.Err, "Wrote the config disk images to %s (oci:%s:<vm>); push each to %s:<vm>.\n", configOut, configOut, kv.ConfigImage)
			}
			for _, w := range r.Warnings {
				fmt.Fprintf(s.Err, "warning: %s\n", w)
			}
			if out == "-" {
				if len(r.Seeds) > 0 {
					fmt.Fprintf(s.Err, "warning: export: the NoCloud seed ISOs are written only with -o DIR\n")
				}
				_, err := s.Out.Write(r.Stream())
				return err
			}
			return writeObjects(out, r)
		},
	}
	f := cmd.Flags()
	f.StringVar(&format, "format", "kubevirt", "target: kubevirt or nomad")
	f.StringVarP(&out, "output", "o", "-", "directory to write one file per object into, or - for one YAML stream on stdout")
	f.StringVar(&kv.RootDisk, "root-disk", export.RootContainerDisk, "cloud-init VMs' root disk: containerdisk or datavolume")
	f.StringVar(&kv.DiskImage, "disk-image", "", "container image holding the cloud-init VMs' root disk (stack cannot upload disks)")
	f.StringVar(&kv.DiskSize, "disk-size", "10Gi", "size of a datavolume root disk")
	f.StringVar(&kv.KernelImage, "kernel-image", "", "container image with "+export.KernelPath+" and "+export.InitramfsPath+" for kernelBoot")
	f.StringVar(&kv.ConfigImage, "config-image", "", "kubevirt: repository of the initramfs VMs' config disk images (REPO:<vm>), instead of ConfigMaps")
	f.StringVar(&configOut, "write-config-images", "", "kubevirt: with --config-image, write those images as an OCI image layout in DIR")
	f.StringVar(&kernelOut, "write-kernel-image", "", "kubevirt: also write the built-in kernel and initramfs as an OCI image layout in DIR")
	f.StringVar(&nomad.DiskURL, "disk-url", "", "nomad: URL the clients download the cloud-init VMs' root disk from")
	f.StringVar(&nomad.KernelURL, "kernel-url", "", "nomad: directory URL with vmlinuz and initramfs")
	f.StringVar(&nomad.SeedURL, "seed-url", "", "nomad: directory URL serving the seed ISOs written to -o DIR")
	f.StringArrayVar(&nomad.Datacenters, "datacenter", nil, "nomad: datacenter to run in (repeatable; default all)")
	return cmd
}

// writeObjects writes each object, and each seed as an ISO, to its own
// file in dir (made 0700 when missing), atomically.
func writeObjects(dir string, r *export.Result) error {
	if err := os.MkdirAll(dir, filenames.DirMode); err != nil {
		return fmt.Errorf("make output directory: %w", err)
	}
	for name, seed := range r.Seeds {
		if err := cloudinit.WriteISO(seed, filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	for _, o := range r.Objects {
		path := filepath.Join(dir, o.File)
		if err := state.WriteFileAtomic(path, o.Data); err != nil {
			return fmt.Errorf("write %s: %w", path, err)
		}
	}
	return nil
}
