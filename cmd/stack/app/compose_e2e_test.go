package app

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// Tests of the compose habits of issue 20, against real VMs.

// partStack has a dependency (db), a block of two instances that depends
// on it (web) and a VM apart (other).
const partStack = `network "lan" {
  subnet = "10.58.0.0/24"
}

vm "db" {
  command = ["sh", "-c", "exec sleep 100000"]
  network "lan" {}
}

vm "web" {
  count      = 2
  depends_on = [vm.db]
  command    = ["sh", "-c", "exec sleep 100000"]
  network "lan" {}
}

vm "other" {
  command = ["sh", "-c", "exec sleep 100000"]
  network "lan" {}
}
`

// names are the VMs ps lists, sorted, with their states.
func (c *cli) names() string {
	c.t.Helper()
	var out []string
	for n, e := range c.ps() {
		out = append(out, n+"="+e.State)
	}
	sort.Strings(out)
	return strings.Join(out, " ")
}

// TestPartOfAStack: `up`, `plan` and `down` of the VMs named, as `docker
// compose up web` does: an instance brings up what it depends on, a running
// dependency is not taken down under its dependents unless --force, and the
// rest of the namespace runs on.
func TestPartOfAStack(t *testing.T) {
	requireVMs(t)
	file := filepath.Join(t.TempDir(), "stack.hcl")
	writeFile(t, file, partStack)
	c := newCLI(t, fmt.Sprintf("part-%d", os.Getpid()))

	r := c.mustRun("-f", file, "plan", "web-0")
	for _, want := range []string{"+ vm.db", "+ vm.web[0]", "+ network.lan",
		"Left out (not named, nor needed by what is named): vm.other, vm.web[1]", "Plan: 3 to create"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("plan web-0 lacks %q:\n%s", want, r.stdout)
		}
	}
	c.mustRun("-f", file, "up", "--progress", "plain", "web-0")
	if got, want := c.names(), "db=ready web-0=ready"; got != want {
		t.Fatalf("after up web-0: %s, want %s", got, want)
	}
	if r := c.run("-f", file, "up", "nope"); r.code != 1 || !strings.Contains(r.stderr, `no VM named "nope"`) {
		t.Errorf("up of an unknown VM: %+v", r)
	}
	r = c.mustRun("-f", file, "up", "--progress", "plain")
	if got, want := c.names(), "db=ready other=ready web-0=ready web-1=ready"; got != want {
		t.Fatalf("after up: %s, want %s", got, want)
	}

	// Shell completion offers the namespace's VMs, from its state alone.
	got, _ := complete(t, t.TempDir(), "-p", c.ns, "--state-dir", c.stateDir, "stop", "")
	if want := "db other web-0 web-1 web"; got != want {
		t.Errorf("completion of stop: %q, want %q", got, want)
	}

	r = c.run("down", "db")
	if r.code != 1 || !strings.Contains(r.stderr, "web-0 (depends on vm.db)") || !strings.Contains(r.stderr, "--force") {
		t.Errorf("down of a dependency of running VMs: want it refused, got %+v", r)
	}
	if got, want := c.names(), "db=ready other=ready web-0=ready web-1=ready"; got != want {
		t.Fatalf("a refused down changed the namespace: %s, want %s", got, want)
	}
	c.mustRun("down", "--progress", "plain", "web")
	if got, want := c.names(), "db=ready other=ready"; got != want {
		t.Fatalf("after down web: %s, want %s", got, want)
	}
	c.mustRun("-f", file, "up", "--progress", "plain", "web-1")
	c.mustRun("down", "--force", "--progress", "plain", "db")
	if got, want := c.names(), "other=ready web-1=ready"; got != want {
		t.Fatalf("after down --force db: %s, want %s", got, want)
	}
	// The network stayed: the rest of the namespace still talks on it.
	if r := c.run("exec", "other", "--", "ping", "-c", "1", "-W", "5", "web-1"); r.code != 0 {
		t.Errorf("other cannot reach web-1 after the partial downs: %+v", r)
	}
	r = c.mustRun("-f", file, "plan", "db")
	if !strings.Contains(r.stdout, "+ vm.db") || !strings.Contains(r.stdout, "Left out (not named, nor needed by what is named): vm.web[0]") {
		t.Errorf("plan db after the downs:\n%s", r.stdout)
	}
}
