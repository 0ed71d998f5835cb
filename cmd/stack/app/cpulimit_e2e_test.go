package app

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackvm/stack/internal/cgroup"
)

const cpuLimitStack = `network "lan" {
  subnet = "10.62.0.0/24"
}

vm "busy" {
  %s
  command = ["sh", "-c", "while :; do :; done"]
  network "lan" {}
}
`

// TestCPULimit: a guest spinning on its CPU under cpu_limit = 0.25 uses at
// most about 30% of a host CPU, read from its cgroup's own accounting (CPU
// time per CFS period it was runnable in, no wall clock); changing and
// lifting the limit are updates in place of the same VMM; down removes
// the group.
func TestCPULimit(t *testing.T) {
	requireVMs(t)
	layout, err := cgroup.Detect()
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "stack.hcl")
	c := newCLI(t, fmt.Sprintf("cpu-%d", os.Getpid()))
	g := layout.Group(c.ns, "busy")
	if len(g.Dirs()) == 0 {
		t.Fatal(cgroup.ErrNoController)
	}
	writeFile(t, file, fmt.Sprintf(cpuLimitStack, "cpu_limit = 0.25"))
	c.mustRun("-f", file, "up", "--progress", "plain")
	pid := c.ps()["busy"].PID
	checkQuota(t, g, "25000")
	checkMember(t, g, pid)

	// The guest has booted and spins: measure a stretch of it.
	u0, p0, th0 := accounting(t, g)
	var u1 time.Duration
	var p1, th1 int64
	for p1-p0 < 100 { // 100 periods: 10 s of being runnable
		time.Sleep(time.Second)
		u1, p1, th1 = accounting(t, g)
	}
	share := float64(u1-u0) / float64(time.Duration(p1-p0)*cgroup.Period)
	t.Logf("busy guest under cpu_limit 0.25: %.3f of a CPU over %d periods, throttled in %d", share, p1-p0, th1-th0)
	if share > 0.30 {
		t.Errorf("the VMM used %.3f of a CPU, want at most 0.30", share)
	}
	if th1 == th0 {
		t.Errorf("the group was never throttled: the guest does not spin, or the quota does not apply")
	}

	for _, tc := range []struct{ attr, quota string }{{"cpu_limit = 0.5", "50000"}, {"", "-1"}} {
		writeFile(t, file, fmt.Sprintf(cpuLimitStack, tc.attr))
		r := c.mustRun("-f", file, "up", "--progress", "plain")
		if !strings.Contains(r.stderr, "updated in place") {
			t.Errorf("up with %q: not updated in place:\n%s", tc.attr, r.stderr)
		}
		if got := c.ps()["busy"].PID; got != pid {
			t.Errorf("up with %q: pid %d, want the same VMM (%d)", tc.attr, got, pid)
		}
		checkQuota(t, g, tc.quota)
	}
	c.mustRun("down")
	for _, d := range g.Dirs() {
		if _, err := os.Stat(d); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("cgroup %s left after down (%v)", d, err)
		}
	}
}

// accounting reads a group's CPU time, runnable periods and throttled
// periods.
func accounting(t *testing.T, g cgroup.Group) (time.Duration, int64, int64) {
	t.Helper()
	u, err := g.Usage()
	if err != nil {
		t.Fatal(err)
	}
	p, err := g.Periods()
	if err != nil {
		t.Fatal(err)
	}
	th, err := g.Throttled()
	if err != nil {
		t.Fatal(err)
	}
	return u, p, th
}

// checkQuota asserts the group's CFS quota in microseconds, -1 for none
// (v1's cpu.cfs_quota_us; on v2 the first field of cpu.max, "max" for
// none).
func checkQuota(t *testing.T, g cgroup.Group, want string) {
	t.Helper()
	dir := g.Dirs()[0]
	b, err := os.ReadFile(filepath.Join(dir, "cpu.cfs_quota_us"))
	if errors.Is(err, os.ErrNotExist) {
		b, err = os.ReadFile(filepath.Join(dir, "cpu.max"))
		if want == "-1" {
			want = "max"
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(b)); len(got) == 0 || got[0] != want {
		t.Errorf("%s: quota %q, want %s", dir, b, want)
	}
}

// checkMember asserts that pid is in every directory of the group.
func checkMember(t *testing.T, g cgroup.Group, pid int) {
	t.Helper()
	for _, d := range g.Dirs() {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains("\n"+string(b), fmt.Sprintf("\n%d\n", pid)) {
			t.Errorf("%s: pid %d not among %q", d, pid, b)
		}
	}
}
