package engine

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/stackvm/stack/cloudinit"
	"github.com/stackvm/stack/disks"
	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor"
)

func (e *Engine) applyVM(ctx context.Context, plan *planner.Plan, a *planner.Action, vm *stackfile.VM, desired *stackfile.Stack, w *waiters, release func(), waitDeps func() error) error {
	switch a.Kind {
	case planner.NoOp:
		return nil
	case planner.Update:
		ready := readySpec(vm, "")
		if vm.Mode() == stackfile.ModeCloudInit {
			// The seed is not rebuilt by an update: the ready line is that
			// of the seed the VM booted with (without its sidecar, any
			// instance's ready line counts).
			if id, err := cloudinit.RecordedInstanceID(filepath.Join(filenames.VMState(e.StateRoot, e.Namespace, a.Name), filenames.SeedISO)); err == nil {
				ready = readySpec(vm, id)
			}
		}
		spec := supervisor.VMSpec{Address: a.Address, Publish: publishSpecs(vm), Restart: vm.Restart, Ready: ready}
		if _, err := e.Supervisor.Call(ctx, &supervisor.Request{Op: supervisor.OpUpdateVM, VM: &spec}); err != nil {
			return fmt.Errorf("%s: %w", a.Address, err)
		}
		e.emit(a.Address, PhaseUpdate, "updated in place")
		return e.record(plan, a, nil)
	case planner.Delete, planner.Replace:
		e.emit(a.Address, PhaseDelete, "stopping")
		if _, err := e.Supervisor.Call(ctx, &supervisor.Request{Op: supervisor.OpStopVM, Address: a.Address, Timeout: supervisor.Duration(e.StopTimeout)}); err != nil {
			return fmt.Errorf("%s: %w", a.Address, err)
		}
		if err := e.removeVMFiles(a.Name, a.Kind == planner.Delete); err != nil {
			return fmt.Errorf("%s: %w", a.Address, err)
		}
		if a.Kind == planner.Delete {
			e.emit(a.Address, PhaseDelete, "deleted")
			return e.record(plan, a, nil)
		}
	}
	return e.createVM(ctx, plan, a, vm, desired, w, release, waitDeps)
}

// removeVMFiles removes what a VM owned on disk: its overlay, seed, scratch
// disks and supervisor record; the console log only when the VM goes for
// good (a replaced VM keeps its history).
func (e *Engine) removeVMFiles(name string, all bool) error {
	dir := filenames.VMState(e.StateRoot, e.Namespace, name)
	if all {
		return os.RemoveAll(dir)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	for _, ent := range entries {
		if strings.HasPrefix(ent.Name(), filenames.ConsoleLog) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, ent.Name())); err != nil {
			return err
		}
	}
	return nil
}

func (e *Engine) createVM(ctx context.Context, plan *planner.Plan, a *planner.Action, vm *stackfile.VM, desired *stackfile.Stack, w *waiters, release func(), waitDeps func() error) error {
	early := bootsEarly(a, vm)
	if !early {
		if err := e.awaitDependencies(ctx, plan, vm, desired); err != nil {
			return fmt.Errorf("%s: %w", a.Address, err)
		}
	}
	spec, err := e.vmSpec(ctx, plan, vm, desired, early)
	if err != nil {
		e.emit(a.Address, supervisor.PhaseFailed, err.Error())
		return fmt.Errorf("%s: %w", a.Address, err)
	}
	// Record the VM before its VMM exists: an interrupted apply then leaves
	// a VM without a process in state, which the next plan re-creates,
	// rather than a VMM that nobody knows about.
	if err := e.record(plan, a, func(st *state.State) {
		v := st.VMs[a.Address]
		v.Status, v.Process, v.ExitCode, v.Reason = state.StatusCreating, nil, nil, ""
	}); err != nil {
		return err
	}
	// Events of the VM this one replaces can still be on their way: only
	// those of this incarnation count.
	var tok [8]byte
	rand.Read(tok[:])
	spec.Instance = hex.EncodeToString(tok[:])
	events := w.expect(a.Address)
	defer w.forget(a.Address)
	resp, err := e.Supervisor.Call(ctx, &supervisor.Request{Op: supervisor.OpStartVM, VM: spec})
	if err != nil {
		e.record(nil, nil, func(st *state.State) {
			if v := st.VMs[a.Address]; v != nil {
				v.Status, v.Reason = state.StatusFailed, err.Error()
			}
		})
		return e.vmFailure(a.Address, vm.Name, err.Error())
	}
	started := time.Now()
	e.noteAccel(resp.Accel)
	if err := e.record(nil, nil, func(st *state.State) {
		v := st.VMs[a.Address]
		v.Status, v.Process, v.StartedAt = state.StatusBooting, resp.Process, started.UTC()
	}); err != nil {
		return err
	}
	// Waiting holds no slot: other VMs start meanwhile.
	release()
	if early {
		// The VM boots; its workload starts once what it depends on is
		// ready: those in this plan, then those it leaves alone.
		err := waitDeps()
		if err == nil {
			err = e.awaitDependencies(ctx, plan, vm, desired)
		}
		if err == nil {
			_, err = e.Supervisor.Call(ctx, &supervisor.Request{Op: supervisor.OpRelease, Address: a.Address})
		}
		if err != nil {
			e.Supervisor.Call(context.WithoutCancel(ctx), &supervisor.Request{Op: supervisor.OpStopVM, Address: a.Address, Timeout: supervisor.Duration(5 * time.Second)})
			e.record(nil, nil, func(st *state.State) {
				v := st.VMs[a.Address]
				v.Status, v.Reason, v.Process = state.StatusFailed, err.Error(), nil
			})
			e.emit(a.Address, supervisor.PhaseFailed, err.Error())
			return err
		}
	}
	if e.NoWait {
		return nil
	}
	deadline := time.NewTimer(vm.Ready.Timeout + 30*time.Second)
	defer deadline.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: %w", a.Address, ctx.Err())
		case <-w.lost():
			return e.vmFailure(a.Address, vm.Name, "lost the connection to the supervisor")
		case <-deadline.C:
			return e.vmFailure(a.Address, vm.Name, fmt.Sprintf("no readiness report after %s", vm.Ready.Timeout+30*time.Second))
		case ev := <-events:
			if ev.Instance != spec.Instance {
				continue
			}
			switch ev.Phase {
			case supervisor.PhaseReady:
				return e.record(nil, nil, func(st *state.State) { st.VMs[a.Address].Status = state.StatusReady })
			case supervisor.PhaseFailed, supervisor.PhaseExited, supervisor.PhaseStopped:
				reason := ev.Message
				e.record(nil, nil, func(st *state.State) {
					v := st.VMs[a.Address]
					v.Status, v.Reason = state.StatusFailed, reason
				})
				return e.vmFailure(a.Address, vm.Name, reason)
			}
		}
	}
}

// awaitDependencies waits until the VMs that vm depends on and that this
// plan leaves alone are ready: the plan's edges cover those it creates, but
// an unchanged VM can still be booting (an earlier, interrupted up).
func (e *Engine) awaitDependencies(ctx context.Context, plan *planner.Plan, vm *stackfile.VM, desired *stackfile.Stack) error {
	want := map[string]bool{}
	for _, other := range desired.VMs {
		for _, blk := range vm.DependsOn {
			if "vm."+other.Block == blk {
				if a := plan.Action(other.Address); a != nil && a.Kind == planner.NoOp {
					want[other.Address] = true
				}
			}
		}
	}
	if len(want) == 0 {
		return nil
	}
	e.emit(vm.Address, PhaseWaiting, "waiting for its dependencies to be ready")
	t := time.NewTicker(200 * time.Millisecond)
	defer t.Stop()
	for {
		resp, err := e.Supervisor.Call(ctx, &supervisor.Request{Op: supervisor.OpStatus})
		if err != nil {
			return err
		}
		pending := 0
		for _, v := range resp.VMs {
			if !want[v.Address] {
				continue
			}
			switch v.State {
			case state.StatusReady:
			case state.StatusFailed, state.StatusStopped:
				return fmt.Errorf("its dependency %s is %s: %s", v.Address, v.State, v.Reason)
			default:
				pending++
			}
		}
		if pending == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

// Prefetch starts resolving the built-in guest image (a cache check of
// about 10 ms, or a build) in the background when the plan boots a VM that
// uses it, so that the work overlaps with starting the supervisor and the
// networks instead of delaying the first VMM. It reports whether it did.
func (e *Engine) Prefetch(ctx context.Context, plan *planner.Plan, desired *stackfile.Stack) bool {
	boots := map[string]bool{}
	for _, a := range plan.Actions {
		if startsVMM(a) {
			boots[a.Address] = true
		}
	}
	for _, vm := range desired.VMs {
		if boots[vm.Address] && vm.Mode() == stackfile.ModeInitramfs && (vm.Kernel == "" || vm.Initramfs == "") {
			go e.image(ctx)
			return true
		}
	}
	return false
}

// image returns the built-in guest image, building it at most once.
func (e *Engine) image(ctx context.Context) (string, string, error) {
	e.img.once.Do(func() {
		if e.Images == nil {
			e.img.err = fmt.Errorf("no built-in guest image is configured")
			return
		}
		e.img.kernel, e.img.initramfs, e.img.err = e.Images(ctx)
	})
	return e.img.kernel, e.img.initramfs, e.img.err
}

// vmSpec prepares everything a VM needs on disk and describes it for the
// supervisor.
func (e *Engine) vmSpec(ctx context.Context, plan *planner.Plan, vm *stackfile.VM, desired *stackfile.Stack, hold bool) (*supervisor.VMSpec, error) {
	dir := filenames.VMState(e.StateRoot, e.Namespace, vm.Name)
	if err := os.MkdirAll(dir, filenames.DirMode); err != nil {
		return nil, err
	}
	nics := plan.NICs[vm.Address]
	nets := map[string]*stackfile.Network{}
	for _, n := range desired.Networks {
		nets[n.Name] = n
	}
	cfg := hypervisor.Config{
		Name: vm.Name, CPUs: vm.CPUs, MemoryMB: vm.MemoryMB,
		Kernel: vm.Kernel, Initramfs: vm.Initramfs, Cmdline: vm.Cmdline,
		Machine: vm.Machine, Accel: vm.Accel,
	}
	spec := &supervisor.VMSpec{
		Address: vm.Address, Name: vm.Name, Publish: publishSpecs(vm),
		Restart: vm.Restart, StateDir: dir,
	}
	for _, n := range nics {
		spec.NICs = append(spec.NICs, supervisor.NICSpec{Network: n.Network, MAC: n.MAC, IP: n.IP})
	}

	// Disks: volumes by their file, scratch disks in the VM's directory.
	e.emit(vm.Address, PhaseDisks, "preparing disks")
	var mounts []guestproto.Mount
	var ciMounts []cloudinit.Mount
	for _, d := range vm.Disks {
		serial := DiskSerial(d.Name)
		path := filenames.Volume(e.StateRoot, e.Namespace, d.Volume)
		format := "ext4"
		if d.Volume == "" {
			path = filepath.Join(dir, filenames.ScratchPrefix+d.Name+".img")
			if _, err := disks.EnsureVolume(ctx, path, d.SizeBytes, "ext4"); err != nil {
				return nil, err
			}
		} else {
			for _, v := range desired.Volumes {
				if v.Name == d.Volume {
					format = v.Format
				}
			}
		}
		cfg.Disks = append(cfg.Disks, hypervisor.Disk{Path: path, Format: "raw", Serial: serial})
		if d.GuestPath != "" && format == "ext4" {
			mounts = append(mounts, guestproto.Mount{Source: "disk:" + serial, Target: d.GuestPath, FSType: "ext4"})
			ciMounts = append(ciMounts, cloudinit.Mount{Serial: serial, GuestPath: d.GuestPath, FSType: "ext4"})
		}
	}
	var ciShares []cloudinit.Share
	for _, sd := range vm.SharedDirs {
		cfg.SharedDirs = append(cfg.SharedDirs, hypervisor.SharedDir{Tag: sd.Name, HostPath: sd.HostPath, ReadOnly: sd.ReadOnly})
		mounts = append(mounts, guestproto.Mount{Source: "share:" + sd.Name, Target: sd.GuestPath, ReadOnly: sd.ReadOnly})
		ciShares = append(ciShares, cloudinit.Share{Tag: sd.Name, GuestPath: sd.GuestPath, ReadOnly: sd.ReadOnly})
	}

	if vm.Mode() == stackfile.ModeCloudInit {
		overlay := filepath.Join(dir, filenames.OverlayDisk)
		if err := disks.CreateOverlay(ctx, vm.RootDisk, overlay); err != nil {
			return nil, err
		}
		e.emit(vm.Address, PhaseSeed, "writing the cloud-init seed")
		in := cloudinit.Input{VMName: vm.Name, Namespace: e.Namespace, Hosts: peers(vm, plan, desired)}
		for i, n := range nics {
			net := nets[n.Network]
			nic := cloudinit.NIC{MAC: n.MAC, Address: netip.PrefixFrom(n.IP, net.Subnet.Bits())}
			if i == 0 {
				nic.Gateway = net.Gateway
			}
			if net.DNS {
				nic.DNS = []netip.Addr{net.Gateway}
			}
			in.NICs = append(in.NICs, nic)
		}
		in.Mounts, in.Shares = ciMounts, ciShares
		if vm.CloudInit != nil {
			in.UserData, in.SSHAuthorizedKeys = vm.CloudInit.UserData, vm.CloudInit.SSHAuthorizedKeys
			in.UserDataFile = vm.CloudInit.UserDataRange.Filename
		}
		if err := e.execKeys(&in, dir); err != nil {
			return nil, err
		}
		seed, _, err := cloudinit.EnsureISO(in, filepath.Join(dir, filenames.SeedISO))
		if err != nil {
			return nil, err
		}
		root := hypervisor.Disk{Path: overlay, Format: "qcow2", Serial: "root"}
		cfg.Disks = append([]hypervisor.Disk{root, {Path: filepath.Join(dir, filenames.SeedISO), Format: "raw", ReadOnly: true, Serial: cloudinit.VolumeID}}, cfg.Disks...)
		if !strings.Contains(" "+cfg.Cmdline, " root=") {
			cfg.Cmdline = strings.TrimSpace("root=/dev/vda rw " + cfg.Cmdline)
		}
		if cfg.Machine == "auto" {
			cfg.Machine = "q35" // distribution kernels and initrds expect PCI
		}
		spec.Ready = readySpec(vm, seed.InstanceID)
		spec.Config = cfg
		return spec, nil
	}

	// Initramfs mode: the guest init configures the VM from GuestConfig.
	if cfg.Kernel == "" || cfg.Initramfs == "" {
		k, i, err := e.image(ctx)
		if err != nil {
			return nil, err
		}
		if cfg.Kernel == "" {
			cfg.Kernel = k
		}
		if cfg.Initramfs == "" {
			cfg.Initramfs = i
		}
	}
	gc := guestproto.Config{
		Version: guestproto.Version, Hostname: vm.Name, Hosts: guestHosts(vm, plan, desired, e.Namespace),
		Mounts: mounts, Command: vm.Command, Env: vm.Env, OneShot: len(vm.Command) > 0, HoldWorkload: hold,
		Search: []string{cloudinit.HostsDomain(e.Namespace)}, WatchPorts: probePorts(vm, nics),
	}
	for i, n := range nics {
		net := nets[n.Network]
		g := guestproto.NIC{MAC: n.MAC, Address: netip.PrefixFrom(n.IP, net.Subnet.Bits()).String()}
		if i == 0 {
			g.Gateway = net.Gateway.String()
			if net.DNS {
				gc.DNS = []string{net.Gateway.String()}
			}
		}
		gc.NICs = append(gc.NICs, g)
	}
	raw, err := json.Marshal(gc)
	if err != nil {
		return nil, err
	}
	cfg.GuestAgent, cfg.GuestConfig = true, raw
	spec.Hold = hold
	spec.Ready = readySpec(vm, "")
	spec.Config = cfg
	return spec, nil
}

func publishSpecs(vm *stackfile.VM) []supervisor.PublishSpec {
	var out []supervisor.PublishSpec
	for _, p := range vm.Publish {
		out = append(out, supervisor.PublishSpec{HostPort: p.HostPort, GuestPort: p.GuestPort, Protocol: p.Protocol})
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

// readySpec says how the supervisor decides that vm is ready. instanceID
// is the cloud-init instance (cloud-init mode only).
func readySpec(vm *stackfile.VM, instanceID string) supervisor.ReadySpec {
	r := supervisor.ReadySpec{TCP: vm.Ready.TCP, HTTP: vm.Ready.HTTP, Timeout: supervisor.Duration(vm.Ready.Timeout)}
	if r.TCP != 0 || r.HTTP != "" {
		return r
	}
	if vm.Mode() == stackfile.ModeCloudInit {
		r.ConsoleLine, r.ConsoleFailLine = cloudinit.ReadyLine(instanceID), cloudinit.FailedLine(instanceID)
	} else {
		r.Guest = true
	}
	return r
}

// peers lists the other VMs of the stack with the address by which vm
// reaches each: their address on the first network they share with vm.
func peers(vm *stackfile.VM, plan *planner.Plan, desired *stackfile.Stack) []cloudinit.Host {
	mine := map[string]bool{}
	for _, n := range vm.NICs {
		mine[n.Network] = true
	}
	var out []cloudinit.Host
	for _, other := range desired.VMs {
		if other.Address == vm.Address {
			continue
		}
		for _, n := range plan.NICs[other.Address] {
			if mine[n.Network] {
				out = append(out, cloudinit.Host{Name: other.Name, IP: n.IP})
				break
			}
		}
	}
	return out
}

func guestHosts(vm *stackfile.VM, plan *planner.Plan, desired *stackfile.Stack, namespace string) []guestproto.Host {
	domain := cloudinit.HostsDomain(namespace)
	var out []guestproto.Host
	if nics := plan.NICs[vm.Address]; len(nics) > 0 {
		out = append(out, guestproto.Host{IP: nics[0].IP.String(), Names: []string{vm.Name, vm.Name + "." + domain}})
	}
	for _, h := range peers(vm, plan, desired) {
		out = append(out, guestproto.Host{IP: h.IP.String(), Names: []string{h.Name, h.Name + "." + domain}})
	}
	return out
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
