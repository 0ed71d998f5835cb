package app

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stackvm/stack/hypervisor/qemu/templates"
	"github.com/stackvm/stack/stacktest"
)

// A shape no other test boots (320 MiB), so that this test sees its
// template made and used.
const twoClones = `network "lan" {
  subnet = "10.66.0.0/24"
}

vm "x" {
  memory_mb = 320
  network "lan" {}
}

vm "y" {
  memory_mb  = 320
  depends_on = [vm.x]
  network "lan" {}
}
`

// templateOf returns the cache's template whose shape has memMB, or nil.
func templateOf(t *testing.T, c *cli, memMB int) *templateEntry {
	t.Helper()
	var list []templateEntry
	r := c.mustRun("cache", "ls", "--json")
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		t.Fatalf("cache ls --json: %v\n%s", err, r.stdout)
	}
	for i := range list {
		if list[i].MemoryMB == memMB {
			return &list[i]
		}
	}
	return nil
}

func sum(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	io.Copy(h, f)
	return fmt.Sprintf("%x", h.Sum(nil))
}

// TestBootTemplates: the first up of a shape boots cold and makes its boot
// template; the next VMs of that shape are restored from it, each its own
// machine (name, MAC, address, machine-id, random numbers), reaching each
// other by name, and the template's files stay as they were. A damaged
// template is not used (the VM boots cold, says why, and a new one is
// made); with STACK_TEMPLATES=off VMs boot cold.
func TestBootTemplates(t *testing.T) {
	requireVMs(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "stack.hcl")
	writeFile(t, file, twoClones)
	a := newCLI(t, fmt.Sprintf("tpa-%d", os.Getpid()))
	b := newCLI(t, fmt.Sprintf("tpb-%d", os.Getpid()))
	b.stateDir = a.stateDir
	t.Setenv("STACK_TEMPLATES", "")

	if tpl := templateOf(t, a, 320); tpl != nil {
		os.RemoveAll(tpl.Path) // left by an earlier run on this machine
	}
	a.mustRun("-f", file, "up", "--progress", "plain")
	tpl := templateOf(t, a, 320)
	if tpl == nil {
		t.Fatalf("no template of the 320 MiB shape after the first up:\n%s", a.mustRun("cache", "ls").stdout)
	}
	mem, state := filepath.Join(tpl.Path, templates.MemFile), filepath.Join(tpl.Path, templates.StateFile)
	memSum, stateSum := sum(t, mem), sum(t, state)

	r := b.mustRun("-f", file, "up", "--progress", "plain")
	if n := strings.Count(r.stderr, "restored from the boot template"); n != 2 {
		t.Errorf("second up: %d VMs said they were restored, want 2:\n%s", n, r.stderr)
	}
	ps := b.ps()
	seen := map[string]map[string]bool{}
	for _, name := range []string{"x", "y"} {
		if ps[name].Boot != "template" || ps[name].State != "ready" {
			t.Fatalf("%s: %+v, want ready and restored from its template", name, ps[name])
		}
		// What makes a machine itself, read inside the guest.
		out := b.mustRun("exec", name, "--", "sh", "-c",
			"hostname; cat /sys/class/net/eth0/address; ip -4 -o addr show dev eth0 | awk '{print $4}'; cat /etc/machine-id; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo").stdout
		fields := strings.Fields(out)
		if len(fields) != 5 || fields[0] != name {
			t.Fatalf("%s: identity %q", name, out)
		}
		for i, what := range []string{"hostname", "mac", "address", "machine-id", "random"} {
			if seen[what] == nil {
				seen[what] = map[string]bool{}
			}
			if seen[what][fields[i]] {
				t.Errorf("%s: %s %s is another clone's", name, what, fields[i])
			}
			seen[what][fields[i]] = true
		}
		if want := ps[name].Addresses["lan"] + "/24"; fields[2] != want {
			t.Errorf("%s: address %s, ps says %s", name, fields[2], want)
		}
	}
	// They reach each other by name.
	if r := b.run("exec", "y", "--", "ping", "-c", "1", "-W", "5", "x"); r.code != 0 {
		t.Errorf("y cannot reach x by name: %+v", r)
	}
	if sum(t, mem) != memSum || sum(t, state) != stateSum {
		t.Error("restoring from the template changed its files")
	}
	b.mustRun("down")

	// A damaged template (a truncated memory file) is not used.
	if err := os.Truncate(mem, 1<<20); err != nil {
		t.Fatal(err)
	}
	r = b.mustRun("-f", file, "up", "--progress", "plain")
	if !strings.Contains(r.stderr, "was not valid") || strings.Contains(r.stderr, "restored from the boot template") {
		t.Errorf("up with a damaged template:\n%s", r.stderr)
	}
	if ps := b.ps(); ps["x"].Boot != "cold" || ps["x"].State != "ready" {
		t.Errorf("x after a damaged template: %+v", ps["x"])
	}
	if tpl := templateOf(t, b, 320); tpl == nil {
		t.Error("no new template after the damaged one was dropped")
	}
	b.mustRun("down")

	// template = false on one VM: it boots cold, the other from the
	// template its shape has now.
	writeFile(t, file, strings.Replace(twoClones, "vm \"y\" {\n", "vm \"y\" {\n  template   = false\n", 1))
	b.mustRun("-f", file, "up", "--progress", "plain")
	if ps := b.ps(); ps["x"].Boot != "template" || ps["y"].Boot != "cold" {
		t.Errorf("with template = false on y: x boot %q, y boot %q; want template, cold", ps["x"].Boot, ps["y"].Boot)
	}
	b.mustRun("down")
	writeFile(t, file, twoClones)

	// Templates off: cold boots, and none is made or used.
	t.Setenv("STACK_TEMPLATES", "off")
	b.mustRun("-f", file, "up", "--progress", "plain")
	for name, v := range b.ps() {
		if v.Boot != "cold" {
			t.Errorf("%s with STACK_TEMPLATES=off: boot %q", name, v.Boot)
		}
	}
}

const pooled = `variable "n" {
  default = 1
}

network "lan" {
  subnet = "10.67.0.0/24"
}

vm "w" {
  count     = var.n
  pool      = 1
  memory_mb = 336
  command   = ["sh", "-c", "echo w-up; exec sleep 100000"]
  network "lan" {}
}
`

// poolMembers are the QEMU processes of the namespace's pool members: its
// QEMUs that no VM of ps runs (a VM taken from the pool keeps its
// member's command line).
func poolMembers(c *cli) []int {
	vms := map[int]bool{}
	for _, v := range c.ps() {
		vms[v.PID] = true
	}
	var out []int
	for _, pid := range stacktest.Processes(c.ns) {
		if !vms[pid] {
			out = append(out, pid)
		}
	}
	return out
}

// waitPoolLine waits until ps says the pool is full.
func waitPoolLine(t *testing.T, c *cli, want string) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		r := c.mustRun("ps")
		if strings.Contains(r.stdout, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("ps never said %q:\n%s", want, r.stdout)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestWarmPool: a pool fills once its shape has a template; a new VM of
// the block is taken from it (boot "pool"), comes up as itself and
// reaches its peer by name; the pool refills; a member killed while it
// waits is replaced, not handed out; down ends every member.
func TestWarmPool(t *testing.T) {
	requireVMs(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "stack.hcl")
	writeFile(t, file, pooled)
	c := newCLI(t, fmt.Sprintf("pool-%d", os.Getpid()))
	t.Setenv("STACK_TEMPLATES", "")

	c.mustRun("-f", file, "up", "--progress", "plain")
	waitPoolLine(t, c, "pool vm.w: 1 of 1 ready")
	members := poolMembers(c)
	if len(members) != 1 {
		t.Fatalf("pool members: %v", members)
	}

	r := c.mustRun("-f", file, "up", "--var", "n=2", "--progress", "plain")
	if !strings.Contains(r.stderr, "taken from the warm pool") {
		t.Errorf("the second VM was not taken from the pool:\n%s", r.stderr)
	}
	ps := c.ps()
	if ps["w-1"].Boot != "pool" || ps["w-1"].State != "ready" || ps["w-1"].PID != members[0] {
		t.Fatalf("w-1: %+v, want ready, taken from the pool (pid %d)", ps["w-1"], members[0])
	}
	if out := c.mustRun("exec", "w-1", "--", "hostname").stdout; strings.TrimSpace(out) != "w-1" {
		t.Errorf("w-1's hostname: %q", out)
	}
	if r := c.run("exec", "w-1", "--", "ping", "-c", "1", "-W", "5", "w-0"); r.code != 0 {
		t.Errorf("w-1 cannot reach w-0 by name: %+v", r)
	}
	waitPoolLine(t, c, "pool vm.w: 1 of 1 ready")

	// A member killed while it waits is replaced.
	members = poolMembers(c)
	if len(members) != 1 {
		t.Fatalf("pool members after the refill: %v", members)
	}
	syscall.Kill(members[0], syscall.SIGKILL)
	deadline := time.Now().Add(2 * time.Minute)
	for {
		now := poolMembers(c)
		if len(now) == 1 && now[0] != members[0] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the killed member was not replaced: %v", now)
		}
		time.Sleep(200 * time.Millisecond)
	}
	waitPoolLine(t, c, "pool vm.w: 1 of 1 ready")

	c.mustRun("down")
	if left := stacktest.Processes(c.ns); len(left) != 0 {
		t.Fatalf("QEMU processes after down: %v", left)
	}
}
