package api

// Op names a request.
type Op string

const (
	OpPing          Op = "ping"
	OpEnsureNetwork Op = "ensure-network"
	OpRemoveNetwork Op = "remove-network"
	OpStartVM       Op = "start-vm"
	OpStopVM        Op = "stop-vm"
	OpHaltVM        Op = "halt-vm"
	OpBootVM        Op = "boot-vm"
	OpUpdateVM      Op = "update-vm"
	OpReleaseVM     Op = "release-vm"
	OpStatus        Op = "status"
	OpWatch         Op = "watch"
	OpExec          Op = "exec"
	OpShutdown      Op = "shutdown"
	OpSetPools      Op = "set-pools"
	OpSaveSnapshot  Op = "save-snapshot"
	OpCheckRestore  Op = "check-restore"
	OpRestoreVMs    Op = "restore-vms"
	// pause-vm and resume-vm stop and go on with a VM's CPUs (QMP stop
	// and cont); signal-vm sends Signal to its VMM process.
	OpPauseVM  Op = "pause-vm"
	OpResumeVM Op = "resume-vm"
	OpSignalVM Op = "signal-vm"
	OpStats    Op = "stats"
)

// Request is one call. Op says which of the other fields are set.
type Request struct {
	Op      Op           `json:"op"`
	Network *NetworkSpec `json:"network,omitempty"` // ensure-network
	VM      *VMSpec      `json:"vm,omitempty"`      // start-vm
	Update  *Update      `json:"update,omitempty"`  // update-vm
	// Address is the network's name (remove-network) or the VM's address
	// (stop-vm, halt-vm, boot-vm, release-vm, exec, pause-vm, resume-vm,
	// signal-vm).
	Address string    `json:"address,omitempty"`
	Timeout Duration  `json:"timeout,omitempty"` // stop-vm, halt-vm: graceful stop
	Exec    *ExecSpec `json:"exec,omitempty"`
	// Instance is boot-vm's token for the new incarnation (VMSpec.Instance).
	Instance string `json:"instance,omitempty"`
	// Pools is set-pools' whole set of pools: pools not in it are drained.
	Pools []PoolSpec `json:"pools,omitempty"`
	// Dir is where save-snapshot writes (an empty directory).
	Dir string `json:"dir,omitempty"`
	// Restore are the VMs check-restore and restore-vms are about.
	Restore []RestoreVM `json:"restore,omitempty"`
	// Signal is signal-vm's signal number.
	Signal int `json:"signal,omitempty"`
}

// Response answers a Request. Error is a user-facing message.
type Response struct {
	Error   string       `json:"error,omitempty"`
	Pong    *Pong        `json:"pong,omitempty"`    // ping
	Started *Started     `json:"started,omitempty"` // start-vm, boot-vm
	VMs     []VMStatus   `json:"vms,omitempty"`     // status
	Pools   []PoolStatus `json:"pools,omitempty"`   // status
	Saved   *Saved       `json:"saved,omitempty"`   // save-snapshot
	// Restored are restore-vms' VMMs, in the order of the request.
	Restored []Started `json:"restored,omitempty"`
	Stats    []VMStats `json:"stats,omitempty"` // stats
}

// Pong says who answers: the supervisor's pid, its protocol version, and
// the state directory whose namespace it runs (a command for another state
// directory must not drive it).
type Pong struct {
	PID       int    `json:"pid"`
	Version   int    `json:"version"`
	StateRoot string `json:"state_root"`
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
	TTY *TTY `json:"tty,omitempty"`
}

// TTY is the terminal of an exec: $TERM and the initial size.
type TTY struct {
	Term string `json:"term,omitempty"`
	WindowSize
}

// WindowSize is a terminal's size in characters.
type WindowSize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// ExecInput is what an exec's client sends after its request, one field
// set per message. Closing the connection abandons the session: the
// command's input closes and its terminal, if any, hangs up.
type ExecInput struct {
	Stdin []byte      `json:"stdin,omitempty"`
	EOF   bool        `json:"eof,omitempty"` // the end of stdin (ignored with a TTY, as sshd does)
	Size  *WindowSize `json:"size,omitempty"`
}

// ExecInputChunk bounds the stdin bytes of one ExecInput.
const ExecInputChunk = 32 << 10

// ExecEvent is one step of an exec: output, or the end.
type ExecEvent struct {
	Stream string `json:"stream,omitempty"` // stdout | stderr
	Data   []byte `json:"data,omitempty"`
	Exit   *int   `json:"exit,omitempty"`
	Error  string `json:"error,omitempty"`
}

// The readiness pipe between a spawning client and the supervisor it
// starts: the child finds the pipe's write end at ReadyFD, and ReadyFDEnv
// says so (a supervisor started any other way has no such pipe). It writes
// one byte once its control socket listens.
const (
	ReadyFD    = 3
	ReadyFDEnv = "STACK_SUPERVISOR_READY_FD"
)

// SuperviseEnv carries SuperviseArgs (as JSON) to a process started as a
// namespace's supervisor: the engine re-executes its own binary with it, so
// the same mechanism serves the stack command and test binaries.
const SuperviseEnv = "STACK_SUPERVISE"

// SuperviseArgs configure a supervisor process.
type SuperviseArgs struct {
	Namespace   string `json:"namespace"`
	StateRoot   string `json:"state_root"`
	RuntimeRoot string `json:"runtime_root"`
	// OwnerPID, when set, is a process whose death brings the namespace
	// down (stacktest: VMs never outlive the test binary).
	OwnerPID       int    `json:"owner_pid,omitempty"`
	OwnerStartTime uint64 `json:"owner_start_time,omitempty"`
}
