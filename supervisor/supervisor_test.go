package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/console"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/netaddr"
	"github.com/stackvm/stack/supervisor/api"
	"github.com/stackvm/stack/supervisor/client"
)

// fakeDriver stands in for QEMU below this unit test: its instances report
// what the test tells them to. The real driver is exercised by the
// integration tests in cmd/stack/app.
type fakeDriver struct {
	mu      sync.Mutex
	started []*fakeInst
	nextPID int
	gate    chan struct{} // when set, Start waits for it to close
	fail    error         // when set, Start writes into the run dir, as QEMU's driver does, and fails
	// template: a paused start (a pool member) finds a template.
	template bool
}

type fakeInst struct {
	id     hypervisor.Identity
	events chan []byte
	done   chan struct{} // closed when the VMM ends, with st set
	st     hypervisor.ExitStatus
	once   sync.Once

	mu      sync.Mutex
	boot    hypervisor.BootKind
	claimed *hypervisor.Config
	paused  bool
}

func (d *fakeDriver) Name() string { return "fake" }

func (d *fakeDriver) Start(ctx context.Context, cfg *hypervisor.Config) (hypervisor.Instance, error) {
	if d.gate != nil {
		<-d.gate
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.fail != nil {
		os.WriteFile(filepath.Join(cfg.RunDir, "args.json"), []byte("[]"), 0o600)
		return nil, d.fail
	}
	boot := hypervisor.BootCold
	if cfg.Paused {
		if !d.template {
			return nil, hypervisor.ErrNoTemplate
		}
		boot = hypervisor.BootTemplate
	}
	d.nextPID++
	in := &fakeInst{id: hypervisor.Identity{Driver: "fake", PID: 100000 + d.nextPID, RunDir: cfg.RunDir},
		events: make(chan []byte, 16), done: make(chan struct{}), boot: boot}
	d.started = append(d.started, in)
	return in, nil
}

func (d *fakeDriver) Attach(ctx context.Context, id hypervisor.Identity) (hypervisor.Instance, error) {
	return nil, hypervisor.ErrGone
}

func (d *fakeDriver) Flatten(context.Context, string) error { return nil }
func (d *fakeDriver) CheckSnapshot(context.Context, *hypervisor.Config) error {
	return nil
}

func (d *fakeDriver) last() *fakeInst {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.started[len(d.started)-1]
}

func (d *fakeDriver) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.started)
}

func (f *fakeInst) Identity() hypervisor.Identity { return f.id }
func (f *fakeInst) State(context.Context) (hypervisor.RunState, error) {
	return hypervisor.StateRunning, nil
}
func (f *fakeInst) Stop(ctx context.Context, _ time.Duration) error {
	f.end(hypervisor.ExitStatus{Code: 0, GuestShutdown: true, Known: true})
	return nil
}
func (f *fakeInst) Kill() error { return f.Signal(syscall.SIGKILL) }
func (f *fakeInst) Signal(sig syscall.Signal) error {
	f.end(hypervisor.ExitStatus{Code: -1, Signal: sig, Known: true})
	return nil
}
func (f *fakeInst) end(st hypervisor.ExitStatus) {
	f.once.Do(func() { f.st = st; close(f.done); close(f.events) })
}
func (f *fakeInst) Wait(ctx context.Context) (hypervisor.ExitStatus, error) {
	select {
	case <-f.done:
		return f.st, nil
	case <-ctx.Done():
		return hypervisor.ExitStatus{}, ctx.Err()
	}
}
func (f *fakeInst) Guest() hypervisor.GuestChannel { return f }
func (f *fakeInst) Accel() hypervisor.Accel        { return hypervisor.Accel{Name: "tcg"} }
func (f *fakeInst) Boot() hypervisor.Boot {
	f.mu.Lock()
	defer f.mu.Unlock()
	return hypervisor.Boot{Kind: f.boot}
}
func (f *fakeInst) Parked(context.Context) error { return nil }
func (f *fakeInst) Claim(_ context.Context, cfg *hypervisor.Config) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.boot, f.claimed = hypervisor.BootPool, cfg
	return nil
}
func (f *fakeInst) DiskBytes(context.Context) (uint64, uint64, error) { return 0, 0, nil }
func (f *fakeInst) Pause(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.paused = true
	return nil
}
func (f *fakeInst) Resume(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.paused = false
	return nil
}
func (f *fakeInst) Save(_ context.Context, dir string) (hypervisor.Saved, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.paused {
		return hypervisor.Saved{}, errors.New("save: not paused")
	}
	return hypervisor.Saved{Bytes: 1}, os.WriteFile(filepath.Join(dir, "state"), []byte("saved"), 0o600)
}
func (f *fakeInst) Close() error          { return nil }
func (f *fakeInst) Events() <-chan []byte { return f.events }
func (f *fakeInst) Send(context.Context, []byte) error {
	return nil
}

func (f *fakeInst) say(t *testing.T, m guestproto.Message) {
	t.Helper()
	b, _ := json.Marshal(m)
	f.events <- b
}

func newTestSupervisor(t *testing.T) (*Supervisor, *fakeDriver, *client.Client) {
	t.Helper()
	s, drv, c, _ := serveTestSupervisor(t)
	return s, drv, c
}

// serveTestSupervisor is newTestSupervisor that also returns what Serve
// returns, once it does.
func serveTestSupervisor(t *testing.T) (*Supervisor, *fakeDriver, *client.Client, <-chan error) {
	t.Helper()
	drv := &fakeDriver{}
	root := t.TempDir()
	// Unix socket paths must stay short: keep the runtime root in /tmp.
	run, err := os.MkdirTemp("", "sv")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(run) })
	s := New(Options{Namespace: "t", StateRoot: root, RuntimeRoot: run, Driver: drv, StopTimeout: time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	done, served := make(chan error, 1), make(chan error, 1)
	go func() {
		err := s.Serve(ctx)
		served <- err
		done <- err
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	var c *client.Client
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err = client.Dial(ctx, run, root, "t"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("supervisor did not come up: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s, drv, c, served
}

func startSpec(t *testing.T, s *Supervisor, restart api.Restart) api.VMSpec {
	return api.VMSpec{Address: "vm.a", Name: "a", Restart: restart, StateDir: filenames.VMState(s.opts.StateRoot, "t", "a"),
		Ready: api.Ready{Guest: true, Timeout: api.Duration(5 * time.Second)}}
}

func waitPhase(t *testing.T, events <-chan api.Event, phase api.Phase) api.Event {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case ev := <-events:
			if ev.Phase == phase {
				return ev
			}
		case <-timeout:
			t.Fatalf("no %q event", phase)
		}
	}
}

func TestReadyExitAndStatus(t *testing.T) {
	s, drv, c := newTestSupervisor(t)
	ctx := context.Background()
	events, err := c.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	spec := startSpec(t, s, "no")
	resp, err := c.StartVM(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if resp.Process.PID != drv.last().id.PID {
		t.Fatalf("start-vm returned %+v", resp.Process)
	}
	drv.last().say(t, guestproto.Message{Type: guestproto.TypeReady, Status: &guestproto.Status{Ready: true}})
	waitPhase(t, events, api.PhaseReady)
	st, _ := c.Status(ctx)
	if len(st) != 1 || st[0].State != "ready" {
		t.Fatalf("status after ready: %+v", st)
	}
	// The workload exits 3: the guest reports it, then powers off.
	drv.last().say(t, guestproto.Message{Type: guestproto.TypeExit, Status: &guestproto.Status{Exited: true, ExitCode: 3}})
	time.Sleep(50 * time.Millisecond)
	drv.last().end(hypervisor.ExitStatus{Code: 0, GuestShutdown: true, Known: true})
	waitPhase(t, events, api.PhaseFailed)
	st, _ = c.Status(ctx)
	if v := st[0]; v.State != "failed" || v.ExitCode == nil || *v.ExitCode != 3 {
		t.Fatalf("after exit 3: %+v", v)
	}
	// The record on disk says the same, for ps without a supervisor.
	r, err := api.ReadRecord(spec.StateDir)
	if err != nil || r.Status.State != "failed" || *r.Status.ExitCode != 3 || r.Version != api.Version {
		t.Fatalf("record: %+v, %v", r, err)
	}
	if drv.count() != 1 {
		t.Fatal("restart = no restarted the VM")
	}
}

func TestRestartOnFailureAndKill(t *testing.T) {
	s, drv, c := newTestSupervisor(t)
	ctx := context.Background()
	events, _ := c.Watch(ctx)
	spec := startSpec(t, s, "on-failure")
	if _, err := c.StartVM(ctx, spec); err != nil {
		t.Fatal(err)
	}
	drv.last().Kill()
	ev := waitPhase(t, events, api.PhaseFailed)
	if ev.Message == "" {
		t.Fatal("failure without a reason")
	}
	waitPhase(t, events, api.PhaseRestart)
	waitPhase(t, events, api.PhaseBooting)
	if drv.count() != 2 {
		t.Fatalf("%d starts, want 2", drv.count())
	}
	// A clean exit is not restarted under on-failure.
	drv.last().end(hypervisor.ExitStatus{Code: 0, GuestShutdown: true, Known: true})
	waitPhase(t, events, api.PhaseExited)
	time.Sleep(1500 * time.Millisecond)
	if drv.count() != 2 {
		t.Fatal("on-failure restarted a clean exit")
	}
	// stop-vm is idempotent and removes the record.
	for i := 0; i < 2; i++ {
		if err := c.StopVM(ctx, "vm.a", 0); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := api.ReadRecord(spec.StateDir); !os.IsNotExist(err) {
		t.Fatalf("record left after stop: %v", err)
	}
}

func TestNetworkWiringAndReadoptOfDeadVM(t *testing.T) {
	s, drv, c := newTestSupervisor(t)
	ctx := context.Background()
	net := api.NetworkSpec{Name: "lan", Subnet: netip.MustParsePrefix("10.9.0.0/24"), Gateway: netip.MustParseAddr("10.9.0.1")}
	if err := c.EnsureNetwork(ctx, net); err != nil {
		t.Fatal(err)
	}
	spec := startSpec(t, s, "no")
	spec.NICs = []api.NIC{{Network: "lan", MAC: mac("52:54:00:00:00:01"), IP: netip.MustParseAddr("10.9.0.2")}}
	if _, err := c.StartVM(ctx, spec); err != nil {
		t.Fatal(err)
	}
	ports := s.nets["lan"].sw.Stats()
	if len(ports.Ports) != 1 {
		t.Fatalf("switch ports after start: %+v", ports)
	}
	// A VM on a network that is not running is refused, and leaves nothing.
	bad := spec
	bad.Address, bad.Name, bad.StateDir = "vm.b", "b", filenames.VMState(s.opts.StateRoot, "t", "b")
	bad.NICs = []api.NIC{{Network: "nope", MAC: mac("52:54:00:00:00:02")}}
	if _, err := c.StartVM(ctx, bad); err == nil {
		t.Fatal("start on a missing network succeeded")
	}
	if _, err := os.Stat(filenames.VMRuntime(s.opts.RuntimeRoot, "t", "b")); !os.IsNotExist(err) {
		t.Fatalf("a refused start left its runtime directory: %v", err)
	}
	// So does a VMM that fails to start.
	bad.NICs = spec.NICs[:0]
	drv.mu.Lock()
	drv.fail = errors.New("qemu failed")
	drv.mu.Unlock()
	if _, err := c.StartVM(ctx, bad); err == nil || !strings.Contains(err.Error(), "qemu failed") {
		t.Fatalf("start with a failing VMM: %v", err)
	}
	drv.mu.Lock()
	drv.fail = nil
	drv.mu.Unlock()
	if _, err := os.Stat(filenames.VMRuntime(s.opts.RuntimeRoot, "t", "b")); !os.IsNotExist(err) {
		t.Fatalf("a failed start left its runtime directory: %v", err)
	}
	// A second supervisor on the same state finds the VM's record; the fake
	// driver says its process is gone, so it shows as failed.
	s.release()
	s2 := New(Options{Namespace: "t", StateRoot: s.opts.StateRoot, RuntimeRoot: s.opts.RuntimeRoot, Driver: drv})
	s2.readopt(ctx)
	defer s2.release()
	if v := s2.vms["vm.a"]; v == nil || v.st.State != "failed" {
		t.Fatalf("re-adopted dead VM: %+v", v)
	}
	if s2.nets["lan"] == nil {
		t.Fatal("network not restored from its record")
	}
}

// A replaced cloud-init VM keeps its console log: the ready line of the VM
// before must not make the new one ready.
func TestConsoleReadyLineOnlyFromThisBoot(t *testing.T) {
	s, _, c := newTestSupervisor(t)
	ctx := context.Background()
	events, _ := c.Watch(ctx)
	spec := startSpec(t, s, "no")
	spec.Ready = api.Ready{ConsoleLine: "STACK-READY id-1", ConsoleFailLine: "STACK-FAILED id-1", Timeout: api.Duration(10 * time.Second)}
	logPath := consoleLogPath(&spec)
	os.MkdirAll(spec.StateDir, 0o700)
	if err := os.WriteFile(logPath, []byte("previous boot\nSTACK-READY id-1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := c.StartVM(ctx, spec); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * console.FollowInterval)
	if st, _ := c.Status(ctx); st[0].State == "ready" {
		t.Fatal("ready from the previous boot's line")
	}
	f, _ := os.OpenFile(logPath, os.O_APPEND|os.O_WRONLY, 0)
	f.WriteString("[  31.0] cloud-init: STACK-READY id-1\r\n")
	f.Close()
	waitPhase(t, events, api.PhaseReady)
}

// A supervisor runs one state directory's namespace. A command for another
// state directory with the same namespace reaches the same socket; Dial and
// Ensure refuse it, so that its `down` cannot stop VMs it has no state for
// (it used to, leaving the other state's VMs recorded but gone).
func TestOtherStateRootIsRefused(t *testing.T) {
	s, _, _ := newTestSupervisor(t)
	ctx := context.Background()
	link := filepath.Join(t.TempDir(), "link")
	if err := os.Symlink(s.opts.StateRoot, link); err != nil {
		t.Fatal(err)
	}
	if _, err := client.Dial(ctx, s.opts.RuntimeRoot, link, "t"); err != nil {
		t.Fatalf("dial through a symlink to the same state root: %v", err)
	}
	other := t.TempDir()
	_, err := client.Dial(ctx, s.opts.RuntimeRoot, other, "t")
	var sre *client.StateRootError
	if !errors.As(err, &sre) || sre.Running != s.opts.StateRoot || sre.Wanted != other ||
		!strings.Contains(err.Error(), s.opts.StateRoot) {
		t.Fatalf("dial with another state root: %v", err)
	}
	// Ensure does not try to start a second supervisor: with an executable
	// that does not exist, trying would fail differently.
	_, err = client.Ensure(ctx, client.SpawnOptions{Namespace: "t", StateRoot: other, RuntimeRoot: s.opts.RuntimeRoot, Executable: "/nonexistent/stack"})
	if !errors.As(err, &sre) {
		t.Fatalf("ensure with another state root: %v", err)
	}
	if _, err := os.Stat(filepath.Join(other, "t")); !os.IsNotExist(err) {
		t.Fatalf("ensure with another state root made its namespace directory: %v", err)
	}
}

// A supervisor nobody can reach (its socket removed, say by a clean-up of
// /tmp, or replaced by another supervisor's) exits and leaves its VMs
// running for the next supervisor to re-adopt; it does not stop them, and
// does not remove a socket that is not its own.
func TestLostSocketEndsTheSupervisor(t *testing.T) {
	defer func(d time.Duration) { socketCheckInterval = d }(socketCheckInterval)
	socketCheckInterval = 10 * time.Millisecond
	for _, how := range []string{"removed", "replaced"} {
		t.Run(how, func(t *testing.T) {
			s, drv, c, served := serveTestSupervisor(t)
			spec := startSpec(t, s, "always")
			if _, err := c.StartVM(context.Background(), spec); err != nil {
				t.Fatal(err)
			}
			path := filenames.SupervisorSocketPath(s.opts.RuntimeRoot, "t")
			if err := os.Remove(path); err != nil {
				t.Fatal(err)
			}
			if how == "replaced" {
				ln, err := net.Listen("unix", path)
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
			}
			select {
			case err := <-served:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("the supervisor still serves after its socket was " + how)
			}
			select {
			case <-drv.last().done:
				t.Fatalf("the supervisor stopped its VM on the way out: %+v", drv.last().st)
			default:
			}
			if _, err := api.ReadRecord(spec.StateDir); err != nil {
				t.Fatalf("the VM's record is gone: %v", err)
			}
			if _, err := os.Stat(path); (how == "replaced") != (err == nil) {
				t.Fatalf("socket path after exit: %v", err)
			}
		})
	}
}

func mac(s string) api.MAC {
	m, err := netaddr.ParseMAC(s)
	if err != nil {
		panic(err)
	}
	return m
}

// TestEmptyNamespaceWaitsForItsClient: an empty supervisor exits after a
// grace period, but not while a client holds a connection (an up whose
// disks take longer than the grace to prepare, with its watch open, was
// left without a supervisor); once the client hangs up, it exits.
func TestEmptyNamespaceWaitsForItsClient(t *testing.T) {
	_, _, c, served := serveTestSupervisor(t)
	ctx, cancel := context.WithCancel(context.Background())
	if _, err := c.Watch(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-served:
		t.Fatalf("the supervisor exited while a client watched: %v", err)
	case <-time.After(4 * time.Second): // twice the idle grace
	}
	cancel()
	select {
	case <-served:
	case <-time.After(10 * time.Second):
		t.Fatal("the empty supervisor did not exit after its client hung up")
	}
}
