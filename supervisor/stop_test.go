package supervisor

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/stackvm/stack/guestproto"
)

func statusOf(t *testing.T, c *Client, address string) VMStatus {
	t.Helper()
	resp, err := c.Call(context.Background(), &Request{Op: OpStatus})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range resp.VMs {
		if v.Address == address {
			return v
		}
	}
	t.Fatalf("no %s in status %+v", address, resp.VMs)
	return VMStatus{}
}

// halt-vm keeps the VM, stopped, without restarting it even under
// restart = "always"; boot-vm starts it again as a new incarnation.
func TestHaltKeepsTheVMAndBootStartsItAgain(t *testing.T) {
	s, drv, c := newTestSupervisor(t)
	ctx := context.Background()
	events, _ := c.Watch(ctx)
	spec := startSpec(t, s, "always")
	spec.Instance = "one"
	if _, err := c.Call(ctx, &Request{Op: OpStartVM, VM: &spec}); err != nil {
		t.Fatal(err)
	}
	drv.last().say(t, guestproto.Message{Type: guestproto.TypeReady, Status: &guestproto.Status{Ready: true}})
	waitPhase(t, events, PhaseReady)

	for i := 0; i < 2; i++ { // halting a halted VM changes nothing
		if _, err := c.Call(ctx, &Request{Op: OpHaltVM, Address: "vm.a"}); err != nil {
			t.Fatal(err)
		}
	}
	v := statusOf(t, c, "vm.a")
	if v.State != "stopped" || !v.Halted || v.ExitCode == nil || *v.ExitCode != 0 || v.PID != 0 {
		t.Fatalf("after halt-vm: %+v", v)
	}
	rec, _, err := ReadRecord(spec.StateDir)
	if err != nil || !rec.Halted || rec.State != "stopped" {
		t.Fatalf("record after halt-vm: %+v, %v", rec, err)
	}
	time.Sleep(1500 * time.Millisecond) // longer than the first restart delay
	if drv.count() != 1 {
		t.Fatalf("restart = always restarted a halted VM (%d starts)", drv.count())
	}

	resp, err := c.Call(ctx, &Request{Op: OpBootVM, Address: "vm.a", Instance: "two"})
	if err != nil {
		t.Fatal(err)
	}
	if drv.count() != 2 || resp.Process == nil || resp.Process.PID != drv.last().id.PID {
		t.Fatalf("boot-vm: %d starts, process %+v", drv.count(), resp.Process)
	}
	drv.last().say(t, guestproto.Message{Type: guestproto.TypeReady, Status: &guestproto.Status{Ready: true}})
	if ev := waitPhase(t, events, PhaseReady); ev.Instance != "two" {
		t.Fatalf("ready event of instance %q, want the booted one", ev.Instance)
	}
	if v := statusOf(t, c, "vm.a"); v.State != "ready" || v.Halted {
		t.Fatalf("after boot-vm: %+v", v)
	}
	if _, err := c.Call(ctx, &Request{Op: OpBootVM, Address: "vm.a"}); err == nil {
		t.Fatal("boot-vm of a running VM succeeded")
	}

	// The restart policy is back: a crash restarts it.
	drv.last().Kill()
	waitPhase(t, events, PhaseRestart)
	waitPhase(t, events, PhaseBooting)
	if drv.count() != 3 {
		t.Fatalf("%d starts after a crash of the booted VM, want 3", drv.count())
	}

	// stop-vm still removes a halted VM for good.
	if _, err := c.Call(ctx, &Request{Op: OpHaltVM, Address: "vm.a"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Call(ctx, &Request{Op: OpStopVM, Address: "vm.a"}); err != nil {
		t.Fatal(err)
	}
	if _, _, err := ReadRecord(spec.StateDir); !os.IsNotExist(err) {
		t.Fatalf("record left after stop-vm of a halted VM: %v", err)
	}
	if _, err := c.Call(ctx, &Request{Op: OpHaltVM, Address: "vm.a"}); err == nil {
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
	if _, err := c.Call(ctx, &Request{Op: OpStartVM, VM: &spec}); err != nil {
		t.Fatal(err)
	}
	drv.last().Kill()
	waitPhase(t, events, PhaseRestart) // now waiting 1s before restarting
	start := time.Now()
	if _, err := c.Call(ctx, &Request{Op: OpHaltVM, Address: "vm.a"}); err != nil {
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
