package app

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/stacktest"
	"github.com/stackvm/stack/supervisor/client"
)

// These tests boot real VMs under QEMU through the whole CLI: the command
// re-executes the test binary as the namespace's supervisor (package stack's
// STACK_SUPERVISE hook), which starts QEMU, the switch and the gateway.

func quickstartFile(t *testing.T) string {
	t.Helper()
	p, err := filepath.Abs("../../../examples/stacks/quickstart.hcl")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func requireVMs(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots VMs; skipped with -short")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatal("qemu-system-x86_64 is not installed: run `make deps` (this test boots real VMs)")
	}
}

// cli runs the stack CLI in-process with a private state dir.
type cli struct {
	t        *testing.T
	stateDir string
	ns       string
}

func newCLI(t *testing.T, ns string) *cli {
	c := &cli{t: t, stateDir: t.TempDir(), ns: ns}
	t.Cleanup(func() {
		// Whatever happened, leave no VM behind.
		r := c.run("down", "--timeout", "5s")
		if r.code != 0 {
			t.Logf("cleanup down: %s", r.stderr)
		}
		if procs := stacktest.Processes(ns); len(procs) > 0 {
			t.Errorf("QEMU processes of namespace %s left after down: %v", ns, procs)
			for _, pid := range procs {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	})
	return c
}

func (c *cli) run(args ...string) result {
	c.t.Helper()
	var out, errb strings.Builder
	full := append([]string{"-p", c.ns, "--state-dir", c.stateDir}, args...)
	code := Main(context.Background(), Streams{In: strings.NewReader(""), Out: &out, Err: &errb}, full)
	return result{code, out.String(), errb.String()}
}

func (c *cli) mustRun(args ...string) result {
	c.t.Helper()
	r := c.run(args...)
	if r.code != 0 {
		c.t.Fatalf("stack %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), r.code, r.stdout, r.stderr)
	}
	return r
}

func (c *cli) ps() map[string]psEntry {
	c.t.Helper()
	r := c.mustRun("ps", "--json")
	var list []psEntry
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		c.t.Fatalf("ps --json: %v\n%s", err, r.stdout)
	}
	out := map[string]psEntry{}
	for _, e := range list {
		out[e.Name] = e
	}
	return out
}

// waitConsole waits until vm's console log has a line containing want.
func (c *cli) waitConsole(vm, want string, timeout time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		r := c.run("logs", vm)
		if strings.Contains(r.stdout, want) {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	r := c.run("logs", "--tail", "30", vm)
	c.t.Fatalf("%s's console never showed %q; last lines:\n%s", vm, want, r.stdout)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestQuickstartLifecycle walks the quickstart through the life the issue
// describes: up, an idempotent up, an edit that replaces one VM, a removed
// VM, a killed VMM that shows as failed and is re-created alone, and down.
func TestQuickstartLifecycle(t *testing.T) {
	requireVMs(t)
	c := newCLI(t, fmt.Sprintf("qs-%d", os.Getpid()))
	dir := t.TempDir()
	src, err := os.ReadFile(quickstartFile(t))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(dir, "stack.hcl")
	writeFile(t, file, string(src))

	c.mustRun("-f", file, "up", "--progress", "plain")
	ps := c.ps()
	for _, name := range []string{"web", "client"} {
		if ps[name].State != "ready" || ps[name].Addresses["lan"] == "" {
			t.Fatalf("after up, %s: %+v", name, ps[name])
		}
	}
	// client fetches http://web/ by name.
	c.waitConsole("client", "hello from web", 60*time.Second)
	c.checkLogsFollow("client", "hello from web")
	c.checkConsole("client", "hello from web")
	// exec: output, and the command's exit code as stack's own.
	if r := c.run("exec", "web", "--", "sh", "-c", "cat /www/index.html; echo to-stderr >&2; exit 5"); r.code != 5 ||
		r.stdout != "hello from web\n" || r.stderr != "to-stderr\n" {
		t.Fatalf("stack exec: %+v", r)
	}
	c.checkExecStdin("web")
	c.checkExecTTY("web", "busybox ") // the image links no tty or stty applets

	// A second up touches nothing and says so.
	r := c.mustRun("-f", file, "up")
	if !strings.Contains(r.stderr+r.stdout, "Nothing to do") {
		t.Fatalf("second up: %+v", r)
	}
	if again := c.ps(); again["web"].PID != ps["web"].PID || again["client"].PID != ps["client"].PID {
		t.Fatalf("second up restarted VMs: %v -> %v", ps, again)
	}
	// `down` from another state directory with the same namespace reaches
	// this namespace's supervisor; it is refused and stops nothing.
	var out, errb strings.Builder
	other := t.TempDir()
	if code := Main(context.Background(), Streams{In: strings.NewReader(""), Out: &out, Err: &errb},
		[]string{"-p", c.ns, "--state-dir", other, "down"}); code == 0 || !strings.Contains(errb.String(), "is running with the state directory "+c.stateDir) {
		t.Fatalf("down from another state dir: exit %d\n%s%s", code, out.String(), errb.String())
	}
	if again := c.ps(); again["web"].PID != ps["web"].PID || again["web"].State != "ready" || again["client"].State != "ready" {
		t.Fatalf("down from another state dir touched the VMs: %v -> %v", ps, again)
	}

	c.checkStopStart(file, ps["web"])
	ps = c.ps()

	// A changed memory_mb replaces that VM alone.
	edited := strings.Replace(string(src), "vm \"client\" {", "vm \"client\" {\n  memory_mb = 320", 1)
	writeFile(t, file, edited)
	r = c.mustRun("-f", file, "plan", "--json")
	if !strings.Contains(r.stdout, `"attribute": "memory_mb"`) {
		t.Fatalf("plan after edit: %s", r.stdout)
	}
	c.mustRun("-f", file, "up", "--progress", "plain")
	after := c.ps()
	if after["web"].PID != ps["web"].PID {
		t.Fatal("editing client replaced web too")
	}
	if after["client"].PID == ps["client"].PID || after["client"].State != "ready" {
		t.Fatalf("client not replaced: %+v", after["client"])
	}
	clientPID := after["client"].PID

	// A VM removed from the file is deleted.
	cut := strings.Index(edited, "vm \"client\"")
	writeFile(t, file, edited[:cut])
	c.mustRun("-f", file, "up", "--progress", "plain")
	after = c.ps()
	if _, ok := after["client"]; ok || after["web"].PID != ps["web"].PID {
		t.Fatalf("after removing client: %+v", after)
	}
	if syscall.Kill(clientPID, 0) == nil {
		t.Fatalf("client's QEMU (pid %d) still runs after its deletion", clientPID)
	}

	// kill -9 of web's QEMU shows as failed; the next up re-creates it.
	if err := syscall.Kill(ps["web"].PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for c.ps()["web"].State != "failed" && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if got := c.ps()["web"]; got.State != "failed" || got.ExitCode == nil || *got.ExitCode != 137 {
		t.Fatalf("after kill -9, ps shows %+v, want failed with exit 137", got)
	}
	// The supervisor loses the network while the state still records it
	// (a `down` from another state directory did that before it was
	// refused): the plan keeps it, and the up below must start it again
	// for the VMs it starts on it.
	lost, err := client.Dial(context.Background(), filenames.RuntimeRoot(), c.stateDir, c.ns)
	if err != nil {
		t.Fatal(err)
	}
	if err := lost.RemoveNetwork(context.Background(), "lan"); err != nil {
		t.Fatal(err)
	}
	writeFile(t, file, string(src)) // client comes back too
	r = c.mustRun("-f", file, "plan", "--json")
	var plan jsonPlan
	json.Unmarshal([]byte(r.stdout), &plan)
	kinds := map[string]string{}
	for _, a := range plan.Actions {
		kinds[a.Address] = a.Action
	}
	if kinds["vm.web"] != "replace" || kinds["vm.client"] != "create" || kinds["network.lan"] != "no-op" {
		t.Fatalf("plan after kill: %v", kinds)
	}
	c.mustRun("-f", file, "up", "--progress", "plain")
	c.waitConsole("client", "hello from web", 60*time.Second)

	// Killing the supervisor loses no VM: the next command starts a new
	// one, which re-adopts both VMMs and brings the switch back on the same
	// socket, and the client keeps reaching web by name.
	ps = c.ps()
	c.killSupervisor()
	if got := c.ps(); got["web"].State != "ready" || got["web"].PID != ps["web"].PID {
		t.Fatalf("ps without a supervisor: %+v", got)
	}
	r = c.mustRun("-f", file, "up")
	if !strings.Contains(r.stderr+r.stdout, "Nothing to do") {
		t.Fatalf("up after the supervisor died: %+v", r)
	}
	if again := c.ps(); again["web"].PID != ps["web"].PID || again["client"].PID != ps["client"].PID {
		t.Fatalf("re-adoption restarted VMs: %v -> %v", ps, again)
	}
	c.checkLogsFollow("client", "hello from web")

	// down leaves no process, socket or runtime file; the state has no VM.
	c.mustRun("-f", file, "down")
	if procs := stacktest.Processes(c.ns); len(procs) > 0 {
		t.Fatalf("QEMU processes left after down: %v", procs)
	}
	if _, err := os.Stat(filenames.NamespaceRuntime(filenames.RuntimeRoot(), c.ns)); !os.IsNotExist(err) {
		t.Fatalf("runtime dir left after down (err %v)", err)
	}
	if r := c.mustRun("ps", "--json"); strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("ps after down: %s", r.stdout)
	}
}

// checkStopStart: `stop web` keeps web (ps shows it stopped with its exit
// code and address, its QEMU is gone), `start web` boots it again and exec
// works in it, and after another stop, `up` starts web again rather than
// re-creating it.
func (c *cli) checkStopStart(file string, web psEntry) {
	c.t.Helper()
	c.mustRun("stop", "web")
	got := c.ps()["web"]
	if got.State != "stopped" || got.ExitCode == nil || got.Addresses["lan"] != web.Addresses["lan"] {
		c.t.Fatalf("after stop, ps shows web as %+v, want stopped with an exit code and its address", got)
	}
	if syscall.Kill(web.PID, 0) == nil {
		c.t.Fatalf("web's QEMU (pid %d) still runs after stop", web.PID)
	}
	if r := c.run("exec", "web", "--", "true"); r.code == 0 {
		c.t.Fatal("exec in a stopped VM succeeded")
	}
	c.mustRun("start", "web", "--progress", "plain")
	if got := c.ps()["web"]; got.State != "ready" || got.PID == web.PID || got.Addresses["lan"] != web.Addresses["lan"] {
		c.t.Fatalf("after start, ps shows web as %+v", got)
	}
	if r := c.run("exec", "web", "--", "cat", "/www/index.html"); r.code != 0 || r.stdout != "hello from web\n" {
		c.t.Fatalf("exec after start: %+v", r)
	}

	c.mustRun("stop", "web")
	r := c.mustRun("-f", file, "plan", "--json")
	var plan jsonPlan
	json.Unmarshal([]byte(r.stdout), &plan)
	kinds := map[string]string{}
	for _, a := range plan.Actions {
		kinds[a.Address] = a.Action
	}
	if kinds["vm.web"] != "start" || kinds["vm.client"] != "no-op" || kinds["network.lan"] != "no-op" {
		c.t.Fatalf("plan after stop: %v, want web started and nothing else", kinds)
	}
	r = c.mustRun("-f", file, "up", "--progress", "plain")
	if !strings.Contains(r.stderr, "1 started") || c.ps()["web"].State != "ready" {
		c.t.Fatalf("up after stop: %+v\nps: %+v", r, c.ps()["web"])
	}
}

// checkLogsFollow runs `logs -f VM` for a few seconds and expects a new
// line containing want (the quickstart's client prints one every 2 s).
func (c *cli) checkLogsFollow(vm, want string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Second)
	defer cancel()
	var out, errb strings.Builder
	err := Run(ctx, Streams{In: strings.NewReader(""), Out: &out, Err: &errb},
		[]string{"-p", c.ns, "--state-dir", c.stateDir, "logs", "-f", "--tail", "0", vm})
	if err != nil {
		c.t.Fatalf("logs -f: %v\n%s", err, errb.String())
	}
	if !strings.Contains(out.String(), vm+" | "+want) {
		c.t.Fatalf("logs -f printed no new %q line in 6s:\n%s", want, out.String())
	}
}

// checkConsole attaches to VM's console, expects live output containing
// want, and detaches with Ctrl-].
func (c *cli) checkConsole(vm, want string) {
	c.t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan int, 1)
	var errb strings.Builder
	go func() {
		done <- Main(context.Background(), Streams{In: inR, Out: outW, Err: &errb},
			[]string{"-p", c.ns, "--state-dir", c.stateDir, "console", vm})
		outW.Close()
	}()
	seen := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(outR)
		found := false
		for sc.Scan() {
			if !found && strings.Contains(sc.Text(), want) {
				found = true
				seen <- true
			}
		}
		if !found {
			seen <- false
		}
	}()
	select {
	case ok := <-seen:
		if !ok {
			c.t.Fatalf("console of %s ended without %q: %s", vm, want, errb.String())
		}
	case <-time.After(15 * time.Second):
		c.t.Fatalf("console of %s showed no %q in 15s", vm, want)
	}
	inW.Write([]byte{0x1d}) // Ctrl-]
	select {
	case code := <-done:
		if code != 0 || !strings.Contains(errb.String(), "Detached") {
			c.t.Fatalf("console detach: exit %d, %s", code, errb.String())
		}
	case <-time.After(5 * time.Second):
		c.t.Fatal("console did not detach on Ctrl-]")
	}
}

const notReady = `network "lan" {
  subnet = "10.56.0.0/24"
}

vm "deaf" {
  command = ["sh", "-c", "echo deaf-is-up; exec sleep 100000"]
  network "lan" {}
  ready {
    tcp     = 81
    timeout = "20s"
  }
}
`

// TestUpReportsReadinessFailure: a VM that never gets ready makes up exit 1
// with the reason and the end of its console.
func TestUpReportsReadinessFailure(t *testing.T) {
	requireVMs(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "stack.hcl")
	writeFile(t, file, notReady)
	c := newCLI(t, fmt.Sprintf("deaf-%d", os.Getpid()))
	r := c.run("-f", file, "up", "--progress", "plain")
	if r.code != 1 {
		t.Fatalf("up of a VM that is never ready: exit %d\n%s", r.code, r.stderr)
	}
	for _, want := range []string{"vm.deaf failed: not ready after 20s (waiting for TCP port 81)", "lines of its console", "| deaf-is-up"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("up's error output lacks %q:\n%s", want, r.stderr)
		}
	}
	if got := c.ps()["deaf"]; got.State != "failed" {
		t.Fatalf("ps after the failure: %+v", got)
	}
}

const oneVM = `network "lan" {
  subnet = "10.55.0.0/24"
}

vm "solo" {
  command = ["sh", "-c", "echo solo-up; exec sleep 100000"]
  network "lan" {}
}
`

// TestNamespacesAndLock runs one file under two namespaces side by side and
// two concurrent ups on one namespace, which serialize on its lock.
func TestNamespacesAndLock(t *testing.T) {
	requireVMs(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "stack.hcl")
	writeFile(t, file, oneVM)
	a := newCLI(t, fmt.Sprintf("nsa-%d", os.Getpid()))
	b := newCLI(t, fmt.Sprintf("nsb-%d", os.Getpid()))
	b.stateDir = a.stateDir // one state dir, two namespaces

	var wg sync.WaitGroup
	results := make([]result, 3)
	for i, c := range []*cli{a, a, b} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.run("-f", file, "up", "--progress", "plain")
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r.code != 0 {
			t.Fatalf("up %d: %+v", i, r)
		}
	}
	// Exactly one of the two ups on namespace a waited, then found nothing
	// to do.
	waited := 0
	for _, r := range results[:2] {
		if strings.Contains(r.stderr, "Waiting for another stack command") {
			waited++
			if !strings.Contains(r.stderr, "Nothing to do") {
				t.Errorf("the up that waited did work again: %s", r.stderr)
			}
		}
	}
	if waited != 1 {
		t.Fatalf("%d of the concurrent ups waited for the lock, want 1:\n%s\n---\n%s", waited, results[0].stderr, results[1].stderr)
	}
	pa, pb := a.ps()["solo"], b.ps()["solo"]
	if pa.State != "ready" || pb.State != "ready" || pa.PID == pb.PID {
		t.Fatalf("two namespaces: %+v / %+v", pa, pb)
	}
	if ls := a.mustRun("ls", "--json"); !strings.Contains(ls.stdout, a.ns) || !strings.Contains(ls.stdout, b.ns) {
		t.Fatalf("ls: %s", ls.stdout)
	}
	a.mustRun("down")
	if b.ps()["solo"].State != "ready" {
		t.Fatal("down of one namespace disturbed the other")
	}
}

// TestKilledUpConverges kills `stack up` (a real process) while it boots,
// then runs up again: the stack converges and down leaves no orphan.
func TestKilledUpConverges(t *testing.T) {
	requireVMs(t)
	bin := filepath.Join(t.TempDir(), "stack")
	build := exec.Command("go", "build", "-o", bin, "github.com/stackvm/stack/cmd/stack")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build stack: %v\n%s", err, out)
	}
	ns := fmt.Sprintf("kill-%d", os.Getpid())
	c := newCLI(t, ns)
	file := quickstartFile(t)
	cmd := exec.Command(bin, "-p", ns, "--state-dir", c.stateDir, "-f", file, "up", "--progress", "plain")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(stderr)
	killed := false
	for sc.Scan() {
		if strings.Contains(sc.Text(), "booting") { // web's VMM runs, client not yet
			cmd.Process.Kill()
			killed = true
			break
		}
	}
	cmd.Wait()
	if !killed {
		t.Fatal("stack up ended before it could be killed")
	}
	c.mustRun("-f", file, "up", "--progress", "plain")
	ps := c.ps()
	if ps["web"].State != "ready" || ps["client"].State != "ready" {
		t.Fatalf("after the second up: %+v", ps)
	}
	if n := len(stacktest.Processes(ns)); n != 2 {
		t.Fatalf("%d QEMU processes for the namespace, want 2 (one per VM, no orphan)", n)
	}
	c.mustRun("down")
	if procs := stacktest.Processes(ns); len(procs) > 0 {
		t.Fatalf("orphans after down: %v", procs)
	}
}
