package app

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
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

// waitState waits until ps shows vm in state want (what follows a kill is
// the supervisor's to notice).
func (c *cli) waitState(vm, want string) psEntry {
	c.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		e := c.ps()[vm]
		if e.State == want {
			return e
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s is %s, want %s: %+v", vm, e.State, want, e)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

const controlStack = `network "lan" {
  subnet = "10.59.0.0/24"
}

vm "web" {
  command = ["sh", "-c", "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www"]
  network "lan" {}
  ready {
    tcp = 80
  }
}

vm "client" {
  command = ["sh", "-c", "exec sleep 100000"]
  network "lan" {}
  disk "scratch" {
    size       = "16M"
    guest_path = "/data"
  }
}
`

// checkStats: stats --no-stream --json has every VM's figures, non-zero
// after traffic and a disk write.
func (c *cli) checkStats() {
	c.t.Helper()
	c.mustRun("exec", "client", "--", "dd", "if=/dev/zero", "of=/data/f", "bs=64k", "count=16", "conv=fsync")
	r := c.mustRun("stats", "--no-stream", "--json")
	got := map[string]statsLine{}
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	for dec.More() {
		var l statsLine
		if err := dec.Decode(&l); err != nil {
			c.t.Fatalf("stats --json: %v\n%s", err, r.stdout)
		}
		got[l.Name] = l
	}
	for _, vm := range []string{"web", "client"} {
		l, ok := got[vm]
		if !ok || l.CPUPercent <= 0 || l.RSSBytes == 0 || len(l.Net) != 1 || l.Net[0].Network != "lan" ||
			l.Net[0].RxBytes == 0 || l.Net[0].TxBytes == 0 || l.Net[0].RxFrames == 0 || l.Net[0].TxFrames == 0 {
			c.t.Errorf("stats of %s: %+v", vm, l)
		}
	}
	// The guest's own memory: the kernel's total, under the VM's 256 MiB
	// and well over nothing, and some of it in use.
	for _, vm := range []string{"web", "client"} {
		if l := got[vm]; l.GuestMemTotal < 128<<20 || l.GuestMemTotal > 256<<20 || l.GuestMemUsed == 0 || l.GuestMemUsed >= l.GuestMemTotal {
			c.t.Errorf("guest memory of %s: used %d of %d bytes", vm, l.GuestMemUsed, l.GuestMemTotal)
		}
	}
	if l := got["client"]; l.DiskWritten < 16*64<<10 {
		c.t.Errorf("client wrote 1 MiB to its disk, stats say %d bytes", l.DiskWritten)
	}
	if r := c.mustRun("stats", "--no-stream"); !strings.Contains(r.stdout, "NET I/O") || !strings.Contains(r.stdout, "client") {
		c.t.Errorf("stats --no-stream:\n%s", r.stdout)
	}
}

// TestRestartKillPause: restart, kill and pause/unpause, with a probe from
// a neighbour: a paused VM answers nothing until it is unpaused.
func TestRestartKillPause(t *testing.T) {
	requireVMs(t)
	file := filepath.Join(t.TempDir(), "stack.hcl")
	writeFile(t, file, controlStack)
	c := newCLI(t, fmt.Sprintf("ctl-%d", os.Getpid()))
	c.mustRun("-f", file, "up", "--progress", "plain")
	fetch := func() result {
		return c.run("exec", "client", "--", "timeout", "3", "wget", "-q", "-O", "-", "http://web/")
	}
	if r := fetch(); r.code != 0 || r.stdout != "hello\n" {
		t.Fatalf("probe before pause: %+v", r)
	}
	c.checkStats()

	c.mustRun("pause", "web")
	c.mustRun("pause", "web") // pausing a paused VM does nothing
	if e := c.ps()["web"]; e.State != "paused" {
		t.Errorf("ps after pause: %+v", e)
	}
	if r := fetch(); r.code == 0 {
		t.Errorf("a paused VM answered: %+v", r)
	}
	c.mustRun("unpause", "web")
	if e := c.ps()["web"]; e.State != "ready" {
		t.Errorf("ps after unpause: %+v", e)
	}
	if r := fetch(); r.code != 0 || r.stdout != "hello\n" {
		t.Errorf("probe after unpause: %+v", r)
	}

	before := c.ps()["web"]
	c.mustRun("restart", "--progress", "plain", "web")
	after := c.ps()["web"]
	if after.State != "ready" || after.PID == 0 || after.PID == before.PID {
		t.Errorf("restart: before %+v, after %+v", before, after)
	}
	if r := fetch(); r.code != 0 || r.stdout != "hello\n" {
		t.Errorf("probe after restart: %+v", r)
	}

	if r := c.run("kill", "-s", "NOPE", "web"); r.code != 1 || !strings.Contains(r.stderr, `invalid signal "NOPE"`) {
		t.Errorf("kill -s NOPE: %+v", r)
	}
	c.mustRun("kill", "web")
	killed := c.waitState("web", "failed")
	if killed.ExitCode == nil || *killed.ExitCode != 128+9 {
		t.Errorf("killed VM: %+v, want exit code 137", killed)
	}
	if r := c.run("pause", "web"); r.code != 1 || !strings.Contains(r.stderr, "does not run") {
		t.Errorf("pause of a failed VM: %+v", r)
	}
	c.mustRun("restart", "--progress", "plain", "web")
	if e := c.ps()["web"]; e.State != "ready" {
		t.Errorf("restart of a killed VM: %+v", e)
	}

	// A paused VM can be stopped: it runs again to be asked to power off.
	c.mustRun("pause", "web")
	c.mustRun("stop", "web")
	if e := c.ps()["web"]; e.State != "stopped" {
		t.Errorf("stop of a paused VM: %+v", e)
	}
	if e := c.ps()["client"]; e.State != "ready" {
		t.Errorf("the neighbour: %+v", e)
	}
}

const readyStack = `network "lan" {
  subnet = "10.60.0.0/24"
}

vm "web" {
  command = ["sh", "-c", "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www"]
  network "lan" {}
  ready {
    tcp = 80
  }
}

# Ready once another VM, by its name, answers 2xx.
vm "byname" {
  depends_on = [vm.web]
  command    = ["sh", "-c", "exec sleep 100000"]
  network "lan" {}
  ready {
    http = "http://web/index.html"
  }
}

# Ready once a command in the guest exits 0: a second after it starts.
vm "byexec" {
  command = ["sh", "-c", "sleep 1; touch /tmp/ok; exec sleep 100000"]
  network "lan" {}
  ready {
    exec = ["test", "-f", "/tmp/ok"]
  }
}
`

const unreadyStack = `
vm "notfound" {
  depends_on = [vm.web]
  command    = ["sh", "-c", "exec sleep 100000"]
  network "lan" {}
  ready {
    http    = "http://web/missing"
    timeout = "5s"
  }
}

vm "execfails" {
  command = ["sh", "-c", "exec sleep 100000"]
  network "lan" {}
  ready {
    exec    = ["false"]
    timeout = "5s"
  }
}
`

// TestReadyProbes: ready { http } reaches another VM by its name and wants
// 2xx (a 404 never makes a VM ready), and ready { exec } runs its command
// in the guest until it exits 0.
func TestReadyProbes(t *testing.T) {
	requireVMs(t)
	file := filepath.Join(t.TempDir(), "stack.hcl")
	writeFile(t, file, readyStack)
	c := newCLI(t, fmt.Sprintf("ready-%d", os.Getpid()))
	r := c.mustRun("-f", file, "up", "--progress", "plain")
	for _, want := range []string{"ready: http://web/index.html answered 200", `ready: ["test" "-f" "/tmp/ok"] exited 0`} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("up's progress lacks %q:\n%s", want, r.stderr)
		}
	}
	if got, want := c.names(), "byexec=ready byname=ready web=ready"; got != want {
		t.Fatalf("after up: %s, want %s", got, want)
	}

	writeFile(t, file, readyStack+unreadyStack)
	r = c.run("-f", file, "up", "--progress", "plain")
	if r.code != 1 {
		t.Fatalf("up with probes that never pass: %+v", r)
	}
	for _, want := range []string{
		"vm.notfound failed: not ready after 5s (waiting for http://web/missing to answer 2xx)",
		`vm.execfails failed: not ready after 5s (waiting for ["false"] to exit 0)`,
	} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("up's report lacks %q:\n%s", want, r.stderr)
		}
	}
}

// checkCopy copies a file and a directory into vm and back out, and checks
// contents, modes and docker cp's errors.
func (c *cli) checkCopy(vm string) {
	t := c.t
	t.Helper()
	host := t.TempDir()
	writeFile(t, filepath.Join(host, "one.txt"), "one\n")
	if err := os.Chmod(filepath.Join(host, "one.txt"), 0o640); err != nil {
		t.Fatal(err)
	}
	tree := filepath.Join(host, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "sub"), 0o750); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(tree, "sub", "run.sh"), "#!/bin/sh\necho ran\n")
	if err := os.Chmod(filepath.Join(tree, "sub", "run.sh"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("sub/run.sh", filepath.Join(tree, "link")); err != nil {
		t.Fatal(err)
	}

	// In: a file as a new name, a file into a directory, a directory.
	c.mustRun("exec", vm, "--", "mkdir", "-p", "/cp")
	c.mustRun("cp", filepath.Join(host, "one.txt"), vm+":/cp/renamed.txt")
	c.mustRun("cp", filepath.Join(host, "one.txt"), vm+":/cp/")
	c.mustRun("cp", tree, vm+":/cp")
	r := c.mustRun("exec", vm, "--", "sh", "-c",
		"cat /cp/renamed.txt /cp/one.txt; stat -c '%a %n' /cp/one.txt /cp/tree/sub /cp/tree/sub/run.sh; readlink /cp/tree/link; /cp/tree/link")
	if want := "one\none\n640 /cp/one.txt\n750 /cp/tree/sub\n755 /cp/tree/sub/run.sh\nsub/run.sh\nran\n"; r.stdout != want {
		t.Errorf("%s: copied in:\n%s\nwant:\n%s", vm, r.stdout, want)
	}

	// Out: a file into a directory, a file as a new name, a directory.
	out := t.TempDir()
	c.mustRun("cp", vm+":/cp/one.txt", out)
	c.mustRun("cp", vm+":/cp/renamed.txt", filepath.Join(out, "back.txt"))
	c.mustRun("cp", vm+":/cp/tree", filepath.Join(out, "tree2"))
	for p, want := range map[string]string{"one.txt": "one\n", "back.txt": "one\n", "tree2/sub/run.sh": "#!/bin/sh\necho ran\n"} {
		if got, err := os.ReadFile(filepath.Join(out, p)); err != nil || string(got) != want {
			t.Errorf("%s: copied out %s: %q, %v", vm, p, got, err)
		}
	}
	for p, want := range map[string]os.FileMode{"one.txt": 0o640, "tree2/sub": 0o750 | os.ModeDir, "tree2/sub/run.sh": 0o755} {
		if fi, err := os.Stat(filepath.Join(out, p)); err != nil || fi.Mode() != want {
			t.Errorf("%s: copied out %s: mode %v (%v), want %v", vm, p, fi.Mode(), err, want)
		}
	}
	if l, err := os.Readlink(filepath.Join(out, "tree2", "link")); err != nil || l != "sub/run.sh" {
		t.Errorf("%s: copied out link: %q, %v", vm, l, err)
	}

	// docker cp's errors.
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"cp", vm + ":/nope", out}, "no such file or directory: /nope"},
		{[]string{"cp", filepath.Join(host, "nope"), vm + ":/cp"}, "no such file or directory: " + filepath.Join(host, "nope")},
		{[]string{"cp", filepath.Join(host, "one.txt"), vm + ":/nodir/x"}, "no such directory: " + vm + ":/nodir"},
		{[]string{"cp", filepath.Join(host, "one.txt"), vm + ":/cp/one.txt/"}, "not a directory: " + vm + ":/cp/one.txt/"},
		{[]string{"cp", tree, vm + ":/cp/one.txt"}, "cannot copy a directory to a file"},
		{[]string{"cp", vm + ":/cp/one.txt", filepath.Join(out, "nodir", "x")}, "no such directory: " + filepath.Join(out, "nodir")},
		{[]string{"cp", "a:/x", "b:/y"}, "copying between two VMs is not supported"},
	} {
		if r := c.run(tc.args...); r.code != 1 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("%s: stack %s: exit %d, stderr %q, want %q", vm, strings.Join(tc.args, " "), r.code, r.stderr, tc.want)
		}
	}
}

// TestCopy: stack cp both ways with an initramfs VM (through the guest
// agent); the cloud-init test does the same over SSH.
func TestCopy(t *testing.T) {
	c := upTwoVMs(t, "cp")
	c.checkCopy("good")
}

// waitPS waits until ps shows vm as ok says, and returns that entry.
func (c *cli) waitPS(vm, what string, ok func(psEntry) bool) psEntry {
	c.t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		e := c.ps()[vm]
		if ok(e) {
			return e
		}
		if time.Now().After(deadline) {
			c.t.Fatalf("%s never got %s: %+v", vm, what, e)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

const healthStack = `network "lan" {
  subnet = "10.62.0.0/24"
}

vm "svc" {
  # httpd goes to the background: killing it leaves the VM running.
  command = ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && httpd -p 80 -h /www; exec sleep 100000"]
  network "lan" {}
  restart = "no"
  health {
    http     = "http://localhost/index.html"
    interval = "1s"
    timeout  = "2s"
    retries  = 2
  }
}

vm "healed" {
  command = ["sh", "-c", "mkdir -p /www && echo ok > /www/index.html && httpd -p 80 -h /www; exec sleep 100000"]
  network "lan" {}
  restart = "always"
  health {
    tcp      = 80
    interval = "1s"
    timeout  = "2s"
    retries  = 2
  }
}
`

// TestHealthChecks: a health check turns a VM healthy, then unhealthy when
// its service is stopped inside the guest; with restart = "always" the VM
// is restarted for it and healthy again.
func TestHealthChecks(t *testing.T) {
	requireVMs(t)
	file := filepath.Join(t.TempDir(), "stack.hcl")
	writeFile(t, file, healthStack)
	c := newCLI(t, fmt.Sprintf("health-%d", os.Getpid()))
	c.mustRun("-f", file, "up", "--progress", "plain")
	healthy := func(e psEntry) bool { return e.State == "ready" && e.Health == "healthy" }
	c.waitPS("svc", "healthy", healthy)
	before := c.waitPS("healed", "healthy", healthy)
	if r := c.mustRun("ps"); !strings.Contains(r.stdout, "ready (healthy)") {
		t.Errorf("ps does not show the health:\n%s", r.stdout)
	}

	c.mustRun("exec", "svc", "--", "killall", "httpd")
	e := c.waitPS("svc", "unhealthy", func(e psEntry) bool { return e.Health == "unhealthy" })
	if e.State != "ready" || e.Restarts != 0 {
		t.Errorf("an unhealthy VM with restart = no: %+v", e)
	}

	c.mustRun("exec", "healed", "--", "killall", "httpd")
	after := c.waitPS("healed", "restarted and healthy", func(e psEntry) bool { return e.Restarts >= 1 && healthy(e) })
	if after.PID == before.PID {
		t.Errorf("healed was not restarted: before %+v, after %+v", before, after)
	}
	if r := c.run("logs", "healed"); r.code != 0 {
		t.Errorf("logs: %+v", r)
	}
}
