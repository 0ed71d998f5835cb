package supervisor

import (
	"context"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/proc"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/supervisor/api"
	"github.com/stackvm/stack/supervisor/client"
)

// waitPool waits until the pool has ready members.
func waitPool(t *testing.T, c *client.Client, name string, ready int) api.PoolStatus {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		pools, err := c.Pools(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range pools {
			if p.Name == name && p.Ready == ready {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool %s never had %d ready members: %+v", name, ready, pools)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func poolSpecs() (api.NetworkSpec, api.PoolSpec) {
	net := api.NetworkSpec{Name: "lan", Subnet: netip.MustParsePrefix("10.9.0.0/24"), Gateway: netip.MustParseAddr("10.9.0.1")}
	m := api.Machine{CPUs: 1, MemoryMB: 256, Kernel: "/k", Initramfs: "/i", Machine: "auto", Accel: "tcg", Template: true}
	return net, api.PoolSpec{Name: "vm.w", Size: 2, Machine: m, Networks: []string{"lan"}}
}

// TestPoolClaimRefillAndDrain: a pool fills once a template exists, a VM of
// its shape takes a member (which gets the VM's config and runs), the pool
// refills, a member that dies while it waits is replaced and never handed
// out, and set-pools without it drains it, leaving no VMM or record.
func TestPoolClaimRefillAndDrain(t *testing.T) {
	s, drv, c := newTestSupervisor(t)
	ctx := context.Background()
	net, ps := poolSpecs()
	if err := c.EnsureNetwork(ctx, net); err != nil {
		t.Fatal(err)
	}
	if err := c.SetPools(ctx, []api.PoolSpec{ps}); err != nil {
		t.Fatal(err)
	}
	// No template yet: the pool says so and waits.
	time.Sleep(100 * time.Millisecond)
	if pools, _ := c.Pools(ctx); len(pools) != 1 || pools[0].Ready != 0 || pools[0].Error == "" {
		t.Fatalf("pool without a template: %+v", pools)
	}
	drv.mu.Lock()
	drv.template = true
	drv.mu.Unlock()
	waitPool(t, c, "vm.w", 2)

	spec := startSpec(t, s, "no")
	spec.Pool, spec.Machine = "vm.w", ps.Machine
	spec.NICs = []api.NIC{{Network: "lan", MAC: mac("52:54:00:00:00:07"), IP: netip.MustParseAddr("10.9.0.7")}}
	spec.GuestConfig = []byte(`{"version":1,"hostname":"a"}`)
	started, err := c.StartVM(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if started.Boot != string(hypervisor.BootPool) {
		t.Fatalf("start-vm of a pooled shape: boot %q, want pool", started.Boot)
	}
	var claimed *fakeInst
	drv.mu.Lock()
	for _, in := range drv.started {
		if in.id.PID == started.Process.PID {
			claimed = in
		}
	}
	drv.mu.Unlock()
	if claimed == nil || claimed.claimed == nil || string(claimed.claimed.GuestConfig) != string(spec.GuestConfig) {
		t.Fatalf("the member was not claimed with the VM's config: %+v", claimed)
	}
	if !filepathHasPrefix(started.Process.RunDir, filenames.PoolRuntime(s.opts.RuntimeRoot, "t", "")) {
		t.Errorf("claimed VM runs in %s, not its member's directory", started.Process.RunDir)
	}
	waitPool(t, c, "vm.w", 2) // refilled

	// A member that dies while it waits is replaced, not handed out.
	s.mu.Lock()
	victim := s.pools["vm.w"].members[0]
	s.mu.Unlock()
	victim.inst.Kill()
	waitPool(t, c, "vm.w", 2)
	s.mu.Lock()
	for _, m := range s.pools["vm.w"].members {
		if m == victim {
			t.Error("a dead member is still in the pool")
		}
	}
	s.mu.Unlock()

	// Drained: every member's VMM ends, and nothing of theirs is left.
	s.mu.Lock()
	var members []*member
	members = append(members, s.pools["vm.w"].members...)
	s.mu.Unlock()
	if err := c.SetPools(ctx, nil); err != nil {
		t.Fatal(err)
	}
	for _, m := range members {
		select {
		case <-m.inst.(*fakeInst).done:
		case <-time.After(5 * time.Second):
			t.Fatalf("member %s still runs after its pool was drained", m.id)
		}
		if _, err := os.Stat(m.runDir); !os.IsNotExist(err) {
			t.Errorf("member %s left its runtime directory: %v", m.id, err)
		}
		if _, err := os.Stat(filenames.PoolRecord(s.opts.StateRoot, "t", m.id)); !os.IsNotExist(err) {
			t.Errorf("member %s left its record: %v", m.id, err)
		}
	}
	if pools, _ := c.Pools(ctx); len(pools) != 0 {
		t.Fatalf("pools after draining: %+v", pools)
	}
	// The VM taken from the pool is unaffected.
	if v := statusOf(t, c, spec.Address); v.Boot != "pool" || v.State.Ended() {
		t.Fatalf("the claimed VM after the drain: %+v", v)
	}
}

// TestPoolMembersLeftByADeadSupervisor: the records of members a dead
// supervisor left name their VMMs; the next supervisor ends them.
func TestPoolMembersLeftByADeadSupervisor(t *testing.T) {
	s, _, _ := newTestSupervisor(t)
	cmd := startSleeper(t)
	st, err := processOf(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	path := filenames.PoolRecord(s.opts.StateRoot, "t", "deadbeef")
	os.MkdirAll(filepath.Dir(path), 0o700)
	writeJSON(path, st)
	s2 := New(Options{Namespace: "t", StateRoot: s.opts.StateRoot, RuntimeRoot: s.opts.RuntimeRoot, Driver: killDriver{}})
	s2.endLeftMembers()
	if err := cmd.Wait(); err == nil {
		t.Fatal("the member left by a dead supervisor was not ended")
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("its record is still there: %v", err)
	}
}

func filepathHasPrefix(p, prefix string) bool {
	return len(p) >= len(prefix) && p[:len(prefix)] == prefix
}

// killDriver attaches to any process and kills it with SIGKILL.
type killDriver struct{ hypervisor.Driver }

func (killDriver) Attach(_ context.Context, id hypervisor.Identity) (hypervisor.Instance, error) {
	return killInst{pid: id.PID}, nil
}

type killInst struct {
	hypervisor.Instance
	pid int
}

func (k killInst) Kill() error { return syscall.Kill(k.pid, syscall.SIGKILL) }
func (k killInst) Wait(context.Context) (hypervisor.ExitStatus, error) {
	return hypervisor.ExitStatus{}, nil
}
func (k killInst) Close() error { return nil }

// startSleeper starts a process that stands for a member's VMM.
func startSleeper(t *testing.T) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("sleep", "100")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	return cmd
}

func processOf(pid int) (api.Process, error) {
	st, err := proc.StartTime(pid)
	return api.Process{Driver: "fake", PID: pid, StartTime: st}, err
}
