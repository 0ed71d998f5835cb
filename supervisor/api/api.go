// Package api is the wire protocol of a namespace's supervisor: the types
// that cross its control socket, and nothing of the packages on either side
// (the engine's state file, the hypervisor driver's config). The supervisor
// (package supervisor) serves it; package supervisor/client calls it.
//
// One connection carries one request and one response, except for watch (a
// stream of Events until the connection closes) and exec (a stream of
// ExecEvents, with ExecInputs from the client on the same connection). Every
// message is one JSON value. Version says which protocol a supervisor
// speaks: a client refuses a supervisor of another version rather than
// guess at its messages.
package api

import (
	"encoding/json"
	"net/netip"
	"slices"
	"time"

	"github.com/stackvm/stack/internal/netaddr"
)

// MAC is a NIC's Ethernet address.
type MAC = netaddr.MAC

// Version is the protocol version; it changes with any incompatible change
// of the messages below or of the supervisor's on-disk records.
const Version = 2

// VMState is a VM's state as `ps` shows it.
type VMState string

const (
	StateCreating VMState = "creating"
	StateBooting  VMState = "booting"
	StateReady    VMState = "ready"
	StateStopped  VMState = "stopped"
	StateFailed   VMState = "failed"
)

func (s VMState) String() string { return string(s) }

// Ended reports whether a VM in state s is not running: it stopped or
// failed.
func (s VMState) Ended() bool { return s == StateStopped || s == StateFailed }

// Restart is a VM's restart policy.
type Restart string

const (
	RestartNo        Restart = "no"
	RestartOnFailure Restart = "on-failure"
	RestartAlways    Restart = "always"
)

// Applies reports whether a VM that exited with code is restarted.
func (r Restart) Applies(code int) bool {
	return r == RestartAlways || (r == RestartOnFailure && code != 0)
}

// Phase names a step in an Event.
type Phase string

// Phases the supervisor reports (the engine adds its own for disks and
// seeds).
const (
	PhaseNetwork   Phase = "network"
	PhaseVMMStart  Phase = "vmm-start"
	PhaseBooting   Phase = "booting"
	PhaseReady     Phase = "ready"
	PhaseFailed    Phase = "failed"
	PhaseExited    Phase = "exited"
	PhaseRestart   Phase = "restart"
	PhaseStopped   Phase = "stopped"
	PhasePaused    Phase = "paused"   // stack pause
	PhaseUnpaused  Phase = "unpaused" // stack unpause
	PhaseHealthy   Phase = "healthy"  // its health check passes (again)
	PhaseUnhealthy Phase = "unhealthy"
)

func (p Phase) String() string { return string(p) }

// Event is one step of a VM's or network's life, streamed by watch.
type Event struct {
	Time    time.Time `json:"time"`
	Address string    `json:"address"`
	// Instance is the VMSpec.Instance of the VM incarnation the event is
	// about ("" for networks).
	Instance string `json:"instance,omitempty"`
	Phase    Phase  `json:"phase"`
	Message  string `json:"message,omitempty"`
	// Warnings, on a ready event, are the VM's (VMStatus.Warnings).
	Warnings []string `json:"warnings,omitempty"`
}

// NetworkSpec is a network as the supervisor runs it: a switch, and a
// gateway with the services asked for.
type NetworkSpec struct {
	Name    string       `json:"name"`
	Subnet  netip.Prefix `json:"subnet"`
	Gateway netip.Addr   `json:"gateway"`
	DHCP    bool         `json:"dhcp"`
	DNS     bool         `json:"dns"`
	Egress  bool         `json:"egress"`
	// EgressAllow are destinations egress may reach that it refuses by
	// default (see netswitch/gateway).
	EgressAllow []netip.Prefix `json:"egress_allow,omitempty"`
}

// Equal reports whether two specs are the same network.
func (n NetworkSpec) Equal(o NetworkSpec) bool {
	return n.Name == o.Name && n.Subnet == o.Subnet && n.Gateway == o.Gateway && n.DHCP == o.DHCP &&
		n.DNS == o.DNS && n.Egress == o.Egress && slices.Equal(n.EgressAllow, o.EgressAllow)
}

// NIC attaches a VM to a network with its address.
type NIC struct {
	Network string     `json:"network"`
	MAC     MAC        `json:"mac"`
	IP      netip.Addr `json:"ip"`
}

// Port forwards a host port to a guest port.
type Port struct {
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
	Protocol  string `json:"protocol"` // tcp | udp
	// HostIP is the host address it listens on; zero: 127.0.0.1.
	HostIP netip.Addr `json:"host_ip,omitzero"`
}

// Ready is how the supervisor decides a VM is ready.
type Ready struct {
	// Guest waits for the guest init's ready report (initramfs mode).
	Guest bool `json:"guest,omitempty"`
	// ConsoleLine waits for this text on the serial console (cloud-init);
	// ConsoleFailLine, seen first, fails the VM at once.
	ConsoleLine     string `json:"console_line,omitempty"`
	ConsoleFailLine string `json:"console_fail_line,omitempty"`
	// ConsoleReportLine, followed by a space and cloud-init's status.json
	// on one line, is cloud-init's report of a boot with errors, which
	// the guest writes before ConsoleFailLine. The supervisor judges it
	// (package cloudinit/outcome): module failures leave the VM ready with
	// warnings unless CloudInitStrict; a critical failure fails it. A
	// report that cannot be read leaves ConsoleFailLine to fail the VM.
	ConsoleReportLine string `json:"console_report_line,omitempty"`
	CloudInitStrict   bool   `json:"cloud_init_strict,omitempty"`
	// Probes, run through the network's gateway.
	TCP  int    `json:"tcp,omitempty"`
	HTTP string `json:"http,omitempty"`
	// Exec is a command run in the guest, as exec runs it, until it exits 0.
	Exec []string `json:"exec,omitempty"`
	// Timeout bounds the whole wait.
	Timeout Duration `json:"timeout"`
}

// Health is a VM's health check, run once it is ready: Probe (its TCP,
// HTTP or Exec; its Timeout bounds one check) every Interval; Retries
// failures in a row make the VM unhealthy, and restart it when its restart
// policy is on-failure or always. Failures within StartPeriod of its
// readiness do not count; a paused VM is not checked.
type Health struct {
	Probe       Ready    `json:"probe"`
	Interval    Duration `json:"interval"`
	Retries     int      `json:"retries"`
	StartPeriod Duration `json:"start_period,omitempty"`
}

// VMStats are a running VM's counters (stats): its VMM's host CPU time and
// resident memory, its switch ports' traffic and its disks' bytes. The
// counters are cumulative; rates come from two samples.
type VMStats struct {
	Address  string     `json:"address"`
	Name     string     `json:"name"`
	PID      int        `json:"pid"`
	CPUNanos uint64     `json:"cpu_ns"` // user + system time of the VMM
	RSSBytes uint64     `json:"rss_bytes"`
	Net      []NetStats `json:"net"`
	// DiskRead and DiskWritten are QMP query-blockstats', summed.
	DiskRead    uint64 `json:"disk_read_bytes"`
	DiskWritten uint64 `json:"disk_written_bytes"`
	// GuestMemTotal and GuestMemUsed are the guest's memory as its
	// kernel sees it (MemTotal, and MemTotal - MemAvailable), as the
	// guest init reports it; zero for a guest without one (cloud-init).
	GuestMemTotal uint64 `json:"guest_mem_total_bytes,omitempty"`
	GuestMemUsed  uint64 `json:"guest_mem_used_bytes,omitempty"`
}

// NetStats are one NIC's switch port counters, seen from the VM: Rx is what
// it received (the port's transmissions), Tx what it sent.
type NetStats struct {
	Network  string `json:"network"`
	RxBytes  uint64 `json:"rx_bytes"`
	RxFrames uint64 `json:"rx_frames"`
	TxBytes  uint64 `json:"tx_bytes"`
	TxFrames uint64 `json:"tx_frames"`
}

// Health states of a VM with a health check (VMStatus.Health).
const (
	HealthStarting  = "starting"
	HealthHealthy   = "healthy"
	HealthUnhealthy = "unhealthy"
)

// Machine is what the VMM emulates and boots. Machine and Accel are
// requests ("auto" included); the supervisor's driver resolves them.
type Machine struct {
	CPUs      int    `json:"cpus"`
	MemoryMB  int    `json:"memory_mb"`
	Kernel    string `json:"kernel"`
	Initramfs string `json:"initramfs,omitempty"`
	// Cmdline is the VM's own part of the kernel command line; the driver
	// adds what the VMM and the root disk need.
	Cmdline string `json:"cmdline,omitempty"`
	Machine string `json:"machine"` // auto | microvm | q35
	Accel   string `json:"accel"`   // auto | kvm | tcg
	// Template lets the VM boot from (or make) the boot template of its
	// shape.
	Template bool `json:"template,omitempty"`
}

// Disk is a block device. Serial names it in the guest.
type Disk struct {
	Path     string `json:"path"`
	Format   string `json:"format"` // raw | qcow2
	ReadOnly bool   `json:"read_only,omitempty"`
	Serial   string `json:"serial,omitempty"`
}

// Share is a host directory exported to the guest under Tag.
type Share struct {
	Tag      string `json:"tag"`
	HostPath string `json:"host_path"`
	ReadOnly bool   `json:"read_only,omitempty"`
}

// VMSpec is a VM to start. Paths are absolute.
type VMSpec struct {
	Address string `json:"address"`
	Name    string `json:"name"`
	// Instance is a token the caller picks for this incarnation of the VM;
	// the supervisor tags the VM's events with it.
	Instance string `json:"instance,omitempty"`
	// StateDir is the VM's state directory: console log, record, keys.
	StateDir string  `json:"state_dir"`
	Machine  Machine `json:"machine"`
	// Root is the root disk (cloud-init mode): the first disk, which the
	// kernel mounts as its root file system.
	Root   *Disk   `json:"root,omitempty"`
	Disks  []Disk  `json:"disks,omitempty"`
	Shares []Share `json:"shares,omitempty"`
	// GuestConfig is the guest init's configuration (initramfs mode; see
	// package guestproto). A VM with one gets the agent channel.
	GuestConfig json.RawMessage `json:"guest_config,omitempty"`
	// SensitiveConfig: GuestConfig holds values derived from sensitive
	// variables, so the VM's record keeps it encrypted (Record).
	SensitiveConfig bool    `json:"sensitive_config,omitempty"`
	NICs            []NIC   `json:"nics"`
	Publish         []Port  `json:"publish,omitempty"`
	Ready           Ready   `json:"ready"`
	Health          *Health `json:"health,omitempty"`
	Restart         Restart `json:"restart"`
	// Hold: the guest config holds the workload until release-vm (the
	// engine releases it once the VM's dependencies are ready). A released
	// VM that restarts is released again at once.
	Hold bool `json:"hold,omitempty"`
	// Pool names the warm pool (see PoolSpec) the VM may be taken from.
	Pool string `json:"pool,omitempty"`
	// Snapshot, when set, is the directory of the VM's save in a snapshot
	// (restore-vms): its VMM is restored from it rather than booted.
	Snapshot string `json:"snapshot,omitempty"`
	// CPULimit caps the VMM process at this many host CPUs' worth of
	// time through a cgroup of its own (0: none).
	CPULimit float64 `json:"cpu_limit,omitempty"`
}

// PoolSpec is a warm pool: Size VMs of one shape restored from its boot
// template and kept paused, to be handed to the VMs of a block at once.
// Its members have the shape of a VM of Machine with one NIC on each of
// Networks, and nothing else.
type PoolSpec struct {
	Name     string   `json:"name"` // the VM block's address: vm.web
	Size     int      `json:"size"`
	Machine  Machine  `json:"machine"`
	Networks []string `json:"networks"`
}

// PoolStatus is a pool as the supervisor runs it.
type PoolStatus struct {
	Name string `json:"name"`
	Size int    `json:"size"`
	// Ready members are paused VMMs waiting to be taken.
	Ready int `json:"ready"`
	// Error is why the pool does not fill, when it does not.
	Error string `json:"error,omitempty"`
}

// Update is what update-vm changes in place: the attributes that the host
// side owns.
type Update struct {
	Address string  `json:"address"`
	Publish []Port  `json:"publish,omitempty"`
	Restart Restart `json:"restart"`
	Ready   Ready   `json:"ready"`
	// CPULimit is the VMM's new CPU limit (0: none); see VMSpec.
	CPULimit float64 `json:"cpu_limit,omitempty"`
}

// Process identifies a VMM process: a pid alone can be reused, so the
// process start time (clock ticks since boot) is given beside it.
type Process struct {
	Driver    string `json:"driver"`
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
	RunDir    string `json:"run_dir"`
}

// Started is the answer to start-vm and boot-vm.
type Started struct {
	Process Process `json:"process"`
	// Accel is the accelerator the VMM runs under (kvm or tcg); Fallback,
	// when set, says why "auto" did not use the host's KVM device.
	Accel         string `json:"accel"`
	AccelFallback string `json:"accel_fallback,omitempty"`
	// Boot is how the VMM came up (cold, template); BootNote, when set,
	// says why a template of its shape was not used (a failed restore).
	Boot     string `json:"boot"`
	BootNote string `json:"boot_note,omitempty"`
}

// VMStatus is one VM as the supervisor knows it.
type VMStatus struct {
	Address string `json:"address"`
	Name    string `json:"name"`
	// Instance is the token of the incarnation the status is of (see
	// VMSpec.Instance): a waiter that missed its events tells its own
	// incarnation's readiness from the one before.
	Instance  string            `json:"instance,omitempty"`
	State     VMState           `json:"state"`
	ExitCode  *int              `json:"exit_code"`
	Reason    string            `json:"reason,omitempty"`
	Addresses map[string]string `json:"addresses"`
	Ports     []Port            `json:"ports"`
	StartedAt time.Time         `json:"started_at,omitzero"`
	Restarts  int               `json:"restarts,omitempty"`
	// Held: booted, its workload waiting for release-vm.
	Held bool `json:"held,omitempty"`
	PID  int  `json:"pid,omitempty"`
	// Halted: stopped on request by halt-vm (`stack stop`). The VM is kept,
	// spec and disks, and its restart policy does not apply; boot-vm (or the
	// next `up`) starts it again.
	Halted bool `json:"halted,omitempty"`
	// Paused: its CPUs are stopped by pause-vm until resume-vm. Not
	// recorded: a supervisor that re-adopts a VMM lets it run.
	Paused bool `json:"paused,omitempty"`
	// Health is its health check's verdict (HealthStarting, ...), "" for a
	// VM without one or not ready yet.
	Health string `json:"health,omitempty"`
	// Accel is the accelerator of its VMM: kvm or tcg.
	Accel string `json:"accel,omitempty"`
	// Boot is how its VMM came up: cold, or template (restored from the
	// boot template of its shape).
	Boot string `json:"boot,omitempty"`
	// Warnings are what is wrong with a ready VM of this boot: each
	// cloud-init module that failed, with its error.
	Warnings []string `json:"warnings,omitempty"`
}

// Duration is a time.Duration that reads and writes as "1m30s" in JSON.
type Duration time.Duration

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return err
	}
	v, err := time.ParseDuration(s)
	*d = Duration(v)
	return err
}

// Saved is what save-snapshot wrote into its directory: under
// filenames.SnapshotVMMs each VM's VMM save, under filenames.SnapshotFiles
// the namespace's files as they were (VMs' disks and keys, volumes),
// by their paths relative to the namespace's state directory.
type Saved struct {
	VMs      []SavedVM     `json:"vms"`
	Networks []NetworkSpec `json:"networks"`
	// Paused is how long the VMs were paused; Flattened how long making
	// the saves quick to restore took after that (see hypervisor).
	Paused    Duration `json:"paused"`
	Flattened Duration `json:"flattened"`
}

// SavedVM is one VM of a snapshot.
type SavedVM struct {
	Spec   VMSpec   `json:"spec"`
	Status VMStatus `json:"status"`
	// Files are the VM's files in the snapshot, relative to
	// filenames.SnapshotFiles (and so to the namespace's state directory).
	Files []string `json:"files"`
}

// RestoreVM is a VM for restore-vms: Spec.Snapshot is set, and Ready says
// the VM was ready when it was saved (it is ready once it runs again).
type RestoreVM struct {
	Spec  VMSpec `json:"spec"`
	Ready bool   `json:"ready"`
}
