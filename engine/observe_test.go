package engine

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor/api"
)

// The supervisor's record decides: a VM halted by `stack stop` is observed
// as stopped on request (the planner starts it again), one that stopped by
// itself as gone (the planner re-creates it).
func TestObserveStoppedOnRequest(t *testing.T) {
	root := t.TempDir()
	vm := &state.VM{Address: "vm.web", Name: "web", Status: state.StatusReady,
		Process: &state.Process{Driver: "qemu", PID: os.Getpid(), StartTime: 1}}
	write := func(record string) {
		dir := filenames.VMState(root, "ns", "web")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filenames.VMRecord), []byte(record), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(`{"spec": {}, "status": {"state": "stopped", "exit_code": 0, "halted": true}}`)
	if l := observe(vm, readRecord(t, root)); l.Alive || !l.Stopped {
		t.Fatalf("halted VM observed as %+v, want stopped on request", l)
	}
	write(`{"spec": {}, "status": {"state": "stopped", "exit_code": 0}}`)
	if l := observe(vm, readRecord(t, root)); l.Alive || l.Stopped {
		t.Fatalf("VM that exited by itself observed as %+v, want gone", l)
	}
}

func readRecord(t *testing.T, root string) *api.Record {
	t.Helper()
	r := New(Options{Namespace: "ns", StateRoot: root}).readRecord("web")
	if r == nil {
		t.Fatal("record not read")
	}
	return r
}
