package engine

import (
	"net/netip"

	"github.com/stackvm/stack/cloudinit"
	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
)

// Guest is what a VM's guest is configured with that follows from the
// evaluated stack and the plan's NIC assignment alone: its addresses, its
// peers, its mounts, its cloud-init seed input and its guest init config.
// It does no I/O. The engine boots VMs with it and `stack export` ships the
// same values to other orchestrators, so that both agree byte for byte.
type Guest struct {
	Namespace string
	Desired   *stackfile.Stack
	// NICs are the plan's resolved attachments, by VM address.
	NICs map[string][]state.NIC
}

func (g Guest) network(name string) *stackfile.Network {
	for _, n := range g.Desired.Networks {
		if n.Name == name {
			return n
		}
	}
	return nil
}

func (g Guest) volume(name string) *stackfile.Volume {
	for _, v := range g.Desired.Volumes {
		if v.Name == name {
			return v
		}
	}
	return nil
}

// Mounts are what the guest mounts at boot: its ext4 disks that have a
// guest path (found by DiskSerial) and its shared directories, in the
// guest init's form and in cloud-init's.
func (g Guest) Mounts(vm *stackfile.VM) ([]guestproto.Mount, []cloudinit.Mount, []cloudinit.Share) {
	var mounts []guestproto.Mount
	var ciMounts []cloudinit.Mount
	for _, d := range vm.Disks {
		format := "ext4"
		if v := g.volume(d.Volume); d.Volume != "" && v != nil {
			format = v.Format
		}
		if d.GuestPath != "" && format == "ext4" {
			serial := DiskSerial(d.Name)
			mounts = append(mounts, guestproto.Mount{Source: "disk:" + serial, Target: d.GuestPath, FSType: "ext4"})
			ciMounts = append(ciMounts, cloudinit.Mount{Serial: serial, GuestPath: d.GuestPath, FSType: "ext4"})
		}
	}
	var ciShares []cloudinit.Share
	for _, sd := range vm.SharedDirs {
		mounts = append(mounts, guestproto.Mount{Source: "share:" + sd.Name, Target: sd.GuestPath, ReadOnly: sd.ReadOnly})
		ciShares = append(ciShares, cloudinit.Share{Tag: sd.Name, GuestPath: sd.GuestPath, ReadOnly: sd.ReadOnly})
	}
	if len(vm.Secrets) > 0 {
		// The engine stages the files in the share of this tag
		// (stageSecrets); initramfs mode only.
		mounts = append(mounts, guestproto.Mount{Source: "share:" + secretsTag, Target: stackfile.SecretsDir, ReadOnly: true})
	}
	return mounts, ciMounts, ciShares
}

// SeedInput is a cloud-init-mode VM's seed input, without stack's own
// exec keys (the engine adds them; see execKeys).
func (g Guest) SeedInput(vm *stackfile.VM) cloudinit.Input {
	in := cloudinit.Input{VMName: vm.Name, Namespace: g.Namespace, Hosts: g.Peers(vm)}
	for i, n := range g.NICs[vm.Address] {
		net := g.network(n.Network)
		nic := cloudinit.NIC{MAC: n.MAC, Address: netip.PrefixFrom(n.IP, net.Subnet.Bits())}
		if i == 0 {
			nic.Gateway = net.Gateway
		}
		if net.DNS {
			nic.DNS = []netip.Addr{net.Gateway}
		}
		in.NICs = append(in.NICs, nic)
	}
	_, in.Mounts, in.Shares = g.Mounts(vm)
	if vm.CloudInit != nil {
		in.UserData, in.SSHAuthorizedKeys = vm.CloudInit.UserData, vm.CloudInit.SSHAuthorizedKeys
		in.UserDataFile = vm.CloudInit.UserDataRange.Filename
	}
	return in
}

// Config is an initramfs-mode VM's guest init config for the workload
// command and env (the stack file's, or an image's merged with them) and
// root (an image VM's, else nil). hold: the guest holds the workload until
// the host starts it.
func (g Guest) Config(vm *stackfile.VM, command []string, env map[string]string, root *guestproto.Root, hold bool) guestproto.Config {
	mounts, _, _ := g.Mounts(vm)
	nics := g.NICs[vm.Address]
	gc := guestproto.Config{
		Version: guestproto.Version, Hostname: vm.Name, MachineID: vm.MachineID, Hosts: g.Hosts(vm),
		Mounts: mounts, Command: command, Env: env, OneShot: len(command) > 0, HoldWorkload: hold,
		SensitiveCommand: vm.IsSensitive("command") || vm.IsSensitive("entrypoint"),
		Search:           []string{cloudinit.HostsDomain(g.Namespace)}, WatchPorts: probePorts(vm, nics), Root: root,
	}
	for i, n := range nics {
		net := g.network(n.Network)
		nic := guestproto.NIC{MAC: n.MAC, Address: netip.PrefixFrom(n.IP, net.Subnet.Bits())}
		if i == 0 {
			nic.Gateway = net.Gateway
			if net.DNS {
				gc.DNS = []netip.Addr{net.Gateway}
			}
		}
		gc.NICs = append(gc.NICs, nic)
	}
	return gc
}

// Peers lists the other VMs of the stack with the address by which vm
// reaches each: their address on the first network they share with vm.
func (g Guest) Peers(vm *stackfile.VM) []cloudinit.Host {
	mine := map[string]bool{}
	for _, n := range vm.NICs {
		mine[n.Network] = true
	}
	var out []cloudinit.Host
	for _, other := range g.Desired.VMs {
		if other.Address == vm.Address {
			continue
		}
		for _, n := range g.NICs[other.Address] {
			if mine[n.Network] {
				out = append(out, cloudinit.Host{Name: other.Name, IP: n.IP})
				break
			}
		}
	}
	return out
}

// Hosts are the guest init's /etc/hosts lines: the VM itself, then its
// peers, each under its name and its name in the namespace's domain.
func (g Guest) Hosts(vm *stackfile.VM) []guestproto.Host {
	domain := cloudinit.HostsDomain(g.Namespace)
	var out []guestproto.Host
	if nics := g.NICs[vm.Address]; len(nics) > 0 {
		out = append(out, guestproto.Host{IP: nics[0].IP, Names: []string{vm.Name, vm.Name + "." + domain}})
	}
	for _, h := range g.Peers(vm) {
		out = append(out, guestproto.Host{IP: h.IP, Names: []string{h.Name, h.Name + "." + domain}})
	}
	return out
}
