package qemu

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/stackvm/stack/internal/fsutil"
)

// A /dev/kvm that opens is not a KVM that runs guests: nested clouds ship a
// paravirtual KVM (kvm-pvm) that makes QEMU assert on an MSR ("failed to
// set MSR 0x10a") or hangs a stock kernel with no console output, and
// half-loaded or feature-poor KVMs fail in their own ways. So "auto" uses
// KVM only after a test boot under it has run a kernel to a known end
// point: the VM's own kernel, booted with no initramfs and a root device
// that does not exist, must print the panic about the root file system.
// Reaching it means the kernel went through real mode, long mode, its
// timers and its device probes, which is everything a stock kernel needs
// of KVM. A crash (QEMU exits first) and a hang (probeDeadline) both mean
// TCG.
//
// A failure is blamed on KVM only when the same test boot reaches the end
// point under TCG: a kernel that never prints it (no serial console, a
// command line it ignores) says nothing about KVM, and such a verdict is
// "not verified" rather than "broken". Verdicts are cached on disk per
// host boot, QEMU binary, machine type and kernel, so a host pays for each
// once per boot: about a second where KVM works, the crash plus a TCG
// boot (2 s here) where it does not.

// probeDeadline bounds a test boot under KVM. A kernel reaches the root
// mount in well under a second under a working KVM; a hang is only caught
// by this. tcgDeadline bounds the confirming boot under TCG, which takes
// 1-2 s here and more on a loaded host.
const (
	probeDeadline = 5 * time.Second
	tcgDeadline   = 30 * time.Second
)

// probeMarker is the line the test boot must print: the kernel's panic when
// it finds no root file system, the last thing it does before user space.
const probeMarker = "VFS: Unable to mount root fs"

// probeCmdline sends the kernel past any built-in initramfs (rdinit names
// nothing) to a root device that cannot exist, and lets the panic end the
// boot (panic=-1 reboots; -no-reboot turns that into QEMU's exit).
const probeCmdline = "console=ttyS0 quiet panic=-1 rdinit=/stack-kvm-probe root=/dev/stack-kvm-probe"

// KVMVerdict is what stack knows about the host's KVM.
type KVMVerdict struct {
	// Usable: a test boot under KVM reached its end point.
	Usable bool `json:"usable"`
	// Present: the KVM device opens read-write. A device that does not is
	// no surprise (most CI machines and laptops in VMs), so "auto" then
	// falls back to TCG without a word.
	Present bool `json:"present"`
	// Reason says why KVM is not usable, for the user.
	Reason string `json:"reason,omitempty"`
	// Unverified: the test boot failed under TCG too, so its kernel, not
	// KVM, may be at fault. "auto" still does not use KVM.
	Unverified bool `json:"unverified,omitempty"`
	// Took is how long the test boot ran (0 without one).
	Took time.Duration `json:"took,omitempty"`
}

// kvmProber decides, once per host boot, QEMU binary and machine type,
// whether KVM runs guests. Its fields are set by the driver; tests point
// them at stand-ins.
type kvmProber struct {
	binary   string        // QEMU, an absolute path
	device   string        // the KVM device, /dev/kvm
	bootID   string        // a file whose contents change at every host boot
	cacheDir string        // where verdicts are kept ("": in memory only)
	deadline time.Duration // bounds the test boot under KVM
	tcg      time.Duration // bounds the confirming boot under TCG
	tscKHz   int64         // for microvm under TCG (see HostInfo.TSCkHz)
	log      *slog.Logger

	mu       sync.Mutex // serializes probes in this process
	verdicts map[string]KVMVerdict
	// probes counts test boots run by this prober (for tests).
	probes int
}

func newKVMProber(binary, cacheDir string, tscKHz int64, lg *slog.Logger) *kvmProber {
	return &kvmProber{
		binary: binary, device: "/dev/kvm", bootID: "/proc/sys/kernel/random/boot_id",
		cacheDir: cacheDir, deadline: probeDeadline, tcg: tcgDeadline, tscKHz: tscKHz, log: lg,
	}
}

// verdict returns the cached verdict for machine, or probes with kernel.
// Concurrent callers, in this process or another (two namespaces' first
// `up`s), run one probe: the others wait for its verdict.
func (p *kvmProber) verdict(ctx context.Context, machine, kernel string) KVMVerdict {
	if err := deviceUsable(p.device); err != nil {
		return KVMVerdict{Reason: err.Error()}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	key, err := p.key(machine, kernel)
	if err != nil {
		// A kernel that cannot be read fails the VM's start anyway, with
		// QEMU's own error; a test boot of it would say nothing.
		return KVMVerdict{Present: true, Unverified: true, Reason: "KVM could not be checked: " + err.Error()}
	}
	if v, ok := p.verdicts[key]; ok {
		return v
	}
	if p.cacheDir != "" {
		lock, err := fsutil.LockFile(ctx, filepath.Join(p.cacheDir, ".lock"), nil)
		if err != nil {
			p.log.Warn("kvm probe: cache lock", "err", err)
		}
		defer lock.Unlock()
		if v, err := p.read(key); err == nil {
			p.remember(key, v)
			return v
		}
	}
	v := p.probe(ctx, machine, kernel)
	if ctx.Err() != nil {
		// The caller gave up: that says nothing about KVM.
		return v
	}
	p.remember(key, v)
	if p.cacheDir != "" {
		if err := p.write(key, v); err != nil {
			p.log.Warn("kvm probe: write verdict", "err", err)
		}
	}
	return v
}

func (p *kvmProber) remember(key string, v KVMVerdict) {
	if p.verdicts == nil {
		p.verdicts = map[string]KVMVerdict{}
	}
	p.verdicts[key] = v
}

// key names a verdict: the host boot, the QEMU binary and the kernel
// (each by path, size and modification time, which an upgrade changes)
// and the machine type.
func (p *kvmProber) key(machine, kernel string) (string, error) {
	boot, err := os.ReadFile(p.bootID)
	if err != nil {
		return "", fmt.Errorf("read boot id: %w", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "%s\x00%s\x00", bytes.TrimSpace(boot), machine)
	for _, f := range []string{p.binary, kernel} {
		fi, err := os.Stat(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\x00%d\x00%d\x00", f, fi.Size(), fi.ModTime().UnixNano())
	}
	return hex.EncodeToString(h.Sum(nil)[:12]), nil
}

// cachedVerdict is a verdict on disk with the boot it belongs to, so that
// verdicts of earlier boots can be pruned.
type cachedVerdict struct {
	KVMVerdict
	BootID string `json:"boot_id"`
}

func (p *kvmProber) path(key string) string { return filepath.Join(p.cacheDir, key+".json") }

func (p *kvmProber) read(key string) (KVMVerdict, error) {
	b, err := os.ReadFile(p.path(key))
	if err != nil {
		return KVMVerdict{}, err
	}
	var c cachedVerdict
	if err := json.Unmarshal(b, &c); err != nil {
		return KVMVerdict{}, fmt.Errorf("read kvm verdict: %w", err)
	}
	return c.KVMVerdict, nil
}

// write stores v and removes the verdicts of other host boots.
func (p *kvmProber) write(key string, v KVMVerdict) error {
	boot, _ := os.ReadFile(p.bootID)
	b, err := json.Marshal(cachedVerdict{KVMVerdict: v, BootID: string(bytes.TrimSpace(boot))})
	if err != nil {
		return err
	}
	if err := fsutil.WriteFileAtomic(p.path(key), b); err != nil {
		return err
	}
	old, _ := filepath.Glob(filepath.Join(p.cacheDir, "*.json"))
	for _, f := range old {
		var c cachedVerdict
		if data, err := os.ReadFile(f); err == nil && json.Unmarshal(data, &c) == nil && c.BootID != string(bytes.TrimSpace(boot)) {
			os.Remove(f)
		}
	}
	return nil
}

// probe runs the test boot under KVM and, when it fails, under TCG, and
// judges KVM by the two.
func (p *kvmProber) probe(ctx context.Context, machine, kernel string) KVMVerdict {
	t0 := time.Now()
	v := KVMVerdict{Present: true}
	kvm := p.boot(ctx, machine, kernel, AccelKVM, p.deadline)
	switch {
	case kvm == "":
		v.Usable = true
	case ctx.Err() != nil:
		v.Reason = kvm
	default:
		v.Reason = "a test boot under KVM " + kvm
		if tcg := p.boot(ctx, machine, kernel, AccelTCG, p.tcg); tcg != "" {
			v.Unverified = true
			v.Reason = fmt.Sprintf("KVM could not be checked with this kernel: its test boot failed under KVM (%s) and under TCG (%s)", kvm, tcg)
		}
	}
	v.Took = time.Since(t0)
	p.log.Info("kvm probe", "machine", machine, "kernel", kernel, "usable", v.Usable, "reason", v.Reason, "took", v.Took)
	return v
}

// boot runs one test boot under accel and says how it failed, or "" when
// it reached the end point.
func (p *kvmProber) boot(ctx context.Context, machine, kernel, accel string, deadline time.Duration) string {
	p.probes++
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	cmd := exec.Command(p.binary, probeArgs(machine, kernel, accel, p.tscKHz)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err == nil {
		err = cmd.Start()
	}
	if err != nil {
		return fmt.Sprintf("did not start: %v", err)
	}
	found := make(chan bool, 1)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 4096), 1<<20)
		for sc.Scan() {
			if strings.Contains(sc.Text(), probeMarker) {
				found <- true
				io.Copy(io.Discard, out)
				return
			}
		}
		found <- false
	}()
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case ok := <-found:
		if ok {
			cmd.Process.Kill()
			<-exited
			return ""
		}
		return exitText(<-exited) + stderrSummary(stderr.Bytes())
	case <-ctx.Done():
		cmd.Process.Kill()
		<-exited
		return fmt.Sprintf("showed no sign of the guest kernel within %s", deadline)
	}
}

// exitText describes how the probe's QEMU ended before the end point.
func exitText(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			return fmt.Sprintf("crashed QEMU (%s)", ws.Signal())
		}
		return fmt.Sprintf("made QEMU exit with status %d", ee.ExitCode())
	}
	if err != nil {
		return "failed: " + err.Error()
	}
	return "ended before the guest kernel got far"
}

// stderrSummary is ": " and the first line of QEMU's stderr that says
// something, or "".
func stderrSummary(b []byte) string {
	for line := range strings.Lines(string(b)) {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "qemu-system-x86_64:"))
		if line != "" && !strings.HasPrefix(line, "warning:") {
			return ": " + line
		}
	}
	return ""
}

// probeArgs is a test boot's command line: the VM's machine type and the
// CPU model a VM gets under accel, the kernel, the serial console on
// stdout.
func probeArgs(machine, kernel, accel string, tscKHz int64) []string {
	cpu, cmdline := "host", probeCmdline
	if accel == AccelTCG {
		cpu = "max"
		if machine == MachineMicrovm && tscKHz > 0 {
			cmdline += " tsc_early_khz=" + strconv.FormatInt(tscKHz, 10)
		}
	}
	return []string{
		"-machine", machineArg(machine, ""), "-accel", accel, "-cpu", cpu,
		"-smp", "1", "-m", "128",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", kernel, "-append", cmdline,
		"-serial", "stdio",
	}
}

// deviceUsable says why the KVM device cannot be used, or nil.
func deviceUsable(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s does not exist", path)
		}
		return fmt.Errorf("%s cannot be opened: %v", path, err)
	}
	f.Close()
	return nil
}
