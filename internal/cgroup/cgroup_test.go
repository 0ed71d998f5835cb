package cgroup

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// This machine's kind of table: v1 cpu and cpuacct mounted apart, and an
// empty cgroup2 beside them (hybrid).
const hybrid = `25 30 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
27 25 0:24 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
28 25 0:25 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 25 0:32 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

const unified = `30 1 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
`

const together = `26 25 0:23 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
27 25 0:24 / /sys/fs/cgroup/with\040space rw,relatime - cgroup cgroup rw,cpuset
`

func TestParseMountinfo(t *testing.T) {
	for _, tc := range []struct {
		name, table string
		v2OK        bool
		want        Layout
	}{
		{"hybrid, cpu bound to v1", hybrid, false, Layout{CPU: "/sys/fs/cgroup/cpu", Acct: "/sys/fs/cgroup/cpuacct"}},
		{"hybrid, v2 offering cpu", hybrid, true, Layout{V2: "/sys/fs/cgroup/unified", CPU: "/sys/fs/cgroup/cpu", Acct: "/sys/fs/cgroup/cpuacct"}},
		{"unified", unified, true, Layout{V2: "/sys/fs/cgroup"}},
		{"unified without cpu", unified, false, Layout{}},
		{"cpu and cpuacct together", together, false, Layout{CPU: "/sys/fs/cgroup/cpu,cpuacct", Acct: "/sys/fs/cgroup/cpu,cpuacct"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := parseMountinfo(strings.NewReader(tc.table), func(string) bool { return tc.v2OK })
			if err != nil || got != tc.want {
				t.Errorf("got %+v, %v; want %+v", got, err, tc.want)
			}
		})
	}
	if got := unescape(`/a\040b\\c`); got != `/a b\\c` {
		t.Errorf("unescape: %q", got)
	}
}

func TestQuota(t *testing.T) {
	for cpus, want := range map[float64]time.Duration{0.25: 25 * time.Millisecond, 1.5: 150 * time.Millisecond, 0.001: time.Millisecond} {
		if got := Quota(cpus); got != want {
			t.Errorf("Quota(%v) = %v, want %v", cpus, got, want)
		}
	}
}

func read(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestV1Files writes a v1 group's files in a fake hierarchy (cgroupfs
// itself is exercised by the e2e test on a real VM).
func TestV1Files(t *testing.T) {
	root := t.TempDir()
	l := Layout{CPU: filepath.Join(root, "cpu"), Acct: filepath.Join(root, "cpuacct")}
	g := l.Group("ns", "web")
	if err := g.Create(0.25); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "cpu", "stack", "ns", "web")
	if q, p := read(t, filepath.Join(dir, "cpu.cfs_quota_us")), read(t, filepath.Join(dir, "cpu.cfs_period_us")); q != "25000" || p != "100000" {
		t.Errorf("quota %q period %q", q, p)
	}
	if err := g.SetCPULimit(0); err != nil {
		t.Fatal(err)
	}
	if q := read(t, filepath.Join(dir, "cpu.cfs_quota_us")); q != "-1" {
		t.Errorf("no limit: quota %q", q)
	}
	if err := g.Add(42); err != nil {
		t.Fatal(err)
	}
	acct := filepath.Join(root, "cpuacct", "stack", "ns", "web")
	if read(t, filepath.Join(dir, "cgroup.procs")) != "42" || read(t, filepath.Join(acct, "cgroup.procs")) != "42" {
		t.Error("the pid was not added to both hierarchies")
	}
	os.WriteFile(filepath.Join(acct, "cpuacct.usage"), []byte("1500000000\n"), 0o600)
	if u, err := g.Usage(); err != nil || u != 1500*time.Millisecond {
		t.Errorf("usage %v, %v", u, err)
	}
	os.WriteFile(filepath.Join(dir, "cpu.stat"), []byte("nr_periods 10\nnr_throttled 7\nthrottled_time 5\n"), 0o600)
	if n, err := g.Throttled(); err != nil || n != 7 {
		t.Errorf("throttled %d, %v", n, err)
	}
	if n, err := g.Periods(); err != nil || n != 10 {
		t.Errorf("periods %d, %v", n, err)
	}
}

func TestV2Files(t *testing.T) {
	root := t.TempDir()
	os.WriteFile(filepath.Join(root, "cgroup.subtree_control"), []byte("memory\n"), 0o600)
	g := Layout{V2: root}.Group("ns", "web")
	// A fake cgroupfs has no subtree_control in new directories: make
	// them as the kernel would.
	for _, d := range []string{"stack", "stack/ns"} {
		os.MkdirAll(filepath.Join(root, d), 0o700)
		os.WriteFile(filepath.Join(root, d, "cgroup.subtree_control"), nil, 0o600)
	}
	if err := g.Create(1.5); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{".", "stack", "stack/ns"} {
		if c := read(t, filepath.Join(root, d, "cgroup.subtree_control")); !strings.Contains(c, "cpu") {
			t.Errorf("%s: subtree_control %q, want cpu enabled", d, c)
		}
	}
	dir := filepath.Join(root, "stack", "ns", "web")
	if m := read(t, filepath.Join(dir, "cpu.max")); m != "150000 100000" {
		t.Errorf("cpu.max %q", m)
	}
	if err := g.SetCPULimit(0); err != nil || read(t, filepath.Join(dir, "cpu.max")) != "max 100000" {
		t.Errorf("no limit: %v, cpu.max %q", err, read(t, filepath.Join(dir, "cpu.max")))
	}
	os.WriteFile(filepath.Join(dir, "cpu.stat"), []byte("usage_usec 2000\nuser_usec 1000\nnr_throttled 3\n"), 0o600)
	if u, err := g.Usage(); err != nil || u != 2*time.Millisecond {
		t.Errorf("usage %v, %v", u, err)
	}
}

func TestNoController(t *testing.T) {
	if err := (Layout{}).Group("ns", "web").Create(1); err != ErrNoController {
		t.Errorf("got %v", err)
	}
}

// TestPermission: a hierarchy the process may not write into is a clear
// error naming what is missing (root ignores file modes, so the errno is
// given directly).
func TestPermission(t *testing.T) {
	for _, errno := range []error{syscall.EACCES, syscall.EPERM, syscall.EROFS} {
		err := permissionHint(&fs.PathError{Op: "mkdir", Path: "/sys/fs/cgroup/cpu/stack", Err: errno})
		if !strings.Contains(err.Error(), "cpu_limit needs the right to create cgroups") || !errors.Is(err, errno) {
			t.Errorf("%v: got %v", errno, err)
		}
	}
	if err := permissionHint(fs.ErrNotExist); strings.Contains(err.Error(), "right") {
		t.Errorf("not a permission error: %v", err)
	}
}
