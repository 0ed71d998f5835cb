package app

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stackvm/stack/hypervisor/proc"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/stacktest"
	"github.com/stackvm/stack/supervisor/client"
)

// upOneVM brings oneVM up in c's namespace and returns the supervisor's
// pid and start time.
func upOneVM(t *testing.T, c *cli) (pid int, start uint64) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "stack.hcl")
	writeFile(t, file, oneVM)
	c.mustRun("-f", file, "up", "--progress", "plain")
	sup, err := client.Dial(context.Background(), filenames.RuntimeRoot(), c.stateDir, c.ns)
	if err != nil {
		t.Fatalf("dial the supervisor after up: %v", err)
	}
	start, _ = proc.StartTime(sup.PID())
	if n := len(stacktest.Processes(c.ns)); n != 1 {
		t.Fatalf("%d QEMU processes after up, want 1", n)
	}
	return sup.PID(), start
}

// assertNothingRuns fails unless the namespace's VMMs and supervisor are
// gone, and down left no state.lock.
func assertNothingRuns(t *testing.T, c *cli, supPID int, supStart uint64) {
	t.Helper()
	if procs := stacktest.Processes(c.ns); len(procs) > 0 {
		t.Errorf("QEMU processes left: %v", procs)
	}
	if proc.Alive(supPID, supStart) {
		t.Errorf("the supervisor (pid %d) still runs", supPID)
	}
	if _, err := os.Stat(filepath.Join(filenames.NamespaceState(c.stateDir, c.ns), filenames.LockFile)); err == nil {
		t.Errorf("state.lock is left after down")
	}
}

// TestDownWithoutStateFile deletes state.json under a running namespace,
// with its supervisor alive and killed: down must still find the VMs from
// the supervisor (or its records) and stop them.
func TestDownWithoutStateFile(t *testing.T) {
	requireVMs(t)
	for _, killSup := range []bool{false, true} {
		t.Run(fmt.Sprintf("supervisor killed %v", killSup), func(t *testing.T) {
			c := newCLI(t, fmt.Sprintf("nostate-%d", os.Getpid()))
			pid, start := upOneVM(t, c)
			if killSup {
				syscall.Kill(pid, syscall.SIGKILL)
				for proc.Alive(pid, start) { // gone, not dying
					time.Sleep(10 * time.Millisecond)
				}
			}
			if err := os.Remove(filepath.Join(filenames.NamespaceState(c.stateDir, c.ns), filenames.StateFile)); err != nil {
				t.Fatal(err)
			}
			c.mustRun("down", "--timeout", "5s")
			assertNothingRuns(t, c, pid, start)
		})
	}
}

// TestDownForceCorruptState damages state.json under a running namespace:
// down refuses it and changes nothing; down --force says what it does,
// moves the file aside as a backup and stops everything.
func TestDownForceCorruptState(t *testing.T) {
	requireVMs(t)
	c := newCLI(t, fmt.Sprintf("corrupt-%d", os.Getpid()))
	pid, start := upOneVM(t, c)
	path := filepath.Join(filenames.NamespaceState(c.stateDir, c.ns), filenames.StateFile)
	garbage := []byte("{\"format_version\": 1, \"vms\": {tor")
	if err := os.WriteFile(path, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	r := c.run("down", "--timeout", "5s")
	if r.code == 0 || !strings.Contains(r.stderr, "corrupt") || !strings.Contains(r.stderr, "down --force") {
		t.Fatalf("down on a corrupt state: code %d, want a refusal that points at --force; stderr:\n%s", r.code, r.stderr)
	}
	if n := len(stacktest.Processes(c.ns)); n != 1 {
		t.Fatalf("a refused down changed what runs: %d QEMU processes", n)
	}
	r = c.mustRun("down", "--force", "--timeout", "5s")
	if !strings.Contains(r.stderr, "corrupt") || !strings.Contains(r.stderr, "backup") {
		t.Errorf("down --force did not say what it does; stderr:\n%s", r.stderr)
	}
	assertNothingRuns(t, c, pid, start)
	backups, _ := filepath.Glob(path + ".corrupt-*")
	if len(backups) != 1 {
		t.Fatalf("backups of the corrupt state: %v, want one", backups)
	}
	if got, _ := os.ReadFile(backups[0]); string(got) != string(garbage) {
		t.Errorf("backup holds %q, want the corrupt file %q", got, garbage)
	}
}

// TestWedgedSupervisor stops the supervisor (SIGSTOP: alive, not
// answering). Commands must end with an error that names it and the way
// out instead of hanging; down --force kills it and the namespace's VMMs,
// found by their recorded identity, and leaves nothing running.
func TestWedgedSupervisor(t *testing.T) {
	requireVMs(t)
	c := newCLI(t, fmt.Sprintf("wedged-%d", os.Getpid()))
	pid, start := upOneVM(t, c)
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	defer syscall.Kill(pid, syscall.SIGCONT) // for cleanup, should the test fail
	for _, args := range [][]string{{"exec", "solo", "true"}, {"stop", "--timeout", "5s"}, {"down", "--timeout", "5s"}} {
		r := c.run(args...)
		if r.code == 0 || !strings.Contains(r.stderr, fmt.Sprintf("pid %d", pid)) ||
			!strings.Contains(r.stderr, "did not answer") || !strings.Contains(r.stderr, "down --force") {
			t.Errorf("stack %s with a stopped supervisor: code %d, want an error naming pid %d and down --force; stderr:\n%s", args[0], r.code, pid, r.stderr)
		}
	}
	if n := len(stacktest.Processes(c.ns)); n != 1 {
		t.Fatalf("refused commands changed what runs: %d QEMU processes", n)
	}
	r := c.mustRun("down", "--force", "--timeout", "5s")
	if !strings.Contains(r.stderr, fmt.Sprintf("pid %d", pid)) {
		t.Errorf("down --force did not say what it kills; stderr:\n%s", r.stderr)
	}
	assertNothingRuns(t, c, pid, start)
}

// TestPsSaysWhenItCouldNotAsk kills the supervisor: ps shows the VMs from
// the records and marks them stale (their published ports are not
// forwarded) rather than reporting them plainly ready.
func TestPsSaysWhenItCouldNotAsk(t *testing.T) {
	requireVMs(t)
	c := newCLI(t, fmt.Sprintf("stale-%d", os.Getpid()))
	pid, start := upOneVM(t, c)
	if got := c.ps()["solo"]; got.Stale != "" {
		t.Fatalf("ps with its supervisor alive: %+v, want it live", got)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	for proc.Alive(pid, start) {
		time.Sleep(10 * time.Millisecond)
	}
	got := c.ps()["solo"]
	if got.Stale == "" || !strings.Contains(got.Stale, "supervisor") {
		t.Errorf("ps --json with the supervisor dead: %+v, want it marked stale", got)
	}
	r := c.mustRun("ps")
	if !strings.Contains(r.stdout, "stale") || !strings.Contains(r.stdout, "stack up") {
		t.Errorf("ps with the supervisor dead does not say its states are stale:\n%s", r.stdout)
	}
}
