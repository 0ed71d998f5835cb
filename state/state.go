// Package state owns the recorded state of a namespace: what `up` created,
// with the attributes it applied, the addresses it assigned and the identity
// of every VMM process. One JSON file per namespace, written atomically
// (temp file, fsync, rename) and guarded by a flock that every mutating
// command holds for its whole run.
//
// A state file carries a format version, a serial that grows by one on every
// write, and a lineage fixed when the namespace is first written: a saved
// plan records both and is refused when either has moved.
package state

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"net/netip"
	"sort"
	"time"

	"github.com/stackvm/stack/internal/netaddr"
)

// FormatVersion is the version this build writes. A state with a higher
// version is refused: an older stack must not rewrite what it cannot read.
const FormatVersion = 1

// VM run states, as shown by `stack ps`.
const (
	StatusCreating = "creating"
	StatusBooting  = "booting"
	StatusReady    = "ready"
	StatusStopped  = "stopped"
	StatusFailed   = "failed"
	// StatusPaused is shown, never recorded: a running VM whose CPUs
	// `stack pause` stopped.
	StatusPaused = "paused"
)

// State is the recorded state of one namespace.
type State struct {
	FormatVersion int    `json:"format_version"`
	Serial        uint64 `json:"serial"`
	Lineage       string `json:"lineage"`
	Namespace     string `json:"namespace"`

	Networks map[string]*Network `json:"networks"` // by name
	Volumes  map[string]*Volume  `json:"volumes"`  // by name
	VMs      map[string]*VM      `json:"vms"`      // by address
}

// Attributes are the canonical JSON values of a resource's attributes as they
// were applied; the planner compares them with the desired ones.
type Attributes map[string]json.RawMessage

// Network is a created network.
type Network struct {
	Name       string     `json:"name"`
	Attributes Attributes `json:"attributes"`
}

// Volume is a created volume.
type Volume struct {
	Name       string     `json:"name"`
	Attributes Attributes `json:"attributes"`
	Path       string     `json:"path,omitempty"`
}

// VM is a created VM instance.
type VM struct {
	Address    string     `json:"address"`
	Name       string     `json:"name"`
	Attributes Attributes `json:"attributes"`
	NICs       []NIC      `json:"nics,omitempty"`

	Status    string    `json:"status"`
	ExitCode  *int      `json:"exit_code,omitempty"`
	Reason    string    `json:"reason,omitempty"` // why it failed, for ps and logs
	Process   *Process  `json:"process,omitempty"`
	StartedAt time.Time `json:"started_at,omitzero"`
}

// NIC is an assigned network attachment. Assignments are stable: the
// planner reuses them for as long as the VM exists and the file does not pin
// other values.
type NIC struct {
	Network string      `json:"network"`
	IP      netip.Addr  `json:"ip"`
	MAC     netaddr.MAC `json:"mac"`
}

// Process identifies a VMM process: a pid alone can be reused, so the
// process start time is recorded beside it.
type Process struct {
	Driver    string `json:"driver"`
	PID       int    `json:"pid"`
	StartTime uint64 `json:"start_time"`
	RunDir    string `json:"run_dir"`
}

// New returns the empty state of a namespace that has never been written.
// Its lineage is fixed on the first write.
func New(namespace string) *State {
	return &State{
		FormatVersion: FormatVersion,
		Namespace:     namespace,
		Networks:      map[string]*Network{},
		Volumes:       map[string]*Volume{},
		VMs:           map[string]*VM{},
	}
}

// Empty reports whether the state records nothing.
func (s *State) Empty() bool {
	return len(s.Networks) == 0 && len(s.Volumes) == 0 && len(s.VMs) == 0
}

// VMAddresses returns the recorded VM addresses, sorted.
func (s *State) VMAddresses() []string {
	out := make([]string, 0, len(s.VMs))
	for a := range s.VMs {
		out = append(out, a)
	}
	sort.Strings(out)
	return out
}

func newLineage() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("read random lineage: " + err.Error()) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b[:])
}
