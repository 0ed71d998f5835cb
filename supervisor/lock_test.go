package supervisor

import (
	"context"
	"testing"
	"time"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/supervisor/api"
)

// A VM whose own lock is held (as by a slow operation on it) holds up no
// other VM: update-vm, release-vm and stop-vm of another VM go through.
func TestOneVMsLockHoldsUpNoOther(t *testing.T) {
	s, _, c := newTestSupervisor(t)
	ctx := context.Background()
	for _, name := range []string{"a", "b"} {
		spec := api.VMSpec{Address: "vm." + name, Name: name, StateDir: filenames.VMState(s.opts.StateRoot, "t", name)}
		if _, err := c.StartVM(ctx, spec); err != nil {
			t.Fatal(err)
		}
	}
	busy := s.vm("vm.a")
	busy.mu.Lock()
	locked := true
	defer func() {
		if locked {
			busy.mu.Unlock()
		}
	}()
	done := make(chan error, 1)
	go func() {
		err := c.UpdateVM(ctx, api.Update{Address: "vm.b", Restart: api.RestartAlways})
		if err == nil {
			err = c.ReleaseVM(ctx, "vm.b")
		}
		if err == nil {
			err = c.StopVM(ctx, "vm.b", time.Second)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("vm.b's operations waited for vm.a's lock")
	}
	busy.mu.Unlock()
	locked = false
	if st, err := c.Status(ctx); err != nil || len(st) != 1 || st[0].Address != "vm.a" {
		t.Fatalf("status: %+v, %v", st, err)
	}
}
