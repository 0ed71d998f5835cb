package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/stackfile"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor/api"
	"github.com/stackvm/stack/supervisor/client"
)

// fakeSupervisor plays the supervisor for the executor's tests: it keeps
// the calls in order, and reports a started VM ready (or failed, per
// fail) after a delay, through the events of Watch.
type fakeSupervisor struct {
	mu        sync.Mutex
	calls     []string
	events    chan api.Event
	ready     time.Duration            // from start to ready
	startIn   time.Duration            // how long start-vm takes
	hold      chan struct{}            // when set, no VM is ready before it closes
	fail      map[string]string        // address -> failure reason instead of ready
	gate      map[string]chan struct{} // address -> start-vm blocks until closed
	status    map[string]api.VMState
	instances map[string]string // address -> the instance start-vm was given
	netFail   map[string]bool   // networks whose ensure-network fails
	lost      map[string]bool   // addresses whose ready event a slow watcher misses
	running   int               // start-vm calls in progress
	maxRun    int
}

func newFakeSupervisor() *fakeSupervisor {
	return &fakeSupervisor{events: make(chan api.Event, 1024), ready: 20 * time.Millisecond,
		fail: map[string]string{}, gate: map[string]chan struct{}{}, status: map[string]api.VMState{},
		instances: map[string]string{}, netFail: map[string]bool{}, lost: map[string]bool{}}
}

func (f *fakeSupervisor) call(s string) {
	f.mu.Lock()
	f.calls = append(f.calls, s)
	f.mu.Unlock()
}

// index is the position of call s, or -1.
func (f *fakeSupervisor) index(s string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Index(f.calls, s)
}

func (f *fakeSupervisor) emit(address, instance string, phase api.Phase, msg string) {
	f.events <- api.Event{Time: time.Now(), Address: address, Instance: instance, Phase: phase, Message: msg}
}

func (f *fakeSupervisor) EnsureNetwork(ctx context.Context, n api.NetworkSpec) error {
	f.call("ensure-network " + n.Name)
	if f.netFail[n.Name] {
		return errors.New("switch failed")
	}
	return nil
}

func (f *fakeSupervisor) SaveSnapshot(context.Context, string) (*api.Saved, error) {
	return nil, errors.New("fake: no snapshots")
}
func (f *fakeSupervisor) CheckRestore(context.Context, []api.RestoreVM) error {
	return errors.New("fake: no snapshots")
}
func (f *fakeSupervisor) RestoreVMs(context.Context, []api.RestoreVM) ([]api.Started, error) {
	return nil, errors.New("fake: no snapshots")
}

func (f *fakeSupervisor) RemoveNetwork(ctx context.Context, name string) error {
	f.call("remove-network " + name)
	return nil
}

func (f *fakeSupervisor) StartVM(ctx context.Context, spec api.VMSpec) (api.Started, error) {
	f.mu.Lock()
	f.running++
	f.maxRun = max(f.maxRun, f.running)
	gate := f.gate[spec.Address]
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		f.running--
		f.mu.Unlock()
	}()
	f.call("start-vm " + spec.Address)
	time.Sleep(f.startIn)
	if gate != nil {
		select {
		case <-gate:
		case <-ctx.Done():
			return api.Started{}, ctx.Err()
		}
	}
	f.mu.Lock()
	f.status[spec.Address] = api.StateBooting
	f.instances[spec.Address] = spec.Instance
	reason, fails := f.fail[spec.Address]
	f.mu.Unlock()
	if !spec.Hold {
		f.later(spec.Address, spec.Instance, reason, fails)
	}
	return api.Started{Process: api.Process{Driver: "fake", PID: 1}, Accel: "tcg"}, nil
}

// later reports the VM ready (or failed) after f.ready.
func (f *fakeSupervisor) later(address, instance, reason string, fails bool) {
	time.AfterFunc(f.ready, func() {
		if f.hold != nil {
			<-f.hold
		}
		f.mu.Lock()
		if fails {
			f.status[address] = api.StateFailed
		} else {
			f.status[address] = api.StateReady
		}
		f.mu.Unlock()
		if fails {
			f.emit(address, instance, api.PhaseFailed, reason)
		} else {
			f.call("ready " + address)
			if !f.lost[address] {
				f.emit(address, instance, api.PhaseReady, "ready")
			}
		}
	})
}

func (f *fakeSupervisor) BootVM(ctx context.Context, address, instance string) (api.Started, error) {
	f.call("boot-vm " + address)
	f.later(address, instance, "", false)
	return api.Started{Process: api.Process{Driver: "fake", PID: 2}, Accel: "tcg"}, nil
}

func (f *fakeSupervisor) StopVM(ctx context.Context, address string, timeout time.Duration) error {
	f.call("stop-vm " + address)
	return nil
}

func (f *fakeSupervisor) HaltVM(ctx context.Context, address string, timeout time.Duration) error {
	f.call("halt-vm " + address)
	return nil
}

func (f *fakeSupervisor) Stats(ctx context.Context) ([]api.VMStats, error) { return nil, nil }

func (f *fakeSupervisor) PauseVM(ctx context.Context, address string) error {
	f.call("pause-vm " + address)
	return nil
}

func (f *fakeSupervisor) ResumeVM(ctx context.Context, address string) error {
	f.call("resume-vm " + address)
	return nil
}

func (f *fakeSupervisor) SignalVM(ctx context.Context, address string, sig syscall.Signal) error {
	f.call(fmt.Sprintf("signal-vm %s %d", address, sig))
	return nil
}

func (f *fakeSupervisor) UpdateVM(ctx context.Context, u api.Update) error {
	f.call("update-vm " + u.Address)
	return nil
}

// ReleaseVM starts a held VM's workload: it is ready a moment later.
func (f *fakeSupervisor) ReleaseVM(ctx context.Context, address string) error {
	f.call("release-vm " + address)
	f.mu.Lock()
	reason, fails := f.fail[address]
	f.mu.Unlock()
	f.later(address, f.instanceOf(address), reason, fails)
	return nil
}

func (f *fakeSupervisor) instanceOf(address string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.instances[address]
}

func (f *fakeSupervisor) Status(ctx context.Context) ([]api.VMStatus, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []api.VMStatus
	for a, s := range f.status {
		out = append(out, api.VMStatus{Address: a, State: s, Instance: f.instances[a]})
	}
	return out, nil
}

func (f *fakeSupervisor) Watch(ctx context.Context) (<-chan api.Event, error) { return f.events, nil }

func (f *fakeSupervisor) Exec(context.Context, string, api.ExecSpec, client.ExecIO) (int, error) {
	return 0, errors.New("no exec in the fake")
}

func (f *fakeSupervisor) Shutdown(ctx context.Context) error {
	f.call("shutdown")
	return nil
}

func (f *fakeSupervisor) SetPools(ctx context.Context, specs []api.PoolSpec) error {
	f.call(fmt.Sprintf("set-pools %d", len(specs)))
	return nil
}

func (f *fakeSupervisor) Pools(ctx context.Context) ([]api.PoolStatus, error) { return nil, nil }

var _ Supervisor = (*fakeSupervisor)(nil)

// applyStack loads src, plans it against st (nil: nothing yet) and
// applies the plan through fake; it returns the apply's error, the plan and
// the events.
func applyStack(t *testing.T, fake *fakeSupervisor, src string, st *state.State, concurrency int, ctx context.Context) (error, *planner.Plan, []Event) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "stack.hcl"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	desired, _, diags := stackfile.Load(stackfile.Options{Dir: dir, Namespace: "ns", Environ: []string{}})
	if diags.HasErrors() {
		t.Fatal(diags)
	}
	if st == nil {
		st = state.New("ns")
	}
	plan, err := planner.Make(planner.Input{Desired: desired, State: st})
	if err != nil {
		t.Fatal(err)
	}
	e := New(Options{Namespace: "ns", StateRoot: filepath.Join(dir, "state"), Concurrency: concurrency,
		Images: func(context.Context) (string, string, error) { return "/k", "/i", nil }})
	var mu sync.Mutex
	var events []Event
	a := e.newApplier(st, desired, func(ev Event) {
		mu.Lock()
		events = append(events, ev)
		mu.Unlock()
	})
	if err := a.begin(ctx, fake); err != nil {
		t.Fatal(err)
	}
	err = a.apply(ctx, plan)
	mu.Lock()
	defer mu.Unlock()
	return err, plan, slices.Clone(events)
}

const chain = `
network "lan" {
  subnet = "10.1.0.0/24"
}
vm "web" {
  network "lan" {}
}
vm "client" {
  depends_on = [vm.web]
  network "lan" {}
}
vm "solo" {
  network "lan" {}
}
`

// TestApplyOrder: the network before the VMs on it; a dependent's VMM
// starts at once (its workload held), and its workload only once what it
// depends on is ready.
func TestApplyOrder(t *testing.T) {
	fake := newFakeSupervisor()
	// No VM is ready until client's VMM has been started, or 5 s have
	// passed: an engine that waits for web before starting client's VMM
	// shows it in the order of calls however slow the machine.
	fake.hold = make(chan struct{})
	go func() {
		defer close(fake.hold)
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if fake.index("start-vm vm.client") >= 0 {
				return
			}
		}
	}()
	err, _, _ := applyStack(t, fake, chain, nil, 8, context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for _, vm := range []string{"vm.web", "vm.client", "vm.solo"} {
		if fake.index("ensure-network lan") > fake.index("start-vm "+vm) || fake.index("start-vm "+vm) < 0 {
			t.Errorf("%s started before its network: %v", vm, fake.calls)
		}
	}
	if r := fake.index("release-vm vm.client"); r < fake.index("ready vm.web") || r < 0 {
		t.Errorf("client's workload released before web was ready: %v", fake.calls)
	}
	if fake.index("start-vm vm.client") > fake.index("ready vm.web") {
		t.Errorf("client's VMM waited for web: it should boot at once with its workload held: %v", fake.calls)
	}
	if fake.index("ready vm.client") < 0 || fake.index("ready vm.solo") < 0 {
		t.Errorf("not every VM became ready: %v", fake.calls)
	}
}

// TestReadyByStatus: a VM whose ready event the engine's watcher missed
// (the supervisor drops events for a slow watcher) is ready by its status,
// of its own incarnation, rather than failed at its timeout.
func TestReadyByStatus(t *testing.T) {
	fake := newFakeSupervisor()
	fake.lost["vm.solo"] = true
	start := time.Now()
	err, _, events := applyStack(t, fake, chain, nil, 8, context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var ready bool
	for _, ev := range events {
		ready = ready || (ev.Address == "vm.solo" && ev.Phase == PhaseReady)
	}
	if !ready {
		t.Errorf("no ready event for vm.solo: %v", events)
	}
	t.Logf("ready by status after %s", time.Since(start).Round(time.Millisecond))
}

// TestApplyBranchFailure: web's VMM is killed while client, which depends
// on it, waits with its workload held; client is stopped without its
// workload ever starting; solo is unaffected, and the
// error names both failures.
func TestApplyBranchFailure(t *testing.T) {
	fake := newFakeSupervisor()
	fake.fail["vm.web"] = "the VMM was killed by signal 9"
	err, _, events := applyStack(t, fake, chain, nil, 8, context.Background())
	if err == nil {
		t.Fatal("apply succeeded with a failed VM")
	}
	for _, want := range []string{"vm.web: the VMM was killed by signal 9", "vm.client: its dependency vm.web failed"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if strings.Contains(err.Error(), "vm.solo") || fake.index("ready vm.solo") < 0 {
		t.Errorf("solo suffered from web's failure: %v / %v", err, fake.calls)
	}
	if fake.index("release-vm vm.client") >= 0 || fake.index("stop-vm vm.client") < 0 {
		t.Errorf("client was released, or not stopped: %v", fake.calls)
	}
	var failed bool
	for _, ev := range events {
		failed = failed || (ev.Address == "vm.client" && ev.Phase == PhaseFailed)
	}
	if !failed {
		t.Errorf("no failed event for client: %v", events)
	}
}

// TestApplyNotAppliedAfterFailure: what waits for a failed action before
// it starts is not applied at all, and says so; what does not wait for it
// goes on.
func TestApplyNotAppliedAfterFailure(t *testing.T) {
	fake := newFakeSupervisor()
	fake.netFail["lan"] = true
	src := chain + `
network "other" {
  subnet = "10.2.0.0/24"
}
vm "elsewhere" {
  network "other" {}
}
`
	err, _, events := applyStack(t, fake, src, nil, 8, context.Background())
	if err == nil {
		t.Fatal("apply succeeded with a failed network")
	}
	for _, want := range []string{"network.lan: switch failed", "vm.web: not applied because network.lan failed",
		"vm.client: not applied because network.lan failed", "vm.solo: not applied because network.lan failed"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if fake.index("start-vm vm.web") >= 0 || fake.index("ready vm.elsewhere") < 0 {
		t.Errorf("calls: %v", fake.calls)
	}
	var said bool
	for _, ev := range events {
		said = said || (ev.Address == "vm.web" && ev.Phase == PhaseFailed && ev.Message == "not applied: network.lan failed")
	}
	if !said {
		t.Errorf("no 'not applied' event for web: %v", events)
	}
}

// TestApplyConcurrencyLimit: no more VMMs are being started at once than
// the limit allows, and a VM waiting for readiness holds no slot: no VM is
// ready until all six have started, which two slots allow only if a slot
// is given back once its VMM runs.
func TestApplyConcurrencyLimit(t *testing.T) {
	fake := newFakeSupervisor()
	fake.startIn, fake.hold = 20*time.Millisecond, make(chan struct{})
	var b strings.Builder
	b.WriteString("network \"lan\" {\n  subnet = \"10.1.0.0/24\"\n}\n")
	for i := range 6 {
		fmt.Fprintf(&b, "vm \"v%d\" {\n  network \"lan\" {}\n}\n", i)
	}
	done := make(chan error, 1)
	go func() {
		err, _, _ := applyStack(t, fake, b.String(), nil, 2, context.Background())
		done <- err
	}()
	starts := func() int {
		fake.mu.Lock()
		defer fake.mu.Unlock()
		n := 0
		for _, c := range fake.calls {
			if strings.HasPrefix(c, "start-vm ") {
				n++
			}
		}
		return n
	}
	for deadline := time.Now().Add(10 * time.Second); starts() < 6; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of 6 VMs started while none was ready: VMs waiting for readiness hold their slots", starts())
		}
	}
	close(fake.hold)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if fake.maxRun > 2 {
		t.Errorf("%d start-vm calls at once, limit 2", fake.maxRun)
	}
}

// TestApplyCancel: a cancelled apply returns promptly with the context's
// error, and starts nothing more.
func TestApplyCancel(t *testing.T) {
	fake := newFakeSupervisor()
	never := make(chan struct{}) // no start returns
	for _, vm := range []string{"vm.web", "vm.client", "vm.solo"} {
		fake.gate[vm] = never
	}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(100*time.Millisecond, cancel)
	done := make(chan error, 1)
	go func() {
		err, _, _ := applyStack(t, fake, chain, nil, 1, ctx)
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled apply: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled apply did not return")
	}
	starts := 0
	for _, c := range fake.calls {
		if strings.HasPrefix(c, "start-vm ") {
			starts++
		}
	}
	if starts != 1 {
		t.Errorf("%d VMs started with one slot held by a start that never returns, want 1: %v", starts, fake.calls)
	}
}

// TestApplyDeleteOrder: down stops the VMs before it removes their
// network.
func TestApplyDeleteOrder(t *testing.T) {
	fake := newFakeSupervisor()
	err, plan, _ := applyStack(t, fake, chain, nil, 8, context.Background())
	if err != nil {
		t.Fatal(err)
	}
	st := state.New("ns")
	for _, act := range plan.Actions {
		plan.Record(st, act)
	}
	down := newFakeSupervisor()
	err, _, _ = applyStack(t, down, "", st, 8, context.Background())
	if err != nil {
		t.Fatal(err)
	}
	net := down.index("remove-network lan")
	for _, vm := range []string{"vm.web", "vm.client", "vm.solo"} {
		if i := down.index("stop-vm " + vm); i < 0 || i > net {
			t.Errorf("%s not stopped before its network went: %v", vm, down.calls)
		}
	}
	if down.index("stop-vm vm.client") > down.index("stop-vm vm.web") {
		t.Errorf("web stopped before client, which depended on it: %v", down.calls)
	}
}
