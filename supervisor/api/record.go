package api

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/stackvm/stack/internal/filenames"
)

// Record is what the supervisor keeps on disk for each VM (vm.json in the
// VM's state directory), so that a later supervisor re-adopts it and `ps`
// and the planner see it when no supervisor runs.
type Record struct {
	// Version is the protocol version of the supervisor that wrote it; a
	// record of another version is not re-adopted (see Version).
	Version int      `json:"version"`
	Spec    VMSpec   `json:"spec"`
	Process *Process `json:"process,omitempty"`
	Status  VMStatus `json:"status"`
	// RunDir and Ports, when set, are the VM's runtime directory and its
	// NICs' switch ports, which are not derived from its name when it was
	// taken from a pool.
	RunDir string   `json:"run_dir,omitempty"`
	Ports  []string `json:"ports,omitempty"`
	// SealedGuestConfig replaces Spec.GuestConfig when Spec.SensitiveConfig
	// is set: the configuration encrypted (AES-256-GCM, nonce first) with
	// the namespace's record key, which lives in its runtime directory, not
	// beside the record (see docs/stackfile.md, "Sensitive values").
	SealedGuestConfig []byte `json:"sealed_guest_config,omitempty"`
}

// ReadRecord reads the supervisor's record of a VM from its state directory.
func ReadRecord(vmStateDir string) (*Record, error) {
	data, err := os.ReadFile(filepath.Join(vmStateDir, filenames.VMRecord))
	if err != nil {
		return nil, err
	}
	var r Record
	if err := json.Unmarshal(data, &r); err != nil {
		return nil, fmt.Errorf("read vm record: %w", err)
	}
	return &r, nil
}
