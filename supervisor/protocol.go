// Package supervisor owns a namespace's running parts: the switch and
// gateway of every network, the VMM processes (it is their parent, so it sees
// how they exit), their console relays and readiness probes, and the restart
// policy. It runs as a detached process (`stack supervise`), one per
// namespace, and ends when its namespace has nothing left. The CLI and the
// engine talk to it over a unix control socket with the protocol in this
// file: one JSON request per connection, one JSON response, and for Watch a
// stream of Events until the connection closes.
//
// The supervisor never writes the namespace's state file: that belongs to the
// command holding the state lock. It records what only it knows (how a VM
// exited) in per-VM status files that `ps` and the planner read.
package supervisor

import (
	"encoding/json"
	"net/netip"
	"time"

	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/state"
)

// Request operations.
const (
	OpPing          = "ping"
	OpEnsureNetwork = "ensure-network"
	OpRemoveNetwork = "remove-network"
	OpStartVM       = "start-vm"
	OpStopVM        = "stop-vm"
	OpHaltVM        = "halt-vm"
	OpBootVM        = "boot-vm"
	OpUpdateVM      = "update-vm"
	OpRelease       = "release-vm"
	OpStatus        = "status"
	OpWatch         = "watch"
	OpExec          = "exec"
	OpShutdown      = "shutdown"
)

// Request is one call. Exactly the field matching Op is set.
type Request struct {
	Op      string       `json:"op"`
	Network *NetworkSpec `json:"network,omitempty"`
	VM      *VMSpec      `json:"vm,omitempty"`
	Address string       `json:"address,omitempty"` // remove-network: network name; stop-vm, halt-vm, boot-vm, exec: VM address
	Timeout Duration     `json:"timeout,omitempty"`
	Exec    *ExecSpec    `json:"exec,omitempty"`
	// Instance is boot-vm's token for the new incarnation (VMSpec.Instance).
	Instance string `json:"instance,omitempty"`
}

// ExecSpec is a command to run in a VM (exec). The reply is a stream of
// ExecEvents ending with one that has Exit set; meanwhile the client may
// send ExecInputs on the same connection. Initramfs VMs run it through the
// guest agent, cloud-init VMs over SSH as root (see docs/cloud-init.md).
type ExecSpec struct {
	Argv []string          `json:"argv"`
	Env  map[string]string `json:"env,omitempty"`
	// Stdin: the client streams the command's standard input as
	// ExecInputs; without it the command's input is empty.
	Stdin bool `json:"stdin,omitempty"`
	// TTY runs the command on a pseudo-terminal: stderr comes out merged
	// into stdout, and the client may send window sizes.
	TTY *ExecTTY `json:"tty,omitempty"`
}

// ExecTTY is the terminal of an exec: $TERM and the initial size.
type ExecTTY = guestproto.TTY

// WindowSize is a terminal's size in characters.
type WindowSize = guestproto.WindowSize

// ExecInput is what an exec's client sends after its request, one field
// set per message. Closing the connection abandons the session: the
// command's input closes and its terminal, if any, hangs up.
type ExecInput struct {
	Stdin []byte      `json:"stdin,omitempty"`
	EOF   bool        `json:"eof,omitempty"` // the end of stdin (ignored with a TTY, as sshd does)
	Size  *WindowSize `json:"size,omitempty"`
}

// ExecEvent is one step of an exec: output, or the end.
type ExecEvent struct {
	Stream string `json:"stream,omitempty"` // stdout | stderr
	Data   []byte `json:"data,omitempty"`
	Exit   *int   `json:"exit,omitempty"`
	Error  string `json:"error,omitempty"`
}

// Response answers a Request. Error is a user-facing message.
type Response struct {
	Error   string         `json:"error,omitempty"`
	Process *state.Process `json:"process,omitempty"` // start-vm, boot-vm
	// Accel is the accelerator the started VM runs under (start-vm,
	// boot-vm), with the reason when "auto" fell back to TCG.
	Accel *hypervisor.Accel `json:"accel,omitempty"`
	VMs   []VMStatus        `json:"vms,omitempty"` // status
	PID   int               `json:"pid,omitempty"` // ping: the supervisor's pid
	// StateRoot is ping's: the state directory whose namespace the
	// supervisor runs. A command for another state directory must not
	// drive it (see StateRootError).
	StateRoot string `json:"state_root,omitempty"`
}

// NetworkSpec is a network as the supervisor runs it.
type NetworkSpec struct {
	Name    string       `json:"name"`
	Subnet  netip.Prefix `json:"subnet"`
	Gateway netip.Addr   `json:"gateway"`
	DHCP    bool         `json:"dhcp"`
	DNS     bool         `json:"dns"`
	Egress  bool         `json:"egress"`
}

// NICSpec attaches a VM to a network.
type NICSpec struct {
	Network string     `json:"network"`
	MAC     string     `json:"mac"`
	IP      netip.Addr `json:"ip"`
}

// PublishSpec forwards a host port to a guest port.
type PublishSpec struct {
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
	Protocol  string `json:"protocol"`
}

// ReadySpec is how the supervisor decides a VM is ready.
type ReadySpec struct {
	// Guest waits for the guest init's ready report (initramfs mode).
	Guest bool `json:"guest,omitempty"`
	// ConsoleLine waits for this text on the serial console (cloud-init);
	// ConsoleFailLine, seen first, fails the VM at once.
	ConsoleLine     string `json:"console_line,omitempty"`
	ConsoleFailLine string `json:"console_fail_line,omitempty"`
	// Probes, run through the network's gateway at a 200 ms cadence.
	TCP  int    `json:"tcp,omitempty"`
	HTTP string `json:"http,omitempty"`
	// Timeout bounds the whole wait.
	Timeout Duration `json:"timeout"`
}

// VMSpec is a VM to start. NICs are wired to the networks' switches by the
// supervisor; Config carries everything else.
type VMSpec struct {
	Address string `json:"address"`
	// Instance is a token the caller picks for this incarnation of the VM;
	// the supervisor tags the VM's events with it.
	Instance string            `json:"instance,omitempty"`
	Name     string            `json:"name"`
	Config   hypervisor.Config `json:"config"`
	NICs     []NICSpec         `json:"nics"`
	Publish  []PublishSpec     `json:"publish,omitempty"`
	Ready    ReadySpec         `json:"ready"`
	Restart  string            `json:"restart"`
	StateDir string            `json:"state_dir"` // where the console log and status file go
	// Hold: the guest config holds the workload until release-vm (the
	// engine releases it once the VM's dependencies are ready). A released
	// VM that restarts is released again at once.
	Hold bool `json:"hold,omitempty"`
}

// VMStatus is one VM as `ps` shows it.
type VMStatus struct {
	Address   string            `json:"address"`
	Name      string            `json:"name"`
	State     string            `json:"state"` // see state.Status*
	ExitCode  *int              `json:"exit_code"`
	Reason    string            `json:"reason,omitempty"`
	Addresses map[string]string `json:"addresses"`
	Ports     []PublishSpec     `json:"ports"`
	StartedAt time.Time         `json:"started_at,omitzero"`
	Restarts  int               `json:"restarts,omitempty"`
	// Held: booted, its workload waiting for release-vm.
	Held bool `json:"held,omitempty"`
	PID  int  `json:"pid,omitempty"`
	// Accel is the accelerator of its VMM: kvm or tcg.
	Accel string `json:"accel,omitempty"`
	// Halted: stopped on request by halt-vm (`stack stop`). The VM is kept,
	// spec and disks, and its restart policy does not apply; boot-vm (or the
	// next `up`) starts it again.
	Halted bool `json:"halted,omitempty"`
}

// Event is one step of a VM's or network's life, streamed by Watch.
type Event struct {
	Time    time.Time `json:"time"`
	Address string    `json:"address"`
	// Instance is the VMSpec.Instance of the VM incarnation the event is
	// about ("" for networks).
	Instance string `json:"instance,omitempty"`
	Phase    string `json:"phase"`
	Message  string `json:"message,omitempty"`
}

// Phases reported in Events (the engine adds its own for disks and seeds).
const (
	PhaseNetwork  = "network"
	PhaseVMMStart = "vmm-start"
	PhaseBooting  = "booting"
	PhaseReady    = "ready"
	PhaseFailed   = "failed"
	PhaseExited   = "exited"
	PhaseRestart  = "restart"
	PhaseStopped  = "stopped"
)

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
