package engine

import (
	"context"
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/stackvm/stack/disks"
	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/image"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/supervisor/api"
)

// OCI images (vm's image attribute). Before a plan, each image reference is
// resolved to the image it names now (its config digest), so that the plan
// compares digests: a tag that moved replaces its VMs. Before an apply,
// each is pulled (converted once per digest, then cached): the VMs boot its
// root file system.

// PhasePull is a step of pulling an image, as Event.Phase.
const PhasePull Phase = "pull"

// imageRefs are the distinct image references of desired, sorted.
func imageRefs(desired *stackfile.Stack) []string {
	set := map[string]bool{}
	for _, vm := range desired.VMs {
		if vm.Image != "" {
			set[vm.Image] = true
		}
	}
	return slices.Sorted(maps.Keys(set))
}

// vmsOf names the VMs that run ref, for errors.
func vmsOf(desired *stackfile.Stack, ref string) string {
	var out []string
	for _, vm := range desired.VMs {
		if vm.Image == ref {
			out = append(out, vm.Address)
		}
	}
	return strings.Join(out, ", ")
}

// setImage records what ref named in every VM that runs it.
func setImage(desired *stackfile.Stack, ref, id string, cfg image.Config) {
	for _, vm := range desired.VMs {
		if vm.Image == ref {
			vm.ImageID, vm.ImagePorts = id, cfg.ExposedPorts
		}
	}
}

// resolveImages fills each image VM's ImageID and ImagePorts, reading no
// layer (see image.Resolve).
func (e *Engine) resolveImages(ctx context.Context, desired *stackfile.Stack) error {
	for _, ref := range imageRefs(desired) {
		r, err := image.Resolve(ctx, ref, image.Options{CacheRoot: e.opts.CacheRoot, Logger: e.log})
		if err != nil {
			return fmt.Errorf("%s: %w", vmsOf(desired, ref), err)
		}
		setImage(desired, ref, r.ID, r.Config)
	}
	return nil
}

// pullImages pulls every image of desired (converting those the cache does
// not have), reports how it goes, and fills each image VM's ImageID and
// ImagePorts. A VM whose ImageID is set already (a saved plan) must get
// that image: a reference that moved since is an error.
func (e *Engine) pullImages(ctx context.Context, desired *stackfile.Stack, progress func(Event)) (map[string]*image.Image, error) {
	out := map[string]*image.Image{}
	for _, ref := range imageRefs(desired) {
		emit := func(msg string) {
			if progress != nil {
				progress(Event{Time: time.Now(), Address: "image " + ref, Phase: PhasePull, Message: msg})
			}
		}
		var last image.Phase
		img, err := image.Pull(ctx, ref, image.Options{CacheRoot: e.opts.CacheRoot, Logger: e.log, Progress: func(p image.Progress) {
			switch {
			case p.Phase == image.PhaseLayer && p.LayerBytes == 0:
				emit(fmt.Sprintf("layer %d/%d", p.Layer, p.Layers))
			case p.Phase != last && p.Phase != image.PhaseLayer:
				emit(string(p.Phase))
			}
			last = p.Phase
		}})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", vmsOf(desired, ref), err)
		}
		for _, vm := range desired.VMs {
			if vm.Image == ref && vm.ImageID != "" && vm.ImageID != img.ID {
				return nil, fmt.Errorf("%s: image %s is %s now, not %s as planned: plan again", vm.Address, ref, img.ID, vm.ImageID)
			}
		}
		setImage(desired, ref, img.ID, img.Config)
		out[ref] = img
	}
	return out, nil
}

// imageProcess is what a VM of img runs, as compose decides it: the stack
// file's entrypoint replaces the image's and drops its command; its
// command replaces the image's command; the environment is the image's
// with the stack file's on top.
func imageProcess(vm *stackfile.VM, img *image.Image) (argv []string, env map[string]string, err error) {
	entry, cmd := img.Config.Entrypoint, img.Config.Cmd
	if vm.Entrypoint != nil {
		entry, cmd = vm.Entrypoint, nil
	}
	if vm.Command != nil {
		cmd = vm.Command
	}
	argv = append(slices.Clone(entry), cmd...)
	if len(argv) == 0 {
		return nil, nil, fmt.Errorf("image %s has no entrypoint or command: set command", vm.Image)
	}
	env = map[string]string{}
	for _, kv := range img.Config.Env {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	maps.Copy(env, vm.Env)
	return argv, env, nil
}

// imageRoot is the guest's view of an image VM's root.
func imageRoot(img *image.Image) *guestproto.Root {
	return &guestproto.Root{Image: guestproto.ImageDiskSerial, Upper: guestproto.UpperDiskSerial,
		WorkingDir: img.Config.WorkingDir, User: img.Config.User}
}

// RootUpperSize is the size of an image VM's writable layer: a sparse
// ext4 disk, so it takes only what the guest writes.
const RootUpperSize = 8 << 30

// imageDisks are an image VM's root disks: the image's file system,
// read-only and shared by every VM of the image, and the VM's writable
// layer in its directory (made once; kept across its reboots, removed with
// it).
func imageDisks(ctx context.Context, vmDir string, img *image.Image) ([]api.Disk, error) {
	upper := filepath.Join(vmDir, filenames.ImageUpperDisk)
	if _, err := disks.EnsureVolume(ctx, upper, RootUpperSize, disks.FormatExt4); err != nil {
		return nil, err
	}
	return []api.Disk{
		{Path: img.RootFS, Format: "raw", ReadOnly: true, Serial: guestproto.ImageDiskSerial},
		{Path: upper, Format: "raw", Serial: guestproto.UpperDiskSerial},
	}, nil
}
