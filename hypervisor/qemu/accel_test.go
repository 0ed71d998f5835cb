package qemu

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stackvm/stack/hypervisor"
)

// Stand-ins for QEMU: a test boot that reaches its end point, one that
// makes QEMU assert (as kvm-pvm does), and one that hangs the guest.
const (
	kvmWorks = `echo "[    0.31] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)"
exec sleep 30
`
	kvmAsserts = `echo "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69" >&2
echo "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion 'ret == cpu->kvm_msr_buf->nmsrs' failed." >&2
kill -ABRT $$
`
	kvmHangs = `echo "Probing EDD (edd=off to disable)... ok"
exec sleep 30
`
)

// standInProber returns a prober whose QEMU behaves as kvm under -accel
// kvm and as tcg under -accel tcg, and appends its argv to the file calls;
// its KVM device opens, and its boot id and cache live in the test's
// directory.
func standInProber(t testing.TB, kvm, tcg string) (p *kvmProber, calls string) {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "qemu-system-x86_64")
	calls = filepath.Join(dir, "calls")
	body := "#!/bin/sh\necho \"$@\" >> " + calls + "\n" +
		"case \"$*\" in *\"-accel tcg\"*)\n" + tcg + "\n;; esac\n" + kvm
	if err := os.WriteFile(bin, []byte(body), 0o755); err != nil {
		t.Fatal(err)
	}
	dev := filepath.Join(dir, "kvm")
	bootID := filepath.Join(dir, "boot_id")
	for _, f := range []string{dev, bootID} {
		if err := os.WriteFile(f, []byte("b1\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	p = newKVMProber(bin, filepath.Join(dir, "cache"), 2096016, slog.Default())
	p.device, p.bootID, p.deadline, p.tcg = dev, bootID, 1500*time.Millisecond, 1500*time.Millisecond
	kernel := filepath.Join(dir, "vmlinuz")
	if err := os.WriteFile(kernel, []byte("a kernel"), 0o644); err != nil {
		t.Fatal(err)
	}
	return p, calls
}

// kernelOf is the stand-in kernel next to the prober's QEMU.
func kernelOf(p *kvmProber) string { return filepath.Join(filepath.Dir(p.binary), "vmlinuz") }

// newPeer is another prober on the same host, QEMU and cache: another
// process, as far as the verdicts are concerned.
func newPeer(p *kvmProber) *kvmProber {
	q := newKVMProber(p.binary, p.cacheDir, p.tscKHz, slog.Default())
	q.device, q.bootID, q.deadline, q.tcg = p.device, p.bootID, p.deadline, p.tcg
	return q
}

func callCount(t testing.TB, calls string) int {
	t.Helper()
	b, err := os.ReadFile(calls)
	if os.IsNotExist(err) {
		return 0
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\n")
}

func TestKVMProbeVerdicts(t *testing.T) {
	cases := []struct {
		name       string
		kvm, tcg   string
		usable     bool
		unverified bool
		reason     string // in the verdict's reason
		boots      int    // test boots run
	}{
		{"works", kvmWorks, kvmHangs, true, false, "", 1},
		{"asserts", kvmAsserts, kvmWorks, false, false, "a test boot under KVM crashed QEMU (aborted): error: failed to set MSR 0x10a to 0x69", 2},
		{"hangs", kvmHangs, kvmWorks, false, false, "a test boot under KVM showed no sign of the guest kernel within 1.5s", 2},
		// A kernel that never shows the end point: not KVM's fault.
		{"kernel-silent", kvmHangs, kvmHangs, false, true, "KVM could not be checked with this kernel: its test boot failed under KVM (showed no sign of the guest kernel within 1.5s) and under TCG (showed no sign", 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, calls := standInProber(t, c.kvm, c.tcg)
			kernel := kernelOf(p)
			t0 := time.Now()
			v := p.verdict(context.Background(), MachineMicrovm, kernel)
			took := time.Since(t0)
			if v.Usable != c.usable || v.Unverified != c.unverified || !v.Present {
				t.Fatalf("verdict %+v, want usable=%v unverified=%v present", v, c.usable, c.unverified)
			}
			if !strings.Contains(v.Reason, c.reason) {
				t.Errorf("reason %q lacks %q", v.Reason, c.reason)
			}
			if c.usable && took > time.Second {
				t.Errorf("a working KVM took %s: the probe waited for QEMU's exit instead of the marker", took)
			}
			b, _ := os.ReadFile(calls)
			want := strings.Join(probeArgs(MachineMicrovm, kernel, AccelKVM, 2096016), " ") + "\n"
			if c.boots == 2 {
				want += strings.Join(probeArgs(MachineMicrovm, kernel, AccelTCG, 2096016), " ") + "\n"
			}
			if string(b) != want {
				t.Errorf("test boots ran\n%swant\n%s", b, want)
			}
		})
	}
}

// TestKVMProbeCached: a verdict is paid once per host boot, QEMU binary
// and machine type; a new process (a new prober) reads it from disk.
func TestKVMProbeCached(t *testing.T) {
	p, calls := standInProber(t, kvmAsserts, kvmWorks)
	ctx := context.Background()
	k := kernelOf(p)
	first := p.verdict(ctx, MachineMicrovm, k)
	if again := p.verdict(ctx, MachineMicrovm, k); again != first || callCount(t, calls) != 2 {
		t.Fatalf("second verdict %+v after %d runs, want the cached %+v after 2", again, callCount(t, calls), first)
	}
	other := newPeer(p)
	t0 := time.Now()
	v := other.verdict(ctx, MachineMicrovm, k)
	if took := time.Since(t0); v != first || callCount(t, calls) != 2 {
		t.Fatalf("another process's verdict %+v after %d runs, want the cached %+v", v, callCount(t, calls), first)
	} else {
		t.Logf("cached verdict read from disk in %s", took)
	}
	if fi, err := os.Stat(other.cacheDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("cache dir mode: %v %v", fi.Mode(), err)
	}

	// Another machine type, a QEMU upgrade (the binary changes), another
	// kernel and a host reboot each ask again: two test boots each.
	other.verdict(ctx, MachineQ35, k)
	if n := callCount(t, calls); n != 4 {
		t.Errorf("another machine type: %d test boots in all, want 4", n)
	}
	later := time.Now().Add(time.Minute)
	os.Chtimes(p.binary, later, later)
	other.verdict(ctx, MachineMicrovm, k)
	if n := callCount(t, calls); n != 6 {
		t.Errorf("after the binary changed: %d test boots in all, want 6", n)
	}
	os.Chtimes(k, later, later)
	other.verdict(ctx, MachineMicrovm, k)
	if n := callCount(t, calls); n != 8 {
		t.Errorf("after the kernel changed: %d test boots in all, want 8", n)
	}
	os.WriteFile(p.bootID, []byte("b2\n"), 0o600)
	other.verdict(ctx, MachineMicrovm, k)
	if n := callCount(t, calls); n != 10 {
		t.Errorf("after a reboot: %d test boots in all, want 10", n)
	}
	left, _ := filepath.Glob(filepath.Join(p.cacheDir, "*.json"))
	if len(left) != 1 {
		t.Errorf("verdicts of earlier boots were not pruned: %v", left)
	}
}

// TestKVMProbeNoDevice: without a KVM device nothing is probed and auto
// is TCG without a note.
func TestKVMProbeNoDevice(t *testing.T) {
	p, calls := standInProber(t, kvmWorks, kvmWorks)
	p.device = filepath.Join(t.TempDir(), "kvm")
	v := p.verdict(context.Background(), MachineMicrovm, kernelOf(p))
	if v.Usable || v.Present || !strings.Contains(v.Reason, "does not exist") || callCount(t, calls) != 0 {
		t.Fatalf("verdict %+v after %d runs", v, callCount(t, calls))
	}
}

// TestKVMProbeConcurrent: probers in parallel (two supervisors' first
// VMs) run one test boot between them.
func TestKVMProbeConcurrent(t *testing.T) {
	p, calls := standInProber(t, strings.Replace(kvmWorks, `echo "[`, `sleep 0.3; echo "[`, 1), kvmHangs)
	done := make(chan KVMVerdict)
	for range 3 {
		q := newPeer(p)
		go func() { done <- q.verdict(context.Background(), MachineMicrovm, kernelOf(p)) }()
	}
	for range 3 {
		if v := <-done; !v.Usable {
			t.Errorf("verdict %+v", v)
		}
	}
	if n := callCount(t, calls); n != 1 {
		t.Errorf("three concurrent probers ran QEMU %d times, want 1", n)
	}
}

// TestAccelResolution: what a VM runs under for each accel and verdict,
// and the note "auto" leaves when it falls back.
func TestAccelResolution(t *testing.T) {
	const crash = "a test boot under KVM crashed QEMU (aborted): error: failed to set MSR 0x10a to 0x69"
	cases := []struct {
		kvm, tcg, accel string
		want            hypervisor.Accel
		err             string
	}{
		{kvmWorks, kvmWorks, "auto", hypervisor.Accel{Name: "kvm"}, ""},
		{kvmWorks, kvmWorks, "kvm", hypervisor.Accel{Name: "kvm"}, ""},
		{kvmAsserts, kvmWorks, "auto", hypervisor.Accel{Name: "tcg", Fallback: crash}, ""},
		{kvmAsserts, kvmWorks, "kvm", hypervisor.Accel{}, `accel = "kvm", but KVM cannot run guests here: ` + crash},
		{kvmAsserts, kvmWorks, "tcg", hypervisor.Accel{Name: "tcg"}, ""},
		// Unverified (the kernel fails under TCG too): auto does not
		// use KVM, and a VM that insists gets it.
		{kvmAsserts, kvmHangs, "auto", hypervisor.Accel{Name: "tcg", Fallback: "KVM could not be checked with this kernel: its test boot failed under KVM (crashed QEMU (aborted): error: failed to set MSR 0x10a to 0x69) and under TCG (showed no sign of the guest kernel within 1.5s)"}, ""},
		{kvmAsserts, kvmHangs, "kvm", hypervisor.Accel{Name: "kvm"}, ""},
	}
	for _, c := range cases {
		p, calls := standInProber(t, c.kvm, c.tcg)
		d := New(Options{Binary: p.binary})
		d.kvm = p
		cfg := baseConfig()
		cfg.Accel, cfg.Kernel = c.accel, kernelOf(p)
		var host HostInfo
		got, err := d.accel(context.Background(), cfg, &host)
		switch {
		case c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)):
			t.Errorf("%s/%s: error %v, want %q", c.accel, c.kvm[:12], err, c.err)
		case c.err == "" && (err != nil || got != c.want):
			t.Errorf("%s/%s: %+v %v, want %+v", c.accel, c.kvm[:12], got, err, c.want)
		}
		if c.accel == "tcg" && callCount(t, calls) != 0 {
			t.Errorf("accel = tcg probed KVM")
		}
	}
}

func TestProbeArgsGolden(t *testing.T) {
	for _, m := range []string{MachineMicrovm, MachineQ35} {
		for _, a := range []string{AccelKVM, AccelTCG} {
			golden(t, "probe-"+a+"-"+m, strings.Join(probeArgs(m, "/cache/guest/k/vmlinuz", a, 2096016), "\n")+"\n")
		}
	}
}

// BenchmarkKVMVerdictCached is the cost of a verdict once it is known: a
// new supervisor's first VM reads it from disk (goal: under 1 ms).
func BenchmarkKVMVerdictCached(b *testing.B) {
	p, _ := standInProber(b, kvmAsserts, kvmWorks)
	p.verdict(context.Background(), MachineMicrovm, kernelOf(p))
	b.ResetTimer()
	for range b.N {
		newPeer(p).verdict(context.Background(), MachineMicrovm, kernelOf(p))
	}
}
