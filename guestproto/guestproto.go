// Package guestproto is the wire contract between the host and the guest init
// (PID 1 of initramfs-mode VMs). It holds no I/O: the host side lives in the
// hypervisor drivers, the guest side in package guestinit.
//
// Transport. The guest's configuration reaches it as a JSON Config on a small
// read-only virtio disk whose serial is ConfigDiskSerial (the JSON is
// zero-padded to a multiple of 512 bytes; the guest stops at the first NUL).
// After boot the guest and host exchange newline-delimited JSON Messages on
// the virtio-serial port named AgentPort. Whenever the host side (re)connects
// it sends a "hello", and the guest answers with a "hello" carrying its
// current Status, so a host that re-adopts a running VM learns its readiness
// and exit without replay. (The guest also sends one when it sees the port
// open, but a guest blocked in read() cannot always see a quick reconnect:
// the host's hello is what makes the exchange reliable.)
//
// Reconnects (measured with QEMU 7.2 and Debian's 6.1 kernel): the guest
// learns of the host connecting or leaving from virtio-serial control
// events (POLLHUP on the port clears or sets). A host that disconnects and
// reconnects quickly can do so unseen: QEMU queues both events and the
// guest may handle them together. So after connecting, the host should send
// a "hello" of its own (no fields needed); the guest answers every host
// hello with a hello carrying its Status. Hosts must therefore accept a
// hello at any time, and possibly two after one connect. The guest drops
// messages produced while no host is connected; the next hello carries the
// state they described. A host hello sent before the guest's agent is up
// (early boot) waits in QEMU, which passes no host input to the port until
// the guest opens it, and is answered then (checked by guestimage's
// TestBootThroughQEMUDriver: two hellos arrive before "ready").
package guestproto

import (
	"encoding/json"
	"net/netip"

	"github.com/stackvm/stack/internal/netaddr"
)

const (
	// ConfigDiskSerial is the virtio-blk serial of the config disk.
	ConfigDiskSerial = "stack-config"
	// AgentPort is the virtio-serial port name (/dev/virtio-ports/<name>).
	AgentPort = "org.stackvm.agent"
	// Version is bumped on incompatible changes.
	Version = 1
)

// Config is what the guest init needs to bring the VM up.
type Config struct {
	Version  int    `json:"version"`
	Hostname string `json:"hostname"`
	// MachineID is written to /etc/machine-id (32 lower-case hex digits).
	MachineID string            `json:"machine_id,omitempty"`
	Hosts     []Host            `json:"hosts,omitempty"` // written to /etc/hosts
	NICs      []NIC             `json:"nics,omitempty"`
	DNS       []netip.Addr      `json:"dns,omitempty"`    // resolv.conf nameservers
	Search    []string          `json:"search,omitempty"` // resolv.conf search domains
	Mounts    []Mount           `json:"mounts,omitempty"`
	Command   []string          `json:"command,omitempty"` // the workload; none: stay up idle
	Env       map[string]string `json:"env,omitempty"`
	// SensitiveCommand says Command holds a value derived from a sensitive
	// variable: the guest init does not log it (its log is the console,
	// which the host keeps in a file).
	SensitiveCommand bool `json:"sensitive_command,omitempty"`
	// OneShot powers the VM off when the workload exits.
	OneShot bool `json:"one_shot,omitempty"`
	// HoldWorkload makes the guest finish its bring-up and then wait for
	// the host's TypeStart before it starts the workload (and reports
	// ready): a VM can boot while the VMs it depends on are still getting
	// ready, and its workload still starts after them.
	HoldWorkload bool `json:"hold_workload,omitempty"`
	// WatchPorts are TCP ports that the host's readiness probe checks.
	// Once the workload runs, the guest watches for a socket listening on
	// each and says so (TypeListening) as soon as one does, so that the
	// host probes then rather than at its next tick. The probe still
	// decides readiness: this only tells it when to look.
	WatchPorts []int `json:"watch_ports,omitempty"`
	// Root, when set, runs the workload and exec sessions inside an OCI
	// image's root file system (see Root). Mounts' targets are then paths
	// inside it.
	Root *Root `json:"root,omitempty"`
}

// Root is an OCI image's root file system as a VM runs it: the image's
// file system (a read-only disk, shared by every VM of the image) under an
// overlay whose writable layer is the VM's own (another disk, ext4, which
// the host formats). The guest init mounts it, with /proc, /sys, /dev and
// the VM's /etc/hosts, /etc/resolv.conf and /etc/hostname in it, mounts
// Config.Mounts at their targets inside it, and runs the workload and
// exec sessions chrooted into it, as User, in WorkingDir. Config.Command
// and Config.Env are final: the host has already merged the image's
// entrypoint, command and environment with the stack file's.
type Root struct {
	Image string `json:"image"` // serial of the image's disk (ImageDiskSerial)
	Upper string `json:"upper"` // serial of the writable layer's disk (UpperDiskSerial)
	// WorkingDir is the workload's directory inside the root ("": /).
	WorkingDir string `json:"working_dir,omitempty"`
	// User is NAME, UID, NAME:GROUP or UID:GID, resolved in the image's
	// /etc/passwd and /etc/group ("": root). HOME, unless Env sets it, is
	// the user's home directory there.
	User string `json:"user,omitempty"`
}

// Disk serials of an image VM's root (Root).
const (
	ImageDiskSerial = "stack-image"
	UpperDiskSerial = "stack-rootfs-rw"
)

// Host is one /etc/hosts line.
type Host struct {
	IP    netip.Addr `json:"ip"`
	Names []string   `json:"names"`
}

// NIC configures the interface whose MAC matches.
type NIC struct {
	MAC     netaddr.MAC  `json:"mac"`
	Address netip.Prefix `json:"address,omitzero"` // e.g. 10.42.0.2/24; none with DHCP
	Gateway netip.Addr   `json:"gateway,omitzero"`
	DHCP    bool         `json:"dhcp,omitempty"`
}

// Mount is a disk or shared directory to mount.
type Mount struct {
	// Source is "disk:<serial>" for a block device found by its serial, or
	// "share:<tag>" for a shared directory.
	Source   string `json:"source"`
	Target   string `json:"target"`
	FSType   string `json:"fstype,omitempty"` // ext4, 9p, virtiofs; "" picks by source
	ReadOnly bool   `json:"read_only,omitempty"`
	// Format marks a disk that stack formats (volumes, scratch disks). The
	// HOST formats it (mkfs.ext4) before boot; the guest never runs mkfs.
	// A Format disk found without a filesystem is reported as an error.
	Format bool `json:"format,omitempty"`
}

// Message types.
const (
	TypeHello    = "hello"    // host → guest on connect; guest → host in reply, with Status; host → guest: "send me a hello"
	TypeReady    = "ready"    // guest → host once configured and the workload started
	TypeExit     = "exit"     // guest → host when the workload exited
	TypeError    = "error"    // guest → host: bring-up failed, Error says why
	TypeLog      = "log"      // guest → host: a line from the init for the host's log
	TypePoweroff = "poweroff" // host → guest: stop the workload and power off
	TypeStart    = "start"    // host → guest: start the held workload (HoldWorkload)
	// TypeUnpark: host → guest, with an Unpark body: leave the park point
	// (see ParkArg) and bring the VM up.
	TypeUnpark = "unpark"
	// TypeResumed: host → guest, with a Resumed body, once a VM restored
	// from a snapshot runs again: it takes the host's clock and entropy.
	TypeResumed = "resumed"
	// TypeListening: guest → host when a port of Config.WatchPorts starts
	// listening; Status.Listening lists those that do.
	TypeListening = "listening"
	// Exec sessions: the host sends TypeExec with an ID and an ExecRequest
	// body; the guest answers with any number of TypeExecOutput messages
	// (ExecOutput bodies) and one TypeExecExit (ExecExit), all with that ID.
	// While the session runs the host may send TypeExecInput messages
	// (ExecInput) with the same ID, in order; the guest acknowledges each
	// stdin chunk with a TypeExecInputAck (ExecInputAck) once the command's
	// input has taken it, and the host keeps at most ExecInputWindow bytes
	// unacknowledged, so a command that does not read its input holds the
	// sender back instead of filling the guest's memory.
	TypeExec         = "exec"
	TypeExecOutput   = "exec-output"
	TypeExecExit     = "exec-exit"
	TypeExecInput    = "exec-input"
	TypeExecInputAck = "exec-input-ack"
)

// ParkArg on the kernel command line makes the guest init stop at its park
// point: the kernel has booted, the modules are loaded and the agent
// channel is up, but nothing that differs from one VM to another has been
// read (the config disk, the NICs' addresses, the disks' contents). It
// reports Status.Parked and waits for TypeUnpark. Everything before the
// park point is the same for every VM of one shape, which is what makes a
// snapshot taken there (a boot template) a valid start for any of them.
const ParkArg = "stack.park"

// Unpark is the body of TypeUnpark: what a VM restored from a template
// must not keep from the template.
type Unpark struct {
	// Time is the host's wall clock (Unix nanoseconds): the guest's clock
	// resumes at the snapshot's time otherwise.
	Time int64 `json:"time"`
	// Entropy is mixed into the guest's random pool, and the pool
	// reseeded (see Resumed).
	Entropy []byte `json:"entropy,omitempty"`
	// Restored: the VM was restored from a template, so its disks' and
	// NICs' state in the guest belongs to the template's VM: the guest
	// drops the disks' cached blocks before reading them and finds its
	// NICs by position, giving each the MAC of its config.
	Restored bool `json:"restored,omitempty"`
	// Config, when set, is the guest's Config, which it then takes from
	// here rather than from its config disk (a restored guest is told at
	// once, without a disk read).
	Config json.RawMessage `json:"config,omitempty"`
}

// Resumed is the body of TypeResumed: what a VM restored from a snapshot
// must not keep from the moment it was saved. Its clock resumes at the
// save's time, and another VM restored from the same snapshot has the same
// random generator state.
type Resumed struct {
	Time    int64  `json:"time"` // the host's wall clock, Unix nanoseconds
	Entropy []byte `json:"entropy,omitempty"`
}

// ValidMachineID reports whether id is a machine ID as /etc/machine-id
// holds it: 32 lower-case hexadecimal digits, not all zero.
func ValidMachineID(id string) bool {
	if len(id) != 32 || id == "00000000000000000000000000000000" {
		return false
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// MaxUnparkConfig bounds the config an Unpark carries: the agent port's
// lines are at most 1 MiB. A larger config stays on the config disk only.
const MaxUnparkConfig = 512 << 10

// NinePMountOptions mount a shared directory over 9p, the fallback when the
// host offers no virtio-fs. Both kinds of guest use them: the guest init,
// and the mount script of cloud-init seeds (package cloudinit).
const NinePMountOptions = "trans=virtio,version=9p2000.L,msize=262144"

// ExecInputWindow bounds the stdin bytes in flight to one exec session.
const ExecInputWindow = 256 << 10

// ExecRequest runs a command in the guest beside the workload.
type ExecRequest struct {
	Argv []string          `json:"argv"`
	Env  map[string]string `json:"env,omitempty"` // added to the workload's environment
	Dir  string            `json:"dir,omitempty"` // default /
	// Stdin: the host streams the command's standard input in
	// TypeExecInput messages. Without it the command's input is empty.
	Stdin bool `json:"stdin,omitempty"`
	// TTY runs the command on a new pseudo-terminal (its controlling
	// terminal, in a new session): its stdout and stderr both come out as
	// "stdout" output.
	TTY *TTY `json:"tty,omitempty"`
}

// TTY is the terminal an exec runs on.
type TTY struct {
	Term string `json:"term,omitempty"` // $TERM for the command; "" keeps the workload's
	WindowSize
}

// WindowSize is a terminal's size in characters.
type WindowSize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// ExecInput is one step of an exec session's input; one field is set.
type ExecInput struct {
	// Data goes to the command's standard input.
	Data []byte `json:"data,omitempty"`
	// EOF closes the command's standard input. With a TTY it is ignored,
	// as sshd does: a terminal has no end of input, the command sees one
	// when the terminal's EOF character (Ctrl-D) is typed.
	EOF bool `json:"eof,omitempty"`
	// Size is a new window size (TTY only).
	Size *WindowSize `json:"size,omitempty"`
	// Hangup: the client went away. The command's input closes and a TTY
	// hangs up (the command gets SIGHUP, as with a closed SSH session);
	// the command is not killed otherwise.
	Hangup bool `json:"hangup,omitempty"`
}

// ExecInputAck acknowledges N bytes of ExecInput.Data.
type ExecInputAck struct {
	N int `json:"n"`
}

// ExecOutput is a chunk of a command's output.
type ExecOutput struct {
	Stream string `json:"stream"` // "stdout" or "stderr"
	Data   []byte `json:"data"`
}

// ExecExit ends an exec session: the exit code (128+signal when killed), or
// Error when the command could not start (Code is then 127 or 126).
type ExecExit struct {
	Code  int    `json:"code"`
	Error string `json:"error,omitempty"`
}

// Message is one line on the agent port.
type Message struct {
	Type   string  `json:"type"`
	Status *Status `json:"status,omitempty"`
	Error  string  `json:"error,omitempty"`
	Text   string  `json:"text,omitempty"`
	// ID and Body carry request-scoped data for later message types (exec).
	ID   string          `json:"id,omitempty"`
	Body json.RawMessage `json:"body,omitempty"`
}

// Status is the guest's current state.
type Status struct {
	Ready bool `json:"ready"`
	// Held: bring-up is done and the workload waits for TypeStart.
	Held bool `json:"held,omitempty"`
	// Parked: the init waits at its park point for TypeUnpark.
	Parked    bool              `json:"parked,omitempty"`
	Addresses map[string]string `json:"addresses,omitempty"` // MAC → IPv4 address
	// Exited and ExitCode describe the workload; a signalled workload has
	// ExitCode 128+signal, as a shell would report it.
	Exited   bool   `json:"exited"`
	ExitCode int    `json:"exit_code"`
	Error    string `json:"error,omitempty"`
	// Listening are the ports of Config.WatchPorts seen listening.
	Listening []int `json:"listening,omitempty"`
	// MemTotal and MemAvailable are the guest kernel's view of its memory
	// (/proc/meminfo), in bytes, as of this report: `stack stats` asks
	// for a report (TypeHello) to read them.
	MemTotal     uint64 `json:"mem_total,omitempty"`
	MemAvailable uint64 `json:"mem_available,omitempty"`
}
