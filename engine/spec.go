package engine

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/stackvm/stack/cloudinit"
	"github.com/stackvm/stack/disks"
	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/internal/decompress"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor/api"
)

// vmSpec prepares everything a VM needs on disk (scratch disks, overlay,
// seed) and describes it for the supervisor. hold: the guest init holds
// the workload until release-vm.
func (a *applier) vmSpec(ctx context.Context, vm *stackfile.VM, hold bool) (*api.VMSpec, error) {
	dir := a.vmDir(vm.Name)
	if err := os.MkdirAll(dir, filenames.DirMode); err != nil {
		return nil, err
	}
	nics := a.plan.NICs[vm.Address]
	spec := &api.VMSpec{
		Address: vm.Address, Name: vm.Name, StateDir: dir,
		Machine: api.Machine{
			CPUs: vm.CPUs, MemoryMB: vm.MemoryMB, Kernel: vm.Kernel, Initramfs: vm.Initramfs,
			Cmdline: vm.Cmdline, Machine: vm.Machine, Accel: vm.Accel, Template: vm.Template,
		},
		Publish: publishSpecs(vm), Restart: api.Restart(vm.Restart), CPULimit: vm.CPULimit,
	}
	if vm.Pool > 0 {
		spec.Pool = poolName(vm)
	}
	for _, n := range nics {
		spec.NICs = append(spec.NICs, api.NIC{Network: n.Network, MAC: n.MAC, IP: n.IP})
	}

	// Disks: volumes by their file, scratch disks in the VM's directory.
	a.emit(vm.Address, PhaseDisks, "preparing disks")
	for _, d := range vm.Disks {
		path := filenames.Volume(a.e.opts.StateRoot, a.e.opts.Namespace, d.Volume)
		if d.Volume == "" {
			path = filepath.Join(dir, filenames.ScratchPrefix+d.Name+".img")
			if _, err := disks.EnsureVolume(ctx, path, d.SizeBytes, "ext4"); err != nil {
				return nil, err
			}
		}
		spec.Disks = append(spec.Disks, api.Disk{Path: path, Format: "raw", Serial: DiskSerial(d.Name)})
	}
	for _, sd := range vm.SharedDirs {
		spec.Shares = append(spec.Shares, api.Share{Tag: sd.Name, HostPath: sd.HostPath, ReadOnly: sd.ReadOnly})
	}
	if len(vm.Secrets) > 0 {
		share, err := a.stageSecrets(vm)
		if err != nil {
			return nil, err
		}
		spec.Shares = append(spec.Shares, share)
	}
	g := a.guest()

	if vm.Mode() == stackfile.ModeCloudInit {
		overlay := filepath.Join(dir, filenames.OverlayDisk)
		base, err := a.rootDisk(ctx, vm)
		if err != nil {
			return nil, err
		}
		if err := disks.CreateOverlay(ctx, base, overlay); err != nil {
			return nil, err
		}
		a.emit(vm.Address, PhaseSeed, "writing the cloud-init seed")
		in := g.SeedInput(vm)
		if err := a.e.execKeys(&in, dir); err != nil {
			return nil, err
		}
		seedPath := filepath.Join(dir, filenames.SeedISO)
		seed, _, err := cloudinit.EnsureISO(in, seedPath)
		if err != nil {
			return nil, err
		}
		// systemd takes the machine ID from the command line before it
		// would make one of its own (and before cloud-init runs).
		spec.Machine.Cmdline = strings.TrimSpace(spec.Machine.Cmdline + " systemd.machine_id=" + vm.MachineID)
		spec.Root = &api.Disk{Path: overlay, Format: "qcow2", Serial: "root"}
		seedDisk := api.Disk{Path: seedPath, Format: "raw", ReadOnly: true, Serial: cloudinit.VolumeID}
		spec.Disks = append([]api.Disk{seedDisk}, spec.Disks...)
		spec.Ready = readySpec(vm, seed.InstanceID)
		spec.Health = healthSpec(vm)
		return spec, nil
	}

	// Initramfs mode: the guest init configures the VM from its config.
	if vm.Kernel == "" || vm.Initramfs == "" {
		k, i, err := a.image(ctx)
		if err != nil {
			return nil, err
		}
		if spec.Machine.Kernel == "" {
			spec.Machine.Kernel = k
		}
		if spec.Machine.Initramfs == "" {
			spec.Machine.Initramfs = i
		}
	}
	command, env := vm.Command, vm.Env
	var root *guestproto.Root
	if vm.Image != "" {
		img := a.images[vm.Image]
		if img == nil {
			panic("engine: VM " + vm.Address + " of an image that was not pulled") // Up pulls every image first
		}
		var err error
		if command, env, err = imageProcess(vm, img); err != nil {
			return nil, err
		}
		disks, err := imageDisks(ctx, dir, img)
		if err != nil {
			return nil, err
		}
		spec.Disks = append(disks, spec.Disks...)
		root = imageRoot(img)
	}
	gc := g.Config(vm, command, env, root, hold)
	raw, err := json.Marshal(gc)
	if err != nil {
		return nil, err
	}
	spec.GuestConfig, spec.Hold = raw, hold
	spec.SensitiveConfig = gc.SensitiveCommand || vm.IsSensitive("env")
	spec.Ready = readySpec(vm, "")
	spec.Health = healthSpec(vm)
	return spec, nil
}

// poolName is the warm pool of vm's block.
func poolName(vm *stackfile.VM) string { return "vm." + vm.Block }

// pools are the warm pools desired asks for: one per VM block with a pool,
// with its shape. The built-in image is resolved when one uses it.
func (a *applier) pools(ctx context.Context) ([]api.PoolSpec, error) {
	var out []api.PoolSpec
	seen := map[string]bool{}
	for _, vm := range a.desired.VMs {
		name := poolName(vm)
		if vm.Pool == 0 || seen[name] {
			continue
		}
		seen[name] = true
		m := api.Machine{CPUs: vm.CPUs, MemoryMB: vm.MemoryMB, Kernel: vm.Kernel, Initramfs: vm.Initramfs,
			Cmdline: vm.Cmdline, Machine: vm.Machine, Accel: vm.Accel, Template: vm.Template}
		if m.Kernel == "" || m.Initramfs == "" {
			k, i, err := a.image(ctx)
			if err != nil {
				return nil, err
			}
			if m.Kernel == "" {
				m.Kernel = k
			}
			if m.Initramfs == "" {
				m.Initramfs = i
			}
		}
		p := api.PoolSpec{Name: name, Size: vm.Pool, Machine: m}
		for _, n := range vm.NICs {
			p.Networks = append(p.Networks, n.Network)
		}
		out = append(out, p)
	}
	return out, nil
}

func publishSpecs(vm *stackfile.VM) []api.Port {
	var out []api.Port
	for _, p := range vm.Publish {
		out = append(out, api.Port{HostPort: p.HostPort, GuestPort: p.GuestPort, Protocol: p.Protocol, HostIP: p.HostIP})
	}
	return out
}

// probePorts are the guest ports the VM's tcp or http readiness probe
// connects to; the guest init reports when they listen, so that the probe
// runs at once instead of at its next tick. An http probe counts only when
// its URL names the VM itself.
func probePorts(vm *stackfile.VM, nics []state.NIC) []int {
	if vm.Ready.TCP != 0 {
		return []int{vm.Ready.TCP}
	}
	u, err := url.Parse(vm.Ready.HTTP)
	if vm.Ready.HTTP == "" || err != nil {
		return nil
	}
	self := u.Hostname() == "localhost" || u.Hostname() == "127.0.0.1" || u.Hostname() == vm.Name
	for _, n := range nics {
		self = self || u.Hostname() == n.IP.String()
	}
	if !self {
		return nil
	}
	port, err := strconv.Atoi(u.Port())
	switch {
	case u.Port() == "" && u.Scheme == "https":
		port = 443
	case u.Port() == "":
		port = 80
	case err != nil:
		return nil
	}
	return []int{port}
}

// healthSpec is vm's health check for the supervisor (nil: none).
func healthSpec(vm *stackfile.VM) *api.Health {
	h := vm.Health
	if h == nil {
		return nil
	}
	return &api.Health{
		Probe:    api.Ready{TCP: h.TCP, HTTP: h.HTTP, Exec: h.Exec, Timeout: api.Duration(h.Timeout)},
		Interval: api.Duration(h.Interval), Retries: h.Retries, StartPeriod: api.Duration(h.StartPeriod),
	}
}

// readySpec says how the supervisor decides that vm is ready. instanceID
// is the cloud-init instance (cloud-init mode only).
func readySpec(vm *stackfile.VM, instanceID string) api.Ready {
	r := api.Ready{TCP: vm.Ready.TCP, HTTP: vm.Ready.HTTP, Exec: vm.Ready.Exec, Timeout: api.Duration(vm.Ready.Timeout)}
	if r.TCP != 0 || r.HTTP != "" || len(r.Exec) > 0 {
		return r
	}
	if vm.Mode() == stackfile.ModeCloudInit {
		r.ConsoleLine, r.ConsoleFailLine = cloudinit.ReadyLine(instanceID), cloudinit.FailedLine(instanceID)
		r.ConsoleReportLine = cloudinit.ReportLine(instanceID)
		r.CloudInitStrict = vm.CloudInit != nil && vm.CloudInit.Strict
	} else {
		r.Guest = true
	}
	return r
}

// guest is the pure part of the desired VMs' set-up, for this plan.
func (a *applier) guest() Guest {
	return Guest{Namespace: a.e.opts.Namespace, Desired: a.desired, NICs: a.plan.NICs}
}

// DiskSerial is the virtio-blk serial of a VM's disk (at most 20 bytes):
// the disk's name when it fits, else a prefix and a hash.
func DiskSerial(name string) string {
	if len(name) <= 20 {
		return name
	}
	h := sha256.Sum256([]byte(name))
	return name[:11] + "-" + hex.EncodeToString(h[:4])
}

// rootDisk is the base image of a cloud-init VM's overlay: root_disk, or
// when that is compressed (gzip, zstd, xz) its content decompressed once
// into the cache. The overlay's checks of a base image apply to what was
// decompressed.
func (a *applier) rootDisk(ctx context.Context, vm *stackfile.VM) (string, error) {
	kind, err := decompress.Kind(vm.RootDisk)
	if err != nil || kind == "" {
		return vm.RootDisk, err
	}
	a.emit(vm.Address, PhaseDisks, "decompressing the root disk ("+kind+"), once per content")
	cacheRoot := a.e.opts.CacheRoot
	if cacheRoot == "" {
		cacheRoot = filenames.CacheRoot()
	}
	return decompress.Cached(ctx, vm.RootDisk, filenames.DiskCache(cacheRoot))
}
