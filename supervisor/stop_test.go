package supervisor

import (
	"context"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/supervisor/api"
	"github.com/stackvm/stack/supervisor/client"
)

func statusOf(t *testing.T, c *client.Client, address string) api.VMStatus {
	t.Helper()
	vms, err := c.Status(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vms {
		if v.Address == address {
			return v
		}
	}
	t.Fatalf("no %s in status %+v", address, vms)
	return api.VMStatus{}
}

// halt-vm keeps the VM, stopped, without restarting it even under
// restart = "always"; boot-vm starts it again as a new incarnation.
func TestHaltKeepsTheVMAndBootStartsItAgain(t *testing.T) {
	s, drv, c := newTestSupervisor(t)
	ctx := context.Background()
	events, _ := c.Watch(ctx)
	spec := startSpec(t, s, "always")
	spec.Instance = "one"
	if _, err := c.StartVM(ctx, spec); err != nil {
		t.Fatal(err)
	}
	drv.last().say(t, guestproto.Message{Type: guestproto.TypeReady, Status: &guestproto.Status{Ready: true}})
	waitPhase(t, events, api.PhaseReady)

	for i := 0; i < 2; i++ { // halting a halted VM changes nothing
		if err := c.HaltVM(ctx, "vm.a", 0); err != nil {
			t.Fatal(err)
		}
	}
	v := statusOf(t, c, "vm.a")
	if v.State != "stopped" || !v.Halted || v.ExitCode == nil || *v.ExitCode != 0 || v.PID != 0 {
		t.Fatalf("after halt-vm: %+v", v)
	}
	r, err := api.ReadRecord(spec.StateDir)
	if err != nil || !r.Status.Halted || r.Status.State != "stopped" {
		t.Fatalf("record after halt-vm: %+v, %v", r, err)
	}
	time.Sleep(1500 * time.Millisecond) // longer than the first restart delay
	if drv.count() != 1 {
		t.Fatalf("restart = always restarted a halted VM (%d starts)", drv.count())
	}

	resp, err := c.BootVM(ctx, "vm.a", "two")
	if err != nil {
		t.Fatal(err)
	}
	if drv.count() != 2 || resp.Process.PID != drv.last().id.PID {
		t.Fatalf("boot-vm: %d starts, process %+v", drv.count(), resp.Process)
	}
	drv.last().say(t, guestproto.Message{Type: guestproto.TypeReady, Status: &guestproto.Status{Ready: true}})
	if ev := waitPhase(t, events, api.PhaseReady); ev.Instance != "two" {
		t.Fatalf("ready event of instance %q, want the booted one", ev.Instance)
	}
	if v := statusOf(t, c, "vm.a"); v.State != "ready" || v.Halted {
		t.Fatalf("after boot-vm: %+v", v)
	}
	if _, err := c.BootVM(ctx, "vm.a", ""); err == nil {
		t.Fatal("boot-vm of a running VM succeeded")
	}

	// The restart policy is back: a crash restarts it.
	drv.last().Kill()
	waitPhase(t, events, api.PhaseRestart)
	waitPhase(t, events, api.PhaseBooting)
	if drv.count() != 3 {
		t.Fatalf("%d starts after a crash of the booted VM, want 3", drv.count())
	}

	// stop-vm still removes a halted VM for good.
	if err := c.HaltVM(ctx, "vm.a", 0); err != nil {
		t.Fatal(err)
	}
	if err := c.StopVM(ctx, "vm.a", 0); err != nil {
		t.Fatal(err)
	}
	if _, err := api.ReadRecord(spec.StateDir); !os.IsNotExist(err) {
		t.Fatalf("record left after stop-vm of a halted VM: %v", err)
	}
	if err := c.HaltVM(ctx, "vm.a", 0); err == nil {
		t.Fatal("halt-vm of an unknown VM succeeded")
	}
}

// A VM that crashed and waits out its restart delay is halted at once, and
// stays halted.
func TestHaltDuringRestartDelay(t *testing.T) {
	s, drv, c := newTestSupervisor(t)
	ctx := context.Background()
	events, _ := c.Watch(ctx)
	spec := startSpec(t, s, "always")
	if _, err := c.StartVM(ctx, spec); err != nil {
		t.Fatal(err)
	}
	drv.last().Kill()
	waitPhase(t, events, api.PhaseRestart) // now waiting 1s before restarting
	start := time.Now()
	if err := c.HaltVM(ctx, "vm.a", 0); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 800*time.Millisecond {
		t.Errorf("halt-vm waited %s for the restart delay", d)
	}
	time.Sleep(1500 * time.Millisecond)
	if drv.count() != 1 {
		t.Fatalf("the halted VM was restarted (%d starts)", drv.count())
	}
	v := statusOf(t, c, "vm.a")
	if !v.Halted || v.ExitCode == nil || *v.ExitCode != 128+9 {
		t.Fatalf("halted crashed VM: %+v (want its exit code kept)", v)
	}

	// A later supervisor re-adopts it halted, not failed.
	s.release()
	s2 := New(Options{Namespace: "t", StateRoot: s.opts.StateRoot, RuntimeRoot: s.opts.RuntimeRoot, Driver: drv})
	s2.readopt(ctx)
	defer s2.release()
	if v := s2.vms["vm.a"]; v == nil || !v.st.Halted {
		t.Fatalf("re-adopted halted VM: %+v", v)
	}
}

// A start carried through for a client that hung up (a killed up) and a
// stop-vm from the next command: the stop waits for the VMM the start makes
// and stops it, instead of leaving it running unknown.
func TestStopWaitsForAStartInProgress(t *testing.T) {
	s, drv, c := newTestSupervisor(t)
	ctx := context.Background()
	drv.gate = make(chan struct{})
	open := sync.OnceFunc(func() { close(drv.gate) })
	t.Cleanup(open) // a failed test must not leave start-vm blocked
	spec := startSpec(t, s, "no")
	started := make(chan error, 1)
	go func() {
		_, err := c.StartVM(ctx, spec)
		started <- err
	}()
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		s.mu.Lock()
		launching := len(s.booting) > 0
		s.mu.Unlock()
		if launching {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("start-vm never reached the driver")
		}
	}
	stopped := make(chan error, 1)
	go func() {
		err := c.StopVM(ctx, "vm.a", 0)
		stopped <- err
	}()
	select {
	case err := <-stopped:
		t.Fatalf("stop-vm returned (%v) while the VMM was still being started", err)
	case <-time.After(300 * time.Millisecond):
	}
	open()
	for _, ch := range []chan error{started, stopped} {
		select {
		case err := <-ch:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("start-vm or stop-vm never returned")
		}
	}
	select {
	case _, ok := <-drv.last().events:
		if ok {
			t.Fatal("unexpected guest message")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the VMM started during stop-vm was left running")
	}
	if resp, err := c.Status(ctx); err != nil || len(resp) != 0 {
		t.Fatalf("still supervised after stop-vm: %+v, %v", resp, err)
	}
}
