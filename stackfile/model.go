// Package stackfile owns the stack-file language: it loads HCL files into a
// typed, fully evaluated Stack, and reports every user error as an
// hcl.Diagnostic that points at a file, line and column.
//
// The model in this file is the contract between the loader and everything
// after it (planner, engine, CLI). Every value in a Stack is known: count and
// for_each are expanded, variables and functions evaluated, paths made
// absolute. The model is JSON-serialisable so that a saved plan can carry the
// exact desired stack that `up --plan` applies; source ranges are not.
package stackfile

import (
	"net/netip"
	"time"

	"github.com/hashicorp/hcl/v2"
	"github.com/stackvm/stack/internal/netaddr"
)

// Boot modes of a VM.
const (
	ModeInitramfs = "initramfs"
	ModeCloudInit = "cloud-init"
)

// Restart policies.
const (
	RestartNo        = "no"
	RestartOnFailure = "on-failure"
	RestartAlways    = "always"
)

// Stack is one evaluated set of stack files.
type Stack struct {
	// Namespace is resolved by the caller's precedence (-p, stack label,
	// directory name); the loader fills it from the stack label or directory
	// unless Options.Namespace is set.
	Namespace   string   `json:"namespace"`
	Label       string   `json:"label,omitempty"` // the stack block's label, "" without one
	Description string   `json:"description,omitempty"`
	RootDir     string   `json:"root_dir"` // path.root: the directory of the first file
	Files       []string `json:"files"`

	// Sorted by name (networks, volumes) and by address (VMs).
	Networks []*Network `json:"networks"`
	Volumes  []*Volume  `json:"volumes"`
	VMs      []*VM      `json:"vms"`
}

// Network is one L2 segment with its gateway.
type Network struct {
	Name    string       `json:"name"`
	Subnet  netip.Prefix `json:"subnet"`
	Gateway netip.Addr   `json:"gateway"` // first host of Subnet unless set
	DHCP    bool         `json:"dhcp"`
	DNS     bool         `json:"dns"`
	Egress  bool         `json:"egress"`
	// EgressAllow are destinations egress may reach that it refuses by
	// default (the host, private and metadata addresses).
	EgressAllow []netip.Prefix `json:"egress_allow,omitempty"`

	DeclRange hcl.Range `json:"-"`
}

// Address is the network's plan address, e.g. "network.lan".
func (n *Network) Address() string { return "network." + n.Name }

// Volume is a persistent block device.
type Volume struct {
	Name      string `json:"name"`
	SizeBytes int64  `json:"size_bytes"`
	Format    string `json:"format"` // "ext4" or "raw"

	DeclRange hcl.Range `json:"-"`
}

// Address is the volume's plan address, e.g. "volume.pgdata".
func (v *Volume) Address() string { return "volume." + v.Name }

// VM is one VM instance: a vm block with count or for_each is expanded into
// one VM per instance.
type VM struct {
	// Address is the plan address: vm.db, vm.web[0], vm.web["blue"].
	Address string `json:"address"`
	// Name is the instance name and hostname: db, web-0, web-blue.
	Name string `json:"name"`
	// Block is the vm block's label ("web" for every instance of vm.web).
	Block string `json:"block"`

	CPUs     int `json:"cpus"`
	MemoryMB int `json:"memory_mb"`

	// Kernel and Initramfs are absolute paths; "" means the built-in guest
	// image (initramfs mode only; cloud-init mode requires a kernel).
	Kernel    string            `json:"kernel,omitempty"`
	Initramfs string            `json:"initramfs,omitempty"`
	Cmdline   string            `json:"cmdline,omitempty"`
	Command   []string          `json:"command,omitempty"`
	Env       map[string]string `json:"env,omitempty"`

	// Image is an OCI image reference (image.ParseRef's forms): the VM
	// runs the image's root file system and process (initramfs mode, the
	// guest init runs it). Command, when set (non-nil, maybe empty),
	// replaces the image's Cmd; Entrypoint, when set, replaces its
	// Entrypoint and drops its Cmd, as compose does.
	Image      string   `json:"image,omitempty"`
	Entrypoint []string `json:"entrypoint,omitempty"`
	// ImageID and ImagePorts are what Image names now (its config digest
	// and exposed ports), which the engine resolves before it plans; the
	// loader leaves them empty.
	ImageID    string   `json:"image_id,omitempty"`
	ImagePorts []string `json:"image_ports,omitempty"`

	// RootDisk is set in cloud-init mode: the absolute path of the base image.
	RootDisk  string     `json:"root_disk,omitempty"`
	CloudInit *CloudInit `json:"cloud_init,omitempty"`

	NICs       []*NIC       `json:"nics,omitempty"` // in block order; the first is eth0
	SharedDirs []*SharedDir `json:"shared_dirs,omitempty"`
	Disks      []*Disk      `json:"disks,omitempty"`
	Publish    []*Publish   `json:"publish,omitempty"`
	// Secrets are host files the guest reads at /run/secrets/NAME
	// (initramfs mode); see Secret.
	Secrets []*Secret `json:"secrets,omitempty"`

	// DependsOn holds the addresses of VM blocks ("vm.db"): this VM waits
	// for every instance of each to be ready.
	DependsOn []string `json:"depends_on,omitempty"`
	Ready     Ready    `json:"ready"`
	// Health, when set, checks the VM once it is ready, again and again.
	Health  *Health `json:"health,omitempty"`
	Restart string  `json:"restart"`

	Hypervisor string `json:"hypervisor"` // auto | qemu
	Machine    string `json:"machine"`    // auto | microvm | q35 (extension, see docs/stackfile.md)
	// Accel is auto, kvm or tcg: the attribute, else $STACK_ACCEL, else
	// auto (KVM where a test boot shows it runs guests, else TCG).
	Accel string `json:"accel"`
	// Template lets the VM boot from the boot template of its shape (and
	// make it the first time): the attribute, else false when
	// $STACK_TEMPLATES is off, else true. It changes how a VM boots, not
	// what it is: it is not compared by the planner.
	Template bool `json:"template"`
	// MachineID is the guest's /etc/machine-id: the attribute, else one
	// derived from the namespace and the VM's name (stable across
	// re-creations, distinct between VMs and namespaces).
	MachineID string `json:"machine_id"`
	// CPULimit caps the VMM process at this many host CPUs' worth of
	// time, through a cgroup (0: no limit).
	CPULimit float64 `json:"cpu_limit,omitempty"`
	// Pool is how many VMs of this block's shape the supervisor keeps
	// restored and paused, to start the block's VMs from (0: none).
	Pool int `json:"pool,omitempty"`
	// Sensitive names the attributes (as the planner names them: env,
	// command, entrypoint, ready, cloud_init) whose value is
	// derived from a sensitive variable: plans show them as "(sensitive
	// value)" and state keeps only a salted hash (see sensitive.go).
	Sensitive []string `json:"sensitive,omitempty"`

	DeclRange hcl.Range `json:"-"`
}

// Mode reports the VM's boot mode.
func (vm *VM) Mode() string {
	if vm.RootDisk != "" {
		return ModeCloudInit
	}
	return ModeInitramfs
}

// CloudInit is the user's part of the NoCloud seed.
type CloudInit struct {
	// UserData is a #cloud-config YAML document ("" for none).
	UserData          string   `json:"user_data,omitempty"`
	SSHAuthorizedKeys []string `json:"ssh_authorized_keys,omitempty"`
	// Strict makes a failed cloud-init module fail the VM; by default the
	// VM is ready once cloud-init has finished, with a warning per failed
	// module.
	Strict bool `json:"strict,omitempty"`

	UserDataRange hcl.Range `json:"-"` // where user_data was set, for YAML diagnostics
}

// NIC is one network attachment.
type NIC struct {
	Network string `json:"network"`
	// IP and MAC are what the file says; zero/"" means "assign one". The
	// planner resolves them against state.
	IP  netip.Addr  `json:"ip,omitempty"`
	MAC netaddr.MAC `json:"mac,omitzero"`

	DeclRange hcl.Range `json:"-"`
}

// SharedDir is a host directory exposed in the guest.
type SharedDir struct {
	Name      string `json:"name"`
	HostPath  string `json:"host_path"` // absolute
	GuestPath string `json:"guest_path"`
	ReadOnly  bool   `json:"read_only"`
}

// Disk is a block device: a volume (Volume != "") or a scratch disk.
type Disk struct {
	Name      string `json:"name"`
	Volume    string `json:"volume,omitempty"`     // volume name
	SizeBytes int64  `json:"size_bytes,omitempty"` // scratch disks only
	GuestPath string `json:"guest_path,omitempty"`
}

// Secret is a host file given to the guest read-only at
// /run/secrets/NAME, as compose's secrets are. Its content is never
// recorded: the planner's "secret" attribute is sensitive, so state keeps
// only a salted hash of it, Digest included, and a changed file replaces
// the VM.
type Secret struct {
	Name     string `json:"name"`
	HostPath string `json:"host_path"` // absolute
	// Digest is the SHA-256 of the file's content when it was loaded.
	Digest string `json:"digest"`
}

// SecretsDir is where the guest finds its secrets.
const SecretsDir = "/run/secrets"

// Publish forwards a host port to a guest port.
type Publish struct {
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
	Protocol  string `json:"protocol"` // tcp | udp
	// HostIP is the host address the port listens on; the zero Addr is
	// the default, 127.0.0.1 (also what host_ip = "127.0.0.1" loads as,
	// so that writing the default changes no plan).
	HostIP netip.Addr `json:"host_ip,omitzero"`
}

// Ready says when a VM counts as ready. With no probe set the guest's own
// ready report (guest init or cloud-init's final line) is used.
type Ready struct {
	TCP     int           `json:"tcp,omitempty"`
	HTTP    string        `json:"http,omitempty"`
	Exec    []string      `json:"exec,omitempty"`
	Timeout time.Duration `json:"timeout"` // default 120s
}

// Health is a VM's health check: a probe (one of TCP, HTTP and Exec, as in
// Ready) run every Interval once the VM is ready; Retries failures in a
// row make it unhealthy, a success healthy again. Failures in StartPeriod
// after it is ready do not count.
type Health struct {
	TCP         int           `json:"tcp,omitempty"`
	HTTP        string        `json:"http,omitempty"`
	Exec        []string      `json:"exec,omitempty"`
	Interval    time.Duration `json:"interval"`     // default 30s
	Timeout     time.Duration `json:"timeout"`      // of one probe, default 30s
	Retries     int           `json:"retries"`      // default 3
	StartPeriod time.Duration `json:"start_period"` // default 0
}

// Accelerators (Accel).
const (
	AccelAuto = "auto"
	AccelKVM  = "kvm"
	AccelTCG  = "tcg"
)

// TemplatesEnv names the environment variable that turns boot templates
// off for every VM (STACK_TEMPLATES=off), for debugging.
const TemplatesEnv = "STACK_TEMPLATES"

// AccelEnv names the environment variable that sets the default accel of
// every VM (CI sets STACK_ACCEL=tcg to skip the KVM probe).
const AccelEnv = "STACK_ACCEL"

// Defaults applied by the loader.
const (
	DefaultCPUs         = 1
	DefaultMemoryMB     = 256
	DefaultReadyTimeout = 120 * time.Second
	MaxCPUs             = 255
	MinMemoryMB         = 64
	MaxMemoryMB         = 1 << 20 // 1 TiB
	MaxPool             = 16
)
