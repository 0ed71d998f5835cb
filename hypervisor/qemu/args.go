package qemu

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/hypervisor"
)

// HostInfo is what BuildArgs needs to know about the host and the guest
// kernel. Driver.Host fills it in, and Start adds the KVM probe's verdict
// and ProbeKernel's answer for each VM; tests set it by hand.
type HostInfo struct {
	// KVM says that KVM runs guests on this host (the probe's verdict, see
	// accel.go); KVMReason says why not, when it does not.
	KVM       bool
	KVMReason string
	// TSCkHz is the host TSC frequency. Under TCG the guest's TSC is the
	// host's, and microvm (no PIT/HPET to calibrate against reliably) hangs
	// now and then in calibration unless told with tsc_early_khz.
	TSCkHz int64
	// GuestMicrovm says whether the guest kernel can find microvm's
	// virtio-mmio devices (CONFIG_VIRTIO_MMIO plus ACPI or
	// CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES).
	GuestMicrovm Support
	// Virtiofsd is the virtio-fs daemon that serves shared directories
	// (QEMU's own ships in Debian's qemu-system-common); "" means 9p.
	Virtiofsd string
	// Sandbox says that QEMU was built with seccomp: VMMs then run under
	// SandboxArg (see ProbeSandbox).
	Sandbox bool
	// Root says that QEMU runs as root (stack does).
	Root bool
}

// SandboxArg is QEMU's seccomp filter for every VMM: on top of QEMU's
// default (no obsolete system calls), a guest that takes QEMU over cannot
// change its user or group, start programs, or change scheduling and
// resource limits. libvirt runs QEMU with the same set.
const SandboxArg = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"

// ProbeSandbox reports whether the QEMU binary takes -sandbox: a build
// without seccomp refuses the option while it parses its command line,
// before -version (parsed after it) ends it, so the probe costs no VM
// start (about 20 ms).
func ProbeSandbox(binary string) bool {
	return exec.Command(binary, "-sandbox", SandboxArg, "-version").Run() == nil
}

// Machine and accelerator names.
const (
	MachineMicrovm = "microvm"
	MachineQ35     = "q35"
	AccelKVM       = "kvm"
	AccelTCG       = "tcg"
)

// ResolveMachine applies "auto": microvm for initramfs-mode guests (those
// with the agent channel) unless the guest kernel is known not to support
// it, and q35 for cloud-init mode, whose distribution initrd may not carry
// the virtio-mmio driver.
func ResolveMachine(cfg *hypervisor.Config, host HostInfo) (string, error) {
	switch cfg.Machine {
	case MachineMicrovm, MachineQ35:
		return cfg.Machine, nil
	case "", "auto":
		if cfg.GuestAgent && host.GuestMicrovm != No {
			return MachineMicrovm, nil
		}
		return MachineQ35, nil
	default:
		return "", fmt.Errorf("resolve machine: unknown machine %q (want auto, microvm or q35)", cfg.Machine)
	}
}

// ResolveAccel applies "auto": KVM when it runs guests here, else TCG.
// "kvm" where it does not is an error with the reason.
func ResolveAccel(cfg *hypervisor.Config, host HostInfo) (string, error) {
	switch cfg.Accel {
	case "", "auto":
		if host.KVM {
			return AccelKVM, nil
		}
		return AccelTCG, nil
	case AccelKVM:
		if !host.KVM {
			reason := host.KVMReason
			if reason == "" {
				reason = "it was not found usable"
			}
			return "", fmt.Errorf(`accel = "kvm", but KVM cannot run guests here: %s (set accel = "auto" or "tcg", or STACK_ACCEL, to use software emulation)`, reason)
		}
		return AccelKVM, nil
	case AccelTCG:
		return AccelTCG, nil
	default:
		return "", fmt.Errorf("resolve accel: unknown accel %q (want auto, kvm or tcg)", cfg.Accel)
	}
}

// maxSocketPath is sun_path's size less its terminating NUL.
const maxSocketPath = 107

// maxSerial is the virtio-blk serial length (VIRTIO_BLK_ID_BYTES).
const maxSerial = 20

// memBackendRAM is the plain memory backend, less its size.
const memBackendRAM = "memory-backend-ram,id=mem,size="

// esc makes s safe as a QEMU option value: commas are doubled.
func esc(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// machineArg is -machine's value for a resolved machine type; extra is
// appended (",memory-backend=mem").
func machineArg(machine, extra string) string {
	if machine == MachineMicrovm {
		// ACPI stays on: the Debian kernels find the virtio-mmio devices
		// through it (they lack CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES) and
		// power off through it.
		return "microvm,acpi=on,rtc=on" + extra
	}
	return machine + extra
}

// BuildArgs returns QEMU's arguments (without the program name) for cfg on
// host. It is pure: files it refers to (the config disk image) are written
// by Start. NICs with an FD get fds 3, 4, ... in NIC order, which is the
// order of ExtraFiles.
func BuildArgs(cfg *hypervisor.Config, host HostInfo) ([]string, error) {
	if err := validate(cfg); err != nil {
		return nil, err
	}
	machine, err := ResolveMachine(cfg, host)
	if err != nil {
		return nil, err
	}
	accel, err := ResolveAccel(cfg, host)
	if err != nil {
		return nil, err
	}
	// virtio-*-device are the virtio-mmio transports microvm provides;
	// q35 takes PCI devices.
	dev := func(kind string) string {
		if machine == MachineMicrovm {
			return "virtio-" + kind + "-device"
		}
		return "virtio-" + kind + "-pci"
	}

	a := []string{
		"-name", "guest=" + esc(cfg.Name) + ",debug-threads=on",
		"-nodefaults", "-no-user-config", "-display", "none",
		// A guest reboot ends the VMM: restarting is the supervisor's
		// decision (restart policy), and panic=-1 below turns a kernel
		// panic into a reboot, hence an exit.
		"-no-reboot",
	}
	if host.Sandbox {
		a = append(a, "-sandbox", SandboxArg)
	}
	// virtio-fs (vhost-user) needs all guest RAM in shared memory, and on
	// microvm the modern virtio-mmio transport: virtiofsd refuses legacy
	// devices. Both only when the VM has shared directories, so that
	// every other VM keeps the plain setup.
	// Every VM's RAM is one named backend ("mem"), so that its RAM block
	// has the same name however it was started: a VM saved (snapshot.go)
	// restores into any backend, and a boot template's memory file takes
	// the backend's place (template.go).
	virtiofs := len(cfg.SharedDirs) > 0 && host.Virtiofsd != ""
	a = append(a, "-machine", machineArg(machine, ",memory-backend=mem"), "-accel", accel)
	if accel == AccelKVM {
		a = append(a, "-cpu", "host")
	} else {
		a = append(a, "-cpu", "max")
	}
	a = append(a,
		"-smp", strconv.Itoa(cfg.CPUs),
		"-m", strconv.Itoa(cfg.MemoryMB),
		"-kernel", cfg.Kernel,
	)
	if virtiofs {
		a = append(a, "-object", "memory-backend-memfd,id=mem,size="+strconv.Itoa(cfg.MemoryMB)+"M,share=on")
		if machine == MachineMicrovm {
			a = append(a, "-global", "virtio-mmio.force-legacy=false")
		}
	} else {
		a = append(a, "-object", memBackendRAM+strconv.Itoa(cfg.MemoryMB)+"M")
	}
	if cfg.Initramfs != "" {
		a = append(a, "-initrd", cfg.Initramfs)
	}
	// quiet: the kernel's boot messages (about 18 KB) cross an emulated
	// UART a byte at a time, each byte a VM exit and, once the console
	// relay reads it, a socket write; relaying them took the supervisor
	// 0.3 s of CPU per two-VM boot, taken from the guests under TCG.
	// Errors still print, and the user's cmdline (last) can say loglevel=7.
	cmdline := []string{"console=ttyS0", "quiet", "panic=-1"}
	if machine == MachineMicrovm && accel == AccelTCG && host.TSCkHz > 0 {
		cmdline = append(cmdline, "tsc_early_khz="+strconv.FormatInt(host.TSCkHz, 10))
	}
	if cfg.Root != nil && !strings.Contains(" "+cfg.Cmdline, " root=") {
		cmdline = append(cmdline, "root=/dev/vda rw") // Root is the first disk
	}
	if c := strings.TrimSpace(cfg.Cmdline); c != "" {
		cmdline = append(cmdline, c) // last, so the user's settings win
	}
	a = append(a, "-append", strings.Join(cmdline, " "))

	// Control and console: unix sockets that QEMU serves; wait=off so QEMU
	// does not block for a client.
	a = append(a,
		"-chardev", "socket,id=qmp,path="+esc(qmpPath(cfg.RunDir))+",server=on,wait=off",
		"-mon", "chardev=qmp,mode=control",
		"-chardev", "socket,id=con0,path="+esc(consoleVMMPath(cfg.RunDir))+",server=on,wait=off",
		"-serial", "chardev:con0",
	)

	for i, d := range disks(cfg) {
		a = append(a, driveArgs(fmt.Sprintf("d%d", i), d, dev("blk"))...)
	}
	if len(cfg.GuestConfig) > 0 {
		a = append(a, driveArgs("cfg", hypervisor.Disk{
			Path: configDiskPath(cfg.RunDir), Format: "raw", ReadOnly: true,
			Serial: guestproto.ConfigDiskSerial,
		}, dev("blk"))...)
	}

	fd := 3
	for i, n := range cfg.NICs {
		id := fmt.Sprintf("n%d", i)
		var nd string
		switch {
		case n.DgramLocal != "":
			nd = "dgram,id=" + id + ",local.type=unix,local.path=" + esc(n.DgramLocal) +
				",remote.type=unix,remote.path=" + esc(n.DgramRemote)
		case n.StreamPath != "":
			nd = "stream,id=" + id + ",server=off,addr.type=unix,addr.path=" + esc(n.StreamPath)
		case n.FD != nil:
			nd = "dgram,id=" + id + ",local.type=fd,local.str=" + strconv.Itoa(fd)
			fd++
		case n.TAP != "":
			nd = "tap,id=" + id + ",ifname=" + esc(n.TAP) + ",script=no,downscript=no"
		}
		a = append(a, "-netdev", nd,
			"-device", dev("net")+",netdev="+id+",mac="+n.MAC.String())
	}

	// Shared directories use virtio-fs when a virtiofsd is at hand (Start
	// runs one per share, listening on VirtiofsSocket before QEMU
	// connects), else 9p. The Debian cloud kernel of the built-in image
	// has virtio-fs but no 9p. With virtio-fs, read_only is the guest's
	// read-only mount: QEMU's C virtiofsd has no read-only mode, so
	// startVirtiofsd serves such a share from a read-only bind mount.
	// 9p's security_model=none: files keep the host user's ownership, and
	// failed chown/chmod from the guest are ignored rather than reported.
	// That is for a QEMU that is not root; as root, QEMU would make what
	// the guest's root asks in the host directory: device nodes, setuid
	// root programs. So a root QEMU keeps the guest's ownership, modes
	// and special files in extended attributes (mapped-xattr): on the
	// host, what the guest creates is a plain file of QEMU's user, mode
	// 0600 (directories 0700).
	for i, s := range cfg.SharedDirs {
		if virtiofs {
			id := fmt.Sprintf("vfs%d", i)
			fsDev := "vhost-user-fs-pci"
			if machine == MachineMicrovm {
				fsDev = "vhost-user-fs-device"
			}
			a = append(a, "-chardev", "socket,id="+id+",path="+esc(virtiofsPath(cfg.RunDir, i)),
				"-device", fsDev+",chardev="+id+",tag="+esc(s.Tag))
			continue
		}
		id := fmt.Sprintf("fs%d", i)
		model := "none"
		if host.Root {
			model = "mapped-xattr"
		}
		fsdev := "local,id=" + id + ",path=" + esc(s.HostPath) + ",security_model=" + model
		if s.ReadOnly {
			fsdev += ",readonly=on"
		}
		a = append(a, "-fsdev", fsdev,
			"-device", dev("9p")+",fsdev="+id+",mount_tag="+esc(s.Tag))
	}

	if cfg.GuestAgent {
		a = append(a,
			"-device", dev("serial")+",id=vser0",
			"-chardev", "socket,id=agent,path="+esc(agentPath(cfg.RunDir))+",server=on,wait=off",
			"-device", "virtserialport,bus=vser0.0,chardev=agent,name="+guestproto.AgentPort,
		)
	}
	return a, nil
}

// disks are the VM's disks in the order the guest sees them: the root
// disk first.
func disks(cfg *hypervisor.Config) []hypervisor.Disk {
	if cfg.Root == nil {
		return cfg.Disks
	}
	return append([]hypervisor.Disk{*cfg.Root}, cfg.Disks...)
}

func driveArgs(id string, d hypervisor.Disk, device string) []string {
	drive := "if=none,id=" + id + ",file=" + esc(d.Path) + ",format=" + d.Format
	if d.ReadOnly {
		drive += ",readonly=on"
	} else {
		drive += ",discard=unmap"
	}
	devArg := device + ",drive=" + id
	if d.Serial != "" {
		devArg += ",serial=" + d.Serial
	}
	return []string{"-drive", drive, "-device", devArg}
}

// validate rejects configs that would give QEMU ambiguous or broken options.
func validate(cfg *hypervisor.Config) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("build qemu args for %q: "+format, append([]any{cfg.Name}, args...)...)
	}
	if cfg.Name == "" {
		return errors.New("build qemu args: empty VM name")
	}
	if !filepath.IsAbs(cfg.RunDir) {
		return bad("run dir %q is not absolute", cfg.RunDir)
	}
	for _, p := range []string{qmpPath(cfg.RunDir), consoleVMMPath(cfg.RunDir), agentPath(cfg.RunDir)} {
		if len(p) > maxSocketPath {
			return bad("socket path %s is longer than %d bytes", p, maxSocketPath)
		}
	}
	if cfg.CPUs < 1 || cfg.CPUs > 255 {
		return bad("cpus %d out of range 1..255", cfg.CPUs)
	}
	if cfg.MemoryMB < 32 {
		return bad("memory %d MB is below 32", cfg.MemoryMB)
	}
	if !filepath.IsAbs(cfg.Kernel) {
		return bad("kernel path %q is not absolute", cfg.Kernel)
	}
	if cfg.Initramfs != "" && !filepath.IsAbs(cfg.Initramfs) {
		return bad("initramfs path %q is not absolute", cfg.Initramfs)
	}
	for i, d := range disks(cfg) {
		if !filepath.IsAbs(d.Path) {
			return bad("disk %d path %q is not absolute", i, d.Path)
		}
		if d.Format != "raw" && d.Format != "qcow2" {
			return bad("disk %d format %q (want raw or qcow2)", i, d.Format)
		}
		if err := checkSerial(d.Serial); err != nil {
			return bad("disk %d: %v", i, err)
		}
		if d.Serial == guestproto.ConfigDiskSerial {
			return bad("disk %d uses the reserved serial %q", i, d.Serial)
		}
	}
	for i, n := range cfg.NICs {
		set := 0
		if n.DgramLocal != "" || n.DgramRemote != "" {
			set++
			if n.DgramLocal == "" || n.DgramRemote == "" {
				return bad("nic %d: datagram transport needs both local and remote paths", i)
			}
		}
		if n.StreamPath != "" {
			set++
		}
		if n.FD != nil {
			set++
		}
		if n.TAP != "" {
			set++
		}
		if set != 1 {
			return bad("nic %d has %d transports, want exactly one", i, set)
		}
		if n.MAC.IsZero() || n.MAC.IsMulticast() {
			return bad("nic %d: MAC %s is not a unicast address", i, n.MAC)
		}
	}
	for i, s := range cfg.SharedDirs {
		if s.Tag == "" || strings.ContainsAny(s.Tag, ", =") || len(s.Tag) > 31 {
			return bad("shared dir %d: bad tag %q (1-31 bytes, no comma, space or '=')", i, s.Tag)
		}
		if !filepath.IsAbs(s.HostPath) {
			return bad("shared dir %d path %q is not absolute", i, s.HostPath)
		}
	}
	if strings.ContainsAny(cfg.Cmdline, "\n\x00") {
		return bad("kernel cmdline contains a newline or NUL")
	}
	return nil
}

func checkSerial(s string) error {
	if len(s) > maxSerial {
		return fmt.Errorf("serial %q longer than %d bytes", s, maxSerial)
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return fmt.Errorf("serial %q: only letters, digits, '-', '_' and '.' allowed", s)
		}
	}
	return nil
}

// extraFiles are the fds BuildArgs numbered from 3, in the same order.
func extraFiles(cfg *hypervisor.Config) []*os.File {
	var fs []*os.File
	for _, n := range cfg.NICs {
		if n.FD != nil {
			fs = append(fs, n.FD)
		}
	}
	return fs
}

// ConfigDiskImage pads the guest config with zeros to a multiple of 512
// bytes, the shape the guest init reads (it stops at the first NUL).
func ConfigDiskImage(guestConfig []byte) []byte {
	n := (len(guestConfig) + 511) / 512 * 512
	if n == 0 {
		n = 512
	}
	img := make([]byte, n)
	copy(img, guestConfig)
	return img
}
