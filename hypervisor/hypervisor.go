// Package hypervisor owns the driver interface between the supervisor and a
// virtual machine monitor. A driver turns a typed Config into a running VMM
// process that outlives the calling process, and re-adopts it later from its
// recorded Identity. Implementations live in sub-packages (qemu first).
package hypervisor

import (
	"context"
	"errors"
	"os"
	"syscall"
	"time"

	"github.com/stackvm/stack/internal/netaddr"
)

// ErrGone is returned by Attach when the recorded process no longer exists
// (or its pid was reused by another process).
var ErrGone = errors.New("vmm process is gone")

// Driver starts and re-adopts VMMs of one kind.
type Driver interface {
	// Name is the driver's name as written in a stack file ("qemu").
	Name() string
	// Start launches the VMM for cfg as a detached process (its own session)
	// and returns once the VMM is running and controllable; it does not
	// wait for the guest to boot.
	Start(ctx context.Context, cfg *Config) (Instance, error)
	// Attach re-adopts a VMM started earlier, possibly by another process.
	// It returns ErrGone (wrapped) when the identity no longer matches a
	// live process. A VMM that its earlier owner left paused (killed in
	// the middle of making a boot template) runs again.
	Attach(ctx context.Context, id Identity) (Instance, error)
	// Flatten rewrites a save (Instance.Save) into the form that restores
	// fastest, without the VM: run it once the VM goes on. A save that
	// was not flattened restores all the same, slower.
	Flatten(ctx context.Context, dir string) error
	// CheckSnapshot reports whether a Start of cfg (Snapshot set) would
	// restore its save: ErrSnapshotShape (wrapped) when cfg is not the VM
	// that was saved. It starts nothing.
	CheckSnapshot(ctx context.Context, cfg *Config) error
}

// Instance is a handle on one running VMM. Handles are not shared between
// processes; Close releases this process's handle and leaves the VMM running.
type Instance interface {
	Identity() Identity
	// State asks the VMM for its run state.
	State(ctx context.Context) (RunState, error)
	// Stop asks the guest to power off and waits up to timeout for the VMM
	// to exit, then forces it to quit; it returns once the process is gone.
	Stop(ctx context.Context, timeout time.Duration) error
	// Kill ends the VMM process at once (SIGKILL).
	Kill() error
	// Signal sends sig to the VMM process (`stack kill -s`).
	Signal(sig syscall.Signal) error
	// Wait blocks until the VMM process exits and reports how.
	Wait(ctx context.Context) (ExitStatus, error)
	// Guest returns the guest agent channel, or nil for guests without one
	// (cloud-init mode).
	Guest() GuestChannel
	// Accel says which accelerator the VMM runs under ("" when unknown: a
	// re-adopted VMM whose command line is gone).
	Accel() Accel
	// Boot says how the VMM came up: booted cold, or restored from a boot
	// template (Config.Template).
	Boot() Boot
	// Parked is called when the guest reports that it waits at its park
	// point (see guestproto.ParkArg). A VMM started to make a boot
	// template makes it now, while the guest waits. It returns when the
	// guest may be told to go on; failing to make a template is not an
	// error for the VM (it is logged and the template dropped).
	Parked(ctx context.Context) error
	// Claim makes a VMM started paused (Config.Paused) the VM of cfg: its
	// guest will read cfg's guest config, then its CPUs run. Its NICs are
	// the ones it was started with; the guest gives them cfg's MACs.
	Claim(ctx context.Context, cfg *Config) error
	// Pause stops the guest's CPUs; Resume lets them run again. A VMM
	// paused for a save is resumed by the caller, whatever the save did.
	Pause(ctx context.Context) error
	Resume(ctx context.Context) error
	// DiskBytes is how many bytes the VM read from and wrote to its disks.
	DiskBytes(ctx context.Context) (read, written uint64, err error)
	// Save writes the paused VMM's memory and device state into dir (an
	// empty directory), for a later Start with Config.Snapshot. The VMM
	// stays paused. Disks are the caller's: their contents at the save
	// are what a restored VM must be started with.
	Save(ctx context.Context, dir string) (Saved, error)
	Close() error
}

// Saved describes what Instance.Save wrote.
type Saved struct {
	Bytes int64         // on disk
	Took  time.Duration // from the call to the last byte written
}

// Boot says how a VMM came up.
type Boot struct {
	Kind BootKind `json:"kind"`
	// Took is how long the restore took (BootTemplate).
	Took time.Duration `json:"took,omitempty"`
	// Note, when set, says why a template was not used although one was
	// asked for and there, for the user to read once (a restore failed).
	Note string `json:"note,omitempty"`
}

// BootKind is how a VMM came up.
type BootKind string

// Restored reports whether the VMM was restored from a template (taken from
// a pool or not): its guest was parked, and is the template's until told.
func (k BootKind) Restored() bool { return k == BootTemplate || k == BootPool }

const (
	BootCold     BootKind = "cold"
	BootTemplate BootKind = "template"
	BootPool     BootKind = "pool" // restored ahead of time, and claimed
	BootSnapshot BootKind = "snapshot"
)

// Accel is the accelerator a VMM runs under. Fallback is set when "auto"
// chose software emulation although the host has a KVM device: it says
// why KVM was not used, for the user to read once.
type Accel struct {
	Name     string `json:"name"` // kvm | tcg
	Fallback string `json:"fallback,omitempty"`
}

// RunState is the VMM's view of the guest.
type RunState string

const (
	StateRunning  RunState = "running"
	StatePaused   RunState = "paused"
	StateShutdown RunState = "shutdown"
	StateExited   RunState = "exited"
)

// Identity is what is recorded in state to re-adopt a VMM: a pid alone can be
// reused, so the process start time (field 22 of /proc/PID/stat, in clock
// ticks since boot) is recorded beside it.
type Identity struct {
	Driver    string `json:"driver"`
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
	RunDir    string `json:"run_dir"`
}

// ExitStatus says how a VMM process ended.
type ExitStatus struct {
	// Code is the process exit code, or -1 when it was killed by Signal.
	Code   int            `json:"code"`
	Signal syscall.Signal `json:"signal,omitempty"`
	// GuestShutdown is true when the guest powered itself off (as opposed to
	// the VMM being killed or crashing).
	GuestShutdown bool `json:"guest_shutdown"`
	// Known is false when the process was not our child and its status
	// could not be observed (re-adopted VMM that died while unwatched).
	Known bool `json:"known"`
}

// Config is everything a driver needs to start one VM. Paths are absolute.
type Config struct {
	Name   string // VM name, used for QEMU's -name and in logs
	RunDir string // per-VM runtime directory (0700), created by the caller

	CPUs     int
	MemoryMB int

	Kernel    string
	Initramfs string // optional
	Cmdline   string // what the guest needs; drivers add their own (console=...)

	// Machine is "auto", "microvm" or "q35". Accel is "auto", "kvm" or "tcg";
	// auto picks KVM when the host's KVM has been seen to run a guest (the
	// driver probes it once per host boot), else TCG.
	Machine string
	Accel   string

	NICs []NIC
	// Root, when set, is the root file system's disk (cloud-init mode): it
	// comes first, and the driver tells the kernel to mount it read-write
	// unless Cmdline names a root= of its own.
	Root       *Disk
	Disks      []Disk
	SharedDirs []SharedDir

	// GuestAgent adds the virtio-serial channel the guest init talks on
	// (initramfs mode). GuestConfig is the guest init's configuration,
	// delivered to the guest (see package guestproto).
	GuestAgent  bool
	GuestConfig []byte

	// ConsoleLogMax caps the console log file in bytes (0: driver default).
	ConsoleLogMax int64

	// Template lets the driver boot the VM from a boot template of its
	// shape, or make one while it boots (the guest then parks: see
	// guestproto.ParkArg). Drivers use templates only for the shapes they
	// can restore (QEMU: initramfs mode without shared directories) and
	// boot the others cold.
	Template bool
	// Paused restores the VM from the template of its shape and leaves it
	// paused, parked, to be handed to a VM later by Instance.Claim (a warm
	// pool). Start fails with ErrNoTemplate when the shape has none.
	Paused bool
	// Snapshot, when set, is a directory that Instance.Save wrote: the VMM
	// starts from it (memory, CPUs and devices as they were saved) instead
	// of booting, and is left paused until Resume. cfg must describe the
	// VM as it was started (the driver refuses one whose shape differs),
	// and its disks must hold what they held at the save.
	Snapshot string
}

// ErrSnapshotShape: a Config.Snapshot start whose VM is not the one saved
// (its devices, memory, kernel or VMM changed since).
var ErrSnapshotShape = errors.New("the VM is not the one that was saved")

// ErrNoTemplate: a paused start (Config.Paused) found no template of the
// VM's shape.
var ErrNoTemplate = errors.New("no boot template of this shape yet")

// NIC is one network interface. Exactly one of the transports is set.
type NIC struct {
	MAC netaddr.MAC
	// Datagram unix sockets, one frame per datagram: the VMM binds
	// DgramLocal and sends to DgramRemote (the switch port).
	DgramLocal, DgramRemote string
	// StreamPath is a unix stream socket the VMM connects to (frames with a
	// 4-byte big-endian length prefix).
	StreamPath string
	// FD is one end of a socketpair(AF_UNIX, SOCK_DGRAM) passed to the VMM.
	FD *os.File
	// TAP is the name of an existing TAP device.
	TAP string
}

// Disk is a block device for the guest.
type Disk struct {
	Path     string
	Format   string // raw | qcow2
	ReadOnly bool
	// Serial is visible in the guest (/sys/block/vdX/serial) so that the
	// guest can find a disk by name rather than by probe order.
	Serial string
}

// SharedDir is a host directory exported to the guest under Tag.
type SharedDir struct {
	Tag      string
	HostPath string
	ReadOnly bool
}

// GuestChannel is the host end of the guest agent channel.
type GuestChannel interface {
	// Events delivers the guest's reports in order. On every (re)connect the
	// guest first sends its current state, so a re-adopted VM's readiness
	// and exit are never lost. The channel closes when the VMM exits or the
	// instance is closed.
	Events() <-chan []byte
	// Send writes one message (see guestproto) to the guest.
	Send(ctx context.Context, msg []byte) error
}
