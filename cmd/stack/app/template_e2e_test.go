package app

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stackvm/stack/hypervisor/qemu/templates"
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

	// Templates off: cold boots, and none is made or used.
	t.Setenv("STACK_TEMPLATES", "off")
	b.mustRun("-f", file, "up", "--progress", "plain")
	for name, v := range b.ps() {
		if v.Boot != "cold" {
			t.Errorf("%s with STACK_TEMPLATES=off: boot %q", name, v.Boot)
		}
	}
}
