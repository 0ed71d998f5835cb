// Package cgroup caps the CPU time of a VM's VMM process with a cgroup of
// its own: cpu.max on cgroup v2, cpu.cfs_quota_us and cpu.cfs_period_us on
// cgroup v1 (where the usage is read from the cpuacct controller, which
// may be mounted apart from cpu).
//
// It is a small implementation of the few files it needs rather than
// containerd's cgroups package: that one creates a v1 group in every
// mounted hierarchy by default and brings runtime-spec, eBPF and systemd
// D-Bus dependencies, for two files written here.
//
// A VM's group is stack/<namespace>/<vm> below the hierarchy's root. The
// caller needs the right to create it there: root, or (v2) a delegated
// subtree mounted as the hierarchy.
package cgroup

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Period is the CFS period every limit is expressed in: 100 ms, the
// kernel's default, as Docker uses.
const Period = 100 * time.Millisecond

// minQuota is the kernel's smallest CFS quota (1 ms).
const minQuota = time.Millisecond

// Layout is where the CPU controllers are mounted.
type Layout struct {
	// V2 is a cgroup2 mount whose root offers the cpu controller; when
	// set, it is used and CPU and Acct are not.
	V2 string
	// CPU and Acct are the cgroup v1 mounts of the cpu and cpuacct
	// controllers (the same directory when they are mounted together).
	CPU, Acct string
}

// Detect reads this process's mount table.
func Detect() (Layout, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return Layout{}, fmt.Errorf("detect cgroups: %w", err)
	}
	defer f.Close()
	return parseMountinfo(f, hasCPUController)
}

// hasCPUController reports whether a cgroup2 mount's root can give its
// children the cpu controller (it is not bound to a v1 hierarchy).
func hasCPUController(mount string) bool {
	b, err := os.ReadFile(filepath.Join(mount, "cgroup.controllers"))
	return err == nil && hasWord(string(b), "cpu", " ")
}

func hasWord(s, word, sep string) bool {
	for _, f := range strings.Split(strings.TrimSpace(s), sep) {
		if f == word {
			return true
		}
	}
	return false
}

// parseMountinfo finds the cgroup mounts in a /proc/PID/mountinfo table;
// v2OK says whether a cgroup2 mount offers the cpu controller.
func parseMountinfo(r io.Reader, v2OK func(string) bool) (Layout, error) {
	var l Layout
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(tail) < 3 {
			continue
		}
		mount := unescape(fields[4])
		switch tail[0] {
		case "cgroup2":
			if l.V2 == "" && v2OK(mount) {
				l.V2 = mount
			}
		case "cgroup":
			if hasWord(tail[2], "cpu", ",") && l.CPU == "" {
				l.CPU = mount
			}
			if hasWord(tail[2], "cpuacct", ",") && l.Acct == "" {
				l.Acct = mount
			}
		}
	}
	if err := sc.Err(); err != nil {
		return Layout{}, fmt.Errorf("read mountinfo: %w", err)
	}
	return l, nil
}

// unescape undoes mountinfo's octal escapes (\040 for a space).
func unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Group is one VM's cgroup.
type Group struct {
	l   Layout
	rel string // stack/<namespace>/<vm>
}

// Group names the cgroup of a VM of a namespace; nothing is created yet.
func (l Layout) Group(namespace, vm string) Group {
	return Group{l: l, rel: filepath.Join("stack", namespace, vm)}
}

// Dirs are the group's directories: one on v2, the cpu and (when mounted
// apart) cpuacct ones on v1.
func (g Group) Dirs() []string {
	switch {
	case g.l.V2 != "":
		return []string{filepath.Join(g.l.V2, g.rel)}
	case g.l.CPU == "":
		return nil
	case g.l.Acct == "" || g.l.Acct == g.l.CPU:
		return []string{filepath.Join(g.l.CPU, g.rel)}
	}
	return []string{filepath.Join(g.l.CPU, g.rel), filepath.Join(g.l.Acct, g.rel)}
}

// ErrNoController: no hierarchy offers the cpu controller.
var ErrNoController = errors.New("the cgroup cpu controller is mounted neither as cgroup v2 (with cpu in cgroup.controllers) nor as cgroup v1")

// Quota is the CFS quota of a limit in CPUs' worth, per Period.
func Quota(cpus float64) time.Duration {
	q := time.Duration(math.Round(cpus * float64(Period)))
	return max(q, minQuota)
}

// Create makes the group's directories and sets its CPU limit (0 for
// none). It fails naming the directory and what is missing when the
// process may not create cgroups.
func (g Group) Create(cpus float64) error {
	dirs := g.Dirs()
	if len(dirs) == 0 {
		return ErrNoController
	}
	if g.l.V2 != "" {
		if err := g.enableV2(); err != nil {
			return err
		}
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return permissionHint(fmt.Errorf("create cgroup %s: %w", d, err))
		}
	}
	return g.SetCPULimit(cpus)
}

// enableV2 hands the cpu controller down from the v2 root to the
// namespace's group: a child only has cpu.max when its parent lists cpu
// in cgroup.subtree_control.
func (g Group) enableV2() error {
	dir := g.l.V2
	for _, part := range strings.Split(filepath.Dir(g.rel), string(filepath.Separator)) {
		if err := enableCPU(dir); err != nil {
			return err
		}
		dir = filepath.Join(dir, part)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return permissionHint(fmt.Errorf("create cgroup %s: %w", dir, err))
		}
	}
	return enableCPU(dir)
}

// enableCPU lists cpu in dir's cgroup.subtree_control.
func enableCPU(dir string) error {
	ctl := filepath.Join(dir, "cgroup.subtree_control")
	b, err := os.ReadFile(ctl)
	if err != nil {
		return permissionHint(fmt.Errorf("read %s: %w", ctl, err))
	}
	if hasWord(string(b), "cpu", " ") {
		return nil
	}
	if err := os.WriteFile(ctl, []byte("+cpu"), 0o644); err != nil {
		return permissionHint(fmt.Errorf("enable the cpu controller in %s: %w", ctl, err))
	}
	return nil
}

func permissionHint(err error) error {
	if errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.EROFS) {
		return fmt.Errorf("%w: cpu_limit needs the right to create cgroups (run stack as root, or on cgroup v2 from a delegated subtree)", err)
	}
	return err
}

// SetCPULimit changes the limit of an existing group in place (0 for
// none).
func (g Group) SetCPULimit(cpus float64) error {
	dirs := g.Dirs()
	if len(dirs) == 0 {
		return ErrNoController
	}
	quota := Quota(cpus)
	us := func(d time.Duration) string { return strconv.FormatInt(d.Microseconds(), 10) }
	if g.l.V2 != "" {
		v := "max " + us(Period)
		if cpus > 0 {
			v = us(quota) + " " + us(Period)
		}
		return writeFile(filepath.Join(dirs[0], "cpu.max"), v)
	}
	if err := writeFile(filepath.Join(dirs[0], "cpu.cfs_period_us"), us(Period)); err != nil {
		return err
	}
	v := "-1"
	if cpus > 0 {
		v = us(quota)
	}
	return writeFile(filepath.Join(dirs[0], "cpu.cfs_quota_us"), v)
}

func writeFile(path, v string) error {
	if err := os.WriteFile(path, []byte(v), 0o644); err != nil {
		return permissionHint(fmt.Errorf("write %s: %w", path, err))
	}
	return nil
}

// Add moves a process, all its threads, into the group.
func (g Group) Add(pid int) error {
	for _, d := range g.Dirs() {
		if err := writeFile(filepath.Join(d, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			return fmt.Errorf("add pid %d: %w", pid, err)
		}
	}
	return nil
}

// Usage is the CPU time the group's processes used since it was created,
// from the group's own accounting: cpu.stat's usage_usec on v2, cpuacct.usage
// on v1.
func (g Group) Usage() (time.Duration, error) {
	dirs := g.Dirs()
	if len(dirs) == 0 {
		return 0, ErrNoController
	}
	if g.l.V2 != "" {
		n, err := g.stat("usage_usec")
		return time.Duration(n) * time.Microsecond, err
	}
	path := filepath.Join(dirs[len(dirs)-1], "cpuacct.usage")
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read cpu usage: %w", err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read cpu usage: %s: %w", path, err)
	}
	return time.Duration(n), nil
}

// Throttled is how many periods the group ran out of quota in (cpu.stat's
// nr_throttled, on both versions).
func (g Group) Throttled() (int64, error) { return g.stat("nr_throttled") }

// Periods is how many CFS periods the group had runnable processes in
// (cpu.stat's nr_periods): with Usage, the share of a CPU it used while
// it wanted to run, from its own accounting alone.
func (g Group) Periods() (int64, error) { return g.stat("nr_periods") }

func (g Group) stat(key string) (int64, error) {
	dirs := g.Dirs()
	if len(dirs) == 0 {
		return 0, ErrNoController
	}
	path := filepath.Join(dirs[0], "cpu.stat")
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read cpu stat: %w", err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, " "); ok && k == key {
			return strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("read cpu stat: %s has no %s", path, key)
}

// Remove deletes the group once its processes are gone, and the
// namespace's and stack's parents when they are left empty. A group that
// does not exist is no error.
func (g Group) Remove() error {
	var errs []error
	for _, d := range g.Dirs() {
		if err := os.Remove(d); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup: %w", err))
			continue
		}
		// Parents shared with other VMs and namespaces: removed only
		// when empty, which rmdir checks.
		ns := filepath.Dir(d)
		if os.Remove(ns) == nil {
			os.Remove(filepath.Dir(ns))
		}
	}
	return errors.Join(errs...)
}
