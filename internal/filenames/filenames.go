// Package filenames defines every on-disk name stack uses, in one place: the
// state, runtime and cache roots, and the files under them. Nothing else in
// the tree spells a file name of its own.
//
// Layout:
//
//	<state>/<namespace>/state.json        the namespace's state (0600)
//	<state>/<namespace>/state.lock        flock held by mutating commands
//	<state>/<namespace>/volumes/<v>.img   persistent volumes
//	<state>/<namespace>/vms/<vm>/         per-VM disks, seed, console log
//	<run>/<short>/                        per-namespace sockets (0700)
//	<run>/<short>/net-<h>/{d,s}-<h>.sock  a network's switch port sockets
//	<cache>/guest/<hash>/                 the built-in guest image
//	<cache>/kernels/<package>_<version>/  unpacked Debian kernel packages
//
// Unix socket paths are limited to 107 bytes, so runtime directories use a
// short hash of the namespace rather than its (up to 63-byte) name.
package filenames

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
)

// Directory and file modes: state and sockets are private to the user.
const (
	DirMode  os.FileMode = 0o700
	FileMode os.FileMode = 0o600
)

// Files under a namespace's state directory.
const (
	StateFile = "state.json"
	LockFile  = "state.lock"
	VolumeDir = "volumes"
	VMDir     = "vms"
	// NetworkDir holds the supervisor's record of each running network.
	NetworkDir = "networks"
	// SupervisorLog is the supervisor's own log.
	SupervisorLog = "supervisor.log"
)

// VMRecord is the supervisor's durable record of a VM (spec, process,
// status), inside the VM's state directory.
const VMRecord = "vm.json"

// SupervisorSocket is the supervisor's control socket, inside the
// namespace's runtime directory.
const SupervisorSocket = "supervisor.sock"

// NetworkRecord is the supervisor's durable record of a running network.
func NetworkRecord(stateRoot, namespace, network string) string {
	return filepath.Join(stateRoot, namespace, NetworkDir, network+".json")
}

// Files under a VM's state directory.
const (
	ConsoleLog    = "console.log"
	ConsoleLogOld = "console.log.1" // the previous console log, after rotation
	OverlayDisk   = "root.qcow2"
	SeedISO       = "seed.iso"
	ScratchPrefix = "scratch-" // scratch-<disk>.img
	ConfigDisk    = "config.img"
	// HashSuffix names the sidecar that holds the hash of a generated
	// file's inputs (seed.iso.hash), for files whose bytes are not
	// reproducible and so cannot be compared directly.
	HashSuffix = ".hash"
)

// Files under a VM's runtime directory.
const (
	QMPSocket     = "qmp.sock"
	ConsoleSocket = "console.sock"
	// ConsoleVMMSocket is the VMM's own end of the serial console, which
	// only the console relay connects to; clients use ConsoleSocket.
	ConsoleVMMSocket = "console-vmm.sock"
	// ArgsFile records the VMM's argv (JSON), for debugging and re-adoption.
	ArgsFile = "vmm.args"
	// RunConfigDisk is the guest config disk when the driver writes it
	// itself (it only lives as long as the VM's runtime directory).
	RunConfigDisk = "config.img"
	AgentSocket   = "agent.sock"
	PIDFile       = "vmm.pid"
	StderrFile    = "vmm.stderr"
)

// Files in a built guest image directory (<cache>/guest/<hash>/).
const (
	GuestKernel = "vmlinuz"
	// GuestKernelConfig is the kernel's build config, where the QEMU
	// driver's ProbeKernel looks for it (<kernel>.config).
	GuestKernelConfig = "vmlinuz.config"
	GuestInitramfs    = "initramfs.cpio" // + ".gz" when built compressed
	GuestInitBuild    = "init-build"     // <cache>/guest/init-build/: stack-init built from source
	GuestManifest     = "manifest.json"
)

// Paths inside the built-in guest image, as the guest init sees them. The
// builder (package guestimage) writes them; the init (package guestinit)
// reads them.
const (
	// GuestModuleList lists the kernel modules to load as "<group> <absolute
	// path>" lines, each group's lines in load order (dependencies first);
	// # starts a comment.
	GuestModuleList = "/etc/stack/modules.load"
)

// StateRoot is where state lives: $STACK_STATE_DIR, else
// $XDG_STATE_HOME/stack, else ~/.local/state/stack.
func StateRoot() string {
	if d := os.Getenv("STACK_STATE_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "stack")
	}
	return filepath.Join(homeDir(), ".local", "state", "stack")
}

// RuntimeRoot is where sockets live: $XDG_RUNTIME_DIR/stack, else
// /tmp/stack-<uid>.
func RuntimeRoot() string {
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "stack")
	}
	return filepath.Join(os.TempDir(), "stack-"+strconv.Itoa(os.Getuid()))
}

// CacheRoot is where built artefacts are cached: $STACK_CACHE_DIR, else
// $XDG_CACHE_HOME/stack, else ~/.cache/stack.
func CacheRoot() string {
	if d := os.Getenv("STACK_CACHE_DIR"); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "stack")
	}
	return filepath.Join(homeDir(), ".cache", "stack")
}

// NamespaceState is the state directory of a namespace.
func NamespaceState(stateRoot, namespace string) string {
	return filepath.Join(stateRoot, namespace)
}

// VMState is the state directory of one VM instance (disks, seed, log).
func VMState(stateRoot, namespace, vm string) string {
	return filepath.Join(stateRoot, namespace, VMDir, vm)
}

// Volume is the image file of a persistent volume.
func Volume(stateRoot, namespace, volume string) string {
	return filepath.Join(stateRoot, namespace, VolumeDir, volume+".img")
}

// NamespaceRuntime is the runtime directory of a namespace. Its last element
// is a 12-hex-digit hash so that socket paths stay short.
func NamespaceRuntime(runtimeRoot, namespace string) string {
	return filepath.Join(runtimeRoot, shortHash(namespace))
}

// VMRuntime is the runtime directory of one VM (QMP, console and agent
// sockets). VM names can be 63 bytes long, so they are hashed too.
func VMRuntime(runtimeRoot, namespace, vm string) string {
	return filepath.Join(NamespaceRuntime(runtimeRoot, namespace), "vm-"+shortHash(vm))
}

// NetworkRuntime is the runtime directory of one network's switch.
func NetworkRuntime(runtimeRoot, namespace, network string) string {
	return filepath.Join(NamespaceRuntime(runtimeRoot, namespace), "net-"+shortHash(network))
}

// SwitchDgramSocket is the file name, inside NetworkRuntime, of the
// switch's datagram socket for one port (a VM's NIC). Port names carry VM
// names, so they are hashed to keep socket paths short.
func SwitchDgramSocket(port string) string {
	return "d-" + shortHash(port) + ".sock"
}

// SwitchStreamSocket is the file name, inside NetworkRuntime, of the
// switch's stream listener for one port.
func SwitchStreamSocket(port string) string {
	return "s-" + shortHash(port) + ".sock"
}

// GuestImage is the cache directory of a built guest image, keyed by the
// hash of its inputs.
func GuestImage(cacheRoot, key string) string {
	return filepath.Join(cacheRoot, "guest", key)
}

// Image is the cache directory of a prebuilt VM image, such as the Debian
// cloud image that scripts/build-debian-image.sh makes (images/debian-12).
func Image(cacheRoot, name string) string {
	return filepath.Join(cacheRoot, "images", name)
}

// KernelCache is the directory of one unpacked kernel package.
func KernelCache(cacheRoot, pkg, version string) string {
	return filepath.Join(cacheRoot, "kernels", pkg+"_"+version)
}

func shortHash(s string) string {
	h := sha256.Sum256([]byte(s))
	return hex.EncodeToString(h[:6])
}

func homeDir() string {
	if h, err := os.UserHomeDir(); err == nil {
		return h
	}
	return os.TempDir()
}

// NICSocket is the VMM's end of NIC i's datagram socket, inside the VM's
// runtime directory.
func NICSocket(i int) string { return "nic" + strconv.Itoa(i) + ".sock" }
