package app

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stackvm/stack/internal/filenames"
)

// snapshots lists a namespace's snapshots by name.
func (c *cli) snapshots() map[string]snapshotEntry {
	c.t.Helper()
	r := c.mustRun("snapshot", "ls", "--json")
	var list []snapshotEntry
	if err := json.Unmarshal([]byte(r.stdout), &list); err != nil {
		c.t.Fatalf("snapshot ls --json: %v\n%s", err, r.stdout)
	}
	out := map[string]snapshotEntry{}
	for _, s := range list {
		out[s.Name] = s
	}
	return out
}

type snapshotEntry struct {
	Name  string   `json:"name"`
	VMs   []string `json:"vms"`
	Bytes int64    `json:"bytes"`
	Dir   string   `json:"dir"`
}

// clientHellos counts the quickstart client's fetches in its log.
func clientHellos(c *cli) int {
	return strings.Count(c.mustRun("logs", "client").stdout, "hello from web")
}

// waitHellos waits until the client has fetched more than n times.
func waitHellos(t *testing.T, c *cli, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for clientHellos(c) <= n {
		if time.Now().After(deadline) {
			t.Fatalf("%s: the client's loop did not go on (%d fetches):\n%s\nsupervisor log:\n%s", c.ns, n, c.run("logs", "client").stdout, c.supervisorLog())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// guestClockSkew is how far a VM's clock is from the host's, in seconds.
func guestClockSkew(t *testing.T, c *cli, vm string) int64 {
	t.Helper()
	out := strings.TrimSpace(c.mustRun("exec", vm, "--", "date", "+%s").stdout)
	sec, err := strconv.ParseInt(out, 10, 64)
	if err != nil {
		t.Fatalf("date in %s: %q", vm, out)
	}
	d := time.Now().Unix() - sec
	if d < 0 {
		d = -d
	}
	return d
}

// TestSnapshotQuickstart: a saved namespace runs on; a guest's change after
// the save is gone after a restore, the workload's loop goes on, the
// guests' clocks are the host's; the snapshot restores into a second
// namespace while the first runs (both serve), and into two more at once.
func TestSnapshotQuickstart(t *testing.T) {
	requireVMs(t)
	file := quickstartFile(t)
	a := newCLI(t, fmt.Sprintf("snap-%d", os.Getpid()))
	a.mustRun("-f", file, "up", "--progress", "plain")
	a.mustRun("exec", "web", "--", "sh", "-c", "echo saved > /root/mark")

	r := a.mustRun("snapshot", "save", "s1")
	if !strings.Contains(r.stdout, `Saved snapshot "s1": 2 VMs`) {
		t.Errorf("save said: %s", r.stdout)
	}
	snap, ok := a.snapshots()["s1"]
	if !ok || len(snap.VMs) != 2 || snap.Bytes <= 0 {
		t.Fatalf("snapshot ls: %+v", a.snapshots())
	}
	// The saved namespace runs on.
	n := clientHellos(a)
	waitHellos(t, a, n)

	a.mustRun("exec", "web", "--", "sh", "-c", "echo changed > /root/mark")
	pids := a.ps()
	a.mustRun("snapshot", "restore", "s1", "--progress", "plain")
	ps := a.ps()
	for _, vm := range []string{"web", "client"} {
		if ps[vm].State != "ready" || ps[vm].Boot != "snapshot" || ps[vm].PID == pids[vm].PID {
			t.Errorf("%s after restore: %+v (before: pid %d)", vm, ps[vm], pids[vm].PID)
		}
	}
	if got := strings.TrimSpace(a.mustRun("exec", "web", "--", "cat", "/root/mark").stdout); got != "saved" {
		t.Errorf("web's file after restore: %q, want the saved one", got)
	}
	n = clientHellos(a)
	waitHellos(t, a, n)
	for _, vm := range []string{"web", "client"} {
		if d := guestClockSkew(t, a, vm); d > 5 {
			t.Errorf("%s's clock is %d s off the host's after restore", vm, d)
		}
	}

	// Into another namespace, while the first runs: both serve.
	b := newCLI(t, fmt.Sprintf("snapb-%d", os.Getpid()))
	b.stateDir = a.stateDir
	a.mustRun("snapshot", "restore", "s1", "--into", b.ns, "--progress", "plain")
	for _, c := range []*cli{a, b} {
		if out := c.mustRun("exec", "client", "--", "wget", "-q", "-O", "-", "http://web/").stdout; !strings.Contains(out, "hello from web") {
			t.Errorf("%s: client cannot fetch from web: %q", c.ns, out)
		}
	}
	if got := strings.TrimSpace(b.mustRun("exec", "web", "--", "cat", "/root/mark").stdout); got != "saved" {
		t.Errorf("the copy's file: %q", got)
	}
	if pa, pb := a.ps()["web"].PID, b.ps()["web"].PID; pa == pb {
		t.Errorf("the copy runs the original's VMM (pid %d)", pa)
	}

	// Into two namespaces at once.
	var wg sync.WaitGroup
	copies := []*cli{}
	for _, s := range []string{"c", "d"} {
		c := newCLI(t, fmt.Sprintf("snap%s-%d", s, os.Getpid()))
		c.stateDir = a.stateDir
		copies = append(copies, c)
	}
	results := make([]result, len(copies))
	for i, c := range copies {
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i] = c.run("-p", a.ns, "snapshot", "restore", "s1", "--into", c.ns, "--progress", "plain")
		}()
	}
	wg.Wait()
	for i, c := range copies {
		if results[i].code != 0 {
			t.Fatalf("parallel restore into %s: %+v", c.ns, results[i])
		}
		if ps := c.ps(); ps["web"].State != "ready" || ps["client"].State != "ready" {
			t.Errorf("parallel restore into %s: %+v", c.ns, ps)
		}
	}
	// down removes no snapshot; snapshot rm does.
	a.mustRun("down")
	if _, ok := a.snapshots()["s1"]; !ok {
		t.Error("down removed the snapshot")
	}
	a.mustRun("snapshot", "rm", "s1")
	if len(a.snapshots()) != 0 {
		t.Errorf("after rm: %+v", a.snapshots())
	}
}

const volumeStack = `network "lan" {
  subnet = "10.69.0.0/24"
}

volume "data" {
  size = "64MiB"
}

vm "db" {
  command = ["sh", "-c", "exec sleep 100000"]
  disk "data" {
    volume     = volume.data
    guest_path = "/data"
  }
  disk "tmp" {
    size       = "32MiB"
    guest_path = "/scratch"
  }
  network "lan" {}
}
`

// TestSnapshotVolumes: a volume and a scratch disk written after the save
// read back what they held at the save after a restore, and the
// snapshot's files are unchanged by the VMs restored from it (restored
// twice, and compared).
func TestSnapshotVolumes(t *testing.T) {
	requireVMs(t)
	file := filepath.Join(t.TempDir(), "stack.hcl")
	writeFile(t, file, volumeStack)
	c := newCLI(t, fmt.Sprintf("snapv-%d", os.Getpid()))
	c.mustRun("-f", file, "up", "--progress", "plain")
	write := func(v string) {
		c.mustRun("exec", "db", "--", "sh", "-c", fmt.Sprintf("echo %s > /data/v && echo %s > /scratch/v && sync", v, v))
	}
	read := func() string {
		return strings.Join(strings.Fields(c.mustRun("exec", "db", "--", "cat", "/data/v", "/scratch/v").stdout), " ")
	}
	write("one")
	c.mustRun("snapshot", "save", "vol")
	dir := c.snapshots()["vol"].Dir
	vol := filepath.Join(dir, filenames.SnapshotFiles, filenames.VolumeDir, "data.img")
	before := sum(t, vol)
	write("two")
	for i := range 2 {
		c.mustRun("snapshot", "restore", "vol", "--progress", "plain")
		if got := read(); got != "one one" {
			t.Fatalf("restore %d: the disks hold %q, want what they held at the save", i+1, got)
		}
		write(fmt.Sprintf("after-%d", i))
	}
	if sum(t, vol) != before {
		t.Error("the VMs restored from the snapshot changed its volume file")
	}
	c.mustRun("down")
}

// TestSnapshotFaults: names that exist, are missing or invalid are refused;
// a damaged snapshot is refused before anything is stopped; a save that
// runs out of disk leaves the namespace as it was; a save whose CLI is
// killed leaves the namespace running and no snapshot behind.
func TestSnapshotFaults(t *testing.T) {
	requireVMs(t)
	file := quickstartFile(t)
	c := newCLI(t, fmt.Sprintf("snapf-%d", os.Getpid()))
	c.mustRun("-f", file, "up", "--progress", "plain")
	c.mustRun("snapshot", "save", "ok")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"snapshot", "save", "ok"}, `snapshot "ok" exists`},
		{[]string{"snapshot", "restore", "missing"}, `no snapshot "missing"`},
		{[]string{"snapshot", "save", "../x"}, "invalid snapshot name"},
		{[]string{"snapshot", "rm", "missing"}, `no snapshot "missing"`},
	} {
		if r := c.run(tc.args...); r.code == 0 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("stack %s: exit %d, %q; want an error with %q", strings.Join(tc.args, " "), r.code, r.stderr, tc.want)
		}
	}

	// A damaged snapshot: refused, nothing stopped.
	c.mustRun("snapshot", "save", "bad")
	state := filepath.Join(c.snapshots()["bad"].Dir, filenames.SnapshotVMMs, "web", filenames.SnapshotVMState)
	f, err := os.OpenFile(state, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("garbage"), 100)
	f.Close()
	pids := c.ps()
	if r := c.run("snapshot", "restore", "bad"); r.code == 0 || !strings.Contains(r.stderr, "damaged") {
		t.Errorf("restore of a damaged snapshot: %+v", r)
	}
	if ps := c.ps(); ps["web"].PID != pids["web"].PID || ps["web"].State != "ready" {
		t.Errorf("a refused restore touched the namespace: %+v", ps)
	}

	// A full disk: the save fails, the namespace runs on, unpaused.
	small := t.TempDir()
	if err := exec.Command("mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", small).Run(); err != nil {
		t.Logf("no tmpfs for the full-disk case (%v): skipped", err)
	} else {
		defer exec.Command("umount", small).Run()
		full := newCLI(t, fmt.Sprintf("snapfull-%d", os.Getpid()))
		full.stateDir = small
		full.mustRun("-f", file, "up", "--progress", "plain")
		r := full.run("snapshot", "save", "big")
		if r.code == 0 || !strings.Contains(strings.ToLower(r.stderr), "no space left") {
			t.Errorf("save onto a full disk: %+v", r)
		}
		if _, ok := full.snapshots()["big"]; ok {
			t.Error("a failed save is listed")
		}
		n := clientHellos(full)
		waitHellos(t, full, n)
		full.mustRun("down")
	}

	// The CLI killed in the middle of a save.
	bin := filepath.Join(t.TempDir(), "stack")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/stackvm/stack/cmd/stack").CombinedOutput(); err != nil {
		t.Fatalf("build stack: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-p", c.ns, "--state-dir", c.stateDir, "snapshot", "save", "killed")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	staging := filenames.SnapshotStaging(filenames.Snapshot(c.stateDir, c.ns, "killed"))
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Millisecond) {
		if m, _ := filepath.Glob(filepath.Join(staging, filenames.SnapshotVMMs, "*", filenames.SnapshotVMState)); len(m) > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the save never began")
		}
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if _, ok := c.snapshots()["killed"]; ok {
		t.Error("a killed save is listed")
	}
	if r := c.run("snapshot", "restore", "killed"); r.code == 0 {
		t.Error("a killed save was restored")
	}
	n := clientHellos(c)
	waitHellos(t, c, n) // running, not left paused
	// The name can be saved again.
	c.mustRun("snapshot", "save", "killed")
	if _, err := os.Stat(staging); !os.IsNotExist(err) {
		t.Errorf("the killed save's files are still there: %v", err)
	}
}

// TestSnapshotCloudInit: the example Debian cloud-init VM, snapshotted once
// provisioned (root overlay and volume included), is restored ready
// without booting or running cloud-init again, with its files as saved,
// its clock the host's, and exec over SSH working.
func TestSnapshotCloudInit(t *testing.T) {
	requireVMs(t)
	image := debianImageDir(t)
	file, err := filepath.Abs("../../../examples/stacks/cloud-init.hcl")
	if err != nil {
		t.Fatal(err)
	}
	c := newCLI(t, fmt.Sprintf("snapci-%d", os.Getpid()))
	args := []string{"-f", file, "--var", "debian_image_dir=" + image}
	start := time.Now()
	c.mustRun(append(args, "up", "--progress", "plain")...)
	t.Logf("the cloud-init VM is ready in %s", time.Since(start).Round(time.Second))
	// Its clock an hour behind when saved: the restore must step it.
	c.mustRun("exec", "debian", "--", "sh", "-c", "echo saved > /root/mark && echo saved > /data/mark && sync && date -s @$(($(date +%s) - 3600)) >/dev/null")
	uptime := func() float64 {
		f := strings.Fields(c.mustRun("exec", "debian", "--", "cat", "/proc/uptime").stdout)
		v, err := strconv.ParseFloat(f[0], 64)
		if err != nil {
			t.Fatalf("uptime: %v", f)
		}
		return v
	}
	before := uptime()
	start = time.Now()
	c.mustRun("snapshot", "save", "provisioned")
	t.Logf("saved in %s: %+v", time.Since(start).Round(time.Millisecond), c.snapshots()["provisioned"].Bytes>>20)
	c.mustRun("exec", "debian", "--", "sh", "-c", "echo changed > /root/mark && echo changed > /data/mark && sync")

	start = time.Now()
	c.mustRun("snapshot", "restore", "provisioned", "--progress", "plain")
	t.Logf("restored to ready in %s", time.Since(start).Round(time.Millisecond))
	if v := c.ps()["debian"]; v.State != "ready" || v.Boot != "snapshot" {
		t.Fatalf("after restore: %+v", v)
	}
	if got := c.mustRun("exec", "debian", "--", "cat", "/root/mark", "/data/mark").stdout; got != "saved\nsaved\n" {
		t.Errorf("files after restore: %q", got)
	}
	if after := uptime(); after < before {
		t.Errorf("the guest booted again: uptime %.1f s after restore, %.1f s at the save", after, before)
	}
	// The clock is stepped over SSH in the background, in seconds.
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(time.Second) {
		d := guestClockSkew(t, c, "debian")
		if d <= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Errorf("the guest's clock is still %d s off the host's a minute after the restore", d)
			break
		}
	}
	c.mustRun(append(args, "down", "--volumes")...)
}
