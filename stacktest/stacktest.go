// Package stacktest runs stacks as Go test fixtures: real VMs under QEMU,
// from the same stack file as the dev environment.
//
//	func TestService(t *testing.T) {
//		s := stacktest.Up(t, "testdata/stack.hcl")
//		web := s.VM("web")
//		// ... talk to web.Addresses["lan"], read web.Logs() ...
//		web.Stop(ctx)  // kept with its disks; web.Start(ctx) boots it again
//	}
//
// Up gives each test its own namespace (from t.Name()), so parallel tests
// do not collide; t.Cleanup brings the stack down, volumes included; with
// WithSnapshot, only the first Up of a stack boots it and later ones restore
// a snapshot of it; when the
// test fails, every VM's console is written to the test log. The supervisor
// of the namespace watches the test binary: if it dies, even by SIGKILL, the
// VMs go with it. Under `go test -short`, Up skips the test; a machine
// without QEMU fails it with a clear message rather than skipping silently.
package stacktest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stackvm/stack"
	"github.com/stackvm/stack/hypervisor/console"
	"github.com/stackvm/stack/internal/filenames"
)

// Test binaries that bring stacks up are re-executed as their namespaces'
// supervisors (see stack.Supervise): this takes that role before any test
// runs, so that tests need no TestMain for it.
func init() {
	if code, started := stack.Supervise(); started {
		os.Exit(code)
	}
}

// Option tunes Up.
type Option func(*config)

type config struct {
	vars     []string
	timeout  time.Duration
	files    []string
	snapshot bool
	prepare  []func(*Stack)
}

// WithVar sets a stack variable, as --var NAME=VALUE does.
func WithVar(name, value string) Option {
	return func(c *config) { c.vars = append(c.vars, name+"="+value) }
}

// WithTimeout bounds the whole up (default 5 minutes).
func WithTimeout(d time.Duration) Option { return func(c *config) { c.timeout = d } }

// WithFile adds another stack file, as a second -f does.
func WithFile(path string) Option { return func(c *config) { c.files = append(c.files, path) } }

// WithSnapshot makes the stack a snapshot fixture: the first Up of the
// stack files (their contents, the variables and the test binary, which
// holds stack and the prepare functions) boots the stack, runs prepare
// (seed a database, say), and saves a snapshot in the cache
// (<cache>/fixtures); every later Up, in this run or the next, restores
// it into the test's own namespace in a fraction of a boot. Each test
// gets the saved state, whatever an earlier test wrote to its guests. A
// snapshot that cannot be restored here any more (a rebuilt guest image,
// another QEMU) is made again. See docs/snapshots.md.
func WithSnapshot(prepare ...func(*Stack)) Option {
	return func(c *config) { c.snapshot, c.prepare = true, append(c.prepare, prepare...) }
}

// Stack is a running stack owned by a test.
type Stack struct {
	t       testing.TB
	Project *stack.Project
	vms     map[string]stack.VMStatus
}

// VM is one VM of the stack. Its methods fail the test when the VM cannot
// be acted on at all, and return what the test should judge.
type VM struct {
	s    *Stack
	Name string
	// Addresses maps each network the VM is on to its IPv4 address.
	Addresses map[string]string
	// Handle is the VM in package stack's API (typed addresses, published
	// ports, Logs with follow, and the rest) for what this type does not
	// wrap.
	Handle *stack.VM
}

// Up brings the stack in file up for the test and returns once every VM is
// ready. Any failure fails the test.
func Up(t testing.TB, file string, opts ...Option) *Stack {
	t.Helper()
	if testing.Short() {
		t.Skip("stacktest boots VMs; skipped with -short")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatal("stacktest: qemu-system-x86_64 is not installed (apt-get install qemu-system-x86); this test boots real VMs")
	}
	cfg := config{timeout: 5 * time.Minute}
	for _, o := range opts {
		o(&cfg)
	}
	p, diags := stack.Load(stack.Options{
		Files: append([]string{file}, cfg.files...), Namespace: Namespace(t),
		Vars: cfg.vars, StateDir: t.TempDir(),
	})
	if diags.HasErrors() {
		var b strings.Builder
		p.Sources.WriteDiagnostics(&b, diags, false, 0)
		t.Fatalf("stacktest: %s does not load:\n%s", file, b.String())
	}
	s := &Stack{t: t, Project: p}
	t.Cleanup(func() {
		if t.Failed() {
			s.dumpConsoles()
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		// Everything goes, volumes too: no guest needs to shut down
		// cleanly, so none is waited for.
		if err := p.Down(ctx, stack.DownOptions{Volumes: true, StopTimeout: time.Millisecond}); err != nil {
			t.Errorf("stacktest: down: %v", err)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), cfg.timeout)
	defer cancel()
	if cfg.snapshot {
		s.upFromSnapshot(ctx, &cfg)
		return s
	}
	s.up(ctx)
	return s
}

// up brings the stack up from nothing.
func (s *Stack) up(ctx context.Context) {
	s.t.Helper()
	start := time.Now()
	if _, err := s.Project.Up(ctx, stack.UpOptions{OwnerPID: os.Getpid()}); err != nil {
		s.dumpConsoles()
		s.t.Fatalf("stacktest: up: %v", err)
	}
	s.t.Logf("stacktest: namespace %s up in %s", s.Project.Stack.Namespace, time.Since(start).Round(time.Millisecond))
	s.refresh()
}

var nonLabel = regexp.MustCompile(`[^a-z0-9-]+`)

// Namespace is the namespace Up uses for t: derived from t.Name(), short,
// and unique per test and per test binary run.
func Namespace(t testing.TB) string {
	name := strings.Trim(nonLabel.ReplaceAllString(strings.ToLower(t.Name()), "-"), "-")
	if len(name) > 40 {
		name = strings.TrimRight(name[:40], "-")
	}
	h := sha256.Sum256([]byte(t.Name() + "/" + strings.Join(os.Args, " ")))
	return "t-" + name + "-" + hex.EncodeToString(h[:3]) + "-" + itoa(os.Getpid()%100000)
}

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 10 {
		b = append([]byte{byte('0' + n%10)}, b...)
	}
	return string(b)
}

func (s *Stack) refresh() {
	s.t.Helper()
	list, err := s.Project.Status(context.Background())
	if err != nil {
		s.t.Fatalf("stacktest: status: %v", err)
	}
	s.vms = map[string]stack.VMStatus{}
	for _, v := range list {
		s.vms[v.Name] = v
	}
}

// VM returns the running VM named name (web, web-0, web-blue); an unknown
// name fails the test.
func (s *Stack) VM(name string) *VM {
	s.t.Helper()
	v, ok := s.vms[name]
	if !ok {
		var names []string
		for n := range s.vms {
			names = append(names, n)
		}
		s.t.Fatalf("stacktest: no VM named %q (the stack has: %s)", name, strings.Join(names, ", "))
	}
	h, err := s.Project.VM(name)
	if err != nil {
		s.t.Fatalf("stacktest: %v", err)
	}
	return &VM{s: s, Name: name, Addresses: v.Addresses, Handle: h}
}

// Stop stops the VM and keeps it (stack stop): its disks and addresses
// stay, its restart policy does not bring it back, and Start boots it
// again. A VM that cannot be stopped fails the test.
func (vm *VM) Stop(ctx context.Context) {
	vm.s.t.Helper()
	if err := vm.Handle.Stop(ctx, stack.StopOptions{Timeout: 10 * time.Second}); err != nil {
		vm.s.t.Fatalf("stacktest: stop %s: %v", vm.Name, err)
	}
}

// Start boots the stopped VM again (stack start) and returns once it is
// ready; a VM that does not come up fails the test, with its console.
func (vm *VM) Start(ctx context.Context) {
	vm.s.t.Helper()
	if err := vm.Handle.Start(ctx, stack.StartOptions{}); err != nil {
		vm.s.dumpConsoles()
		vm.s.t.Fatalf("stacktest: start %s: %v", vm.Name, err)
	}
}

// Wait blocks until the VM is ready and returns nil, or returns the
// *stack.NotReadyError of a VM that stopped or failed instead (with its
// exit code), or ctx's error.
func (vm *VM) Wait(ctx context.Context) error {
	return vm.Handle.Wait(ctx)
}

// Status returns the VM's current status (state, exit code, ports).
func (vm *VM) Status() stack.VMStatus {
	vm.s.t.Helper()
	vm.s.refresh()
	return vm.s.vms[vm.Name]
}

// Logs returns the VM's serial console so far.
func (vm *VM) Logs() string {
	data, err := os.ReadFile(vm.s.Project.ConsoleLog(vm.Name))
	if err != nil {
		vm.s.t.Fatalf("stacktest: logs of %s: %v", vm.Name, err)
	}
	return string(data)
}

// WaitLog waits until the VM's console has a line containing want, and
// fails the test after timeout.
func (vm *VM) WaitLog(want string, timeout time.Duration) {
	vm.s.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if data, err := os.ReadFile(vm.s.Project.ConsoleLog(vm.Name)); err == nil && strings.Contains(string(data), want) {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	vm.s.t.Fatalf("stacktest: %s's console never showed %q", vm.Name, want)
}

// ExecResult is what a command run with Exec printed and how it ended.
type ExecResult struct {
	Stdout, Stderr string
	Code           int
}

// Exec runs argv in the VM and returns its output and exit code. A command
// that cannot be run at all (the VM is gone) fails the test; a non-zero exit
// is returned for the test to judge.
func (vm *VM) Exec(ctx context.Context, argv ...string) ExecResult {
	vm.s.t.Helper()
	var out, errb strings.Builder
	code, err := vm.s.Project.Exec(ctx, vm.Name, argv, stack.ExecOptions{Stdout: &out, Stderr: &errb})
	if err != nil {
		vm.s.t.Fatalf("stacktest: exec %v in %s: %v", argv, vm.Name, err)
	}
	return ExecResult{Stdout: out.String(), Stderr: errb.String(), Code: code}
}

func (s *Stack) dumpConsoles() {
	names, err := s.Project.VMNames()
	if err != nil {
		return
	}
	for _, n := range names {
		lines, err := console.Tail(s.Project.ConsoleLog(n), 200)
		if err != nil {
			continue
		}
		s.t.Logf("stacktest: console of %s (last %d lines):\n%s", n, len(lines), strings.Join(lines, "\n"))
	}
}

// Processes lists the pids of the VMM processes of namespace ns (found by
// their runtime directory on the command line): a test can assert that none
// is left.
func Processes(ns string) []int {
	dir := filenames.NamespaceRuntime(filenames.RuntimeRoot(), ns) + "/"
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(b), "qemu-system") && strings.Contains(string(b), dir) {
			pids = append(pids, pid)
		}
	}
	return pids
}
