// Package qemu is the QEMU driver: it turns a hypervisor.Config into the
// argv of qemu-system-x86_64 (BuildArgs, pure and golden-tested), uses KVM
// only where a test boot showed that it runs guests (accel.go), starts QEMU
// as a detached process (with a virtiofsd per shared directory where one is
// at hand), controls it over QMP, re-adopts it from a recorded Identity in a
// later process, and speaks the host side of the guest agent channel (see
// package guestproto).
package qemu

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/proc"
	"github.com/stackvm/stack/hypervisor/qemu/qmp"
	"github.com/stackvm/stack/internal/filenames"
)

// DriverName is the driver's name in stack files and identities.
const DriverName = "qemu"

// DefaultBinary is the QEMU program, looked up in PATH.
const DefaultBinary = "qemu-system-x86_64"

// pollInterval is how often Start looks for the QMP socket: QEMU creates it
// within tens of milliseconds, and every millisecond here is boot time.
const pollInterval = 5 * time.Millisecond

// Options configure a Driver.
type Options struct {
	Binary string // default DefaultBinary
	Logger *slog.Logger
	// StartTimeout bounds how long Start waits for QEMU's QMP socket
	// (default 30 s; QEMU under a loaded TCG host can be slow to start).
	StartTimeout time.Duration
	// BeforeBoot, when set, runs after QEMU is up and controllable but
	// before the guest's CPUs start (QEMU runs with -S until it returns).
	// The console relay connects here so that no early output is lost.
	// An error aborts Start and kills QEMU.
	BeforeBoot func(ctx context.Context, cfg *hypervisor.Config) error
	// Virtiofsd is the virtio-fs daemon for shared directories (default:
	// FindVirtiofsd when running as root; NoVirtiofsd: use 9p).
	Virtiofsd string
	// AccelCache is where KVM probe verdicts are kept (default:
	// filenames.AccelCache under the cache root).
	AccelCache string
	// Templates is where boot templates are kept (default:
	// filenames.TemplateCache under the cache root); TemplateLimit bounds
	// their disk use (default templates.DefaultLimit).
	Templates     string
	TemplateLimit int64
	// TemplateShm is where a VM that makes a template keeps its memory
	// while it runs (default /dev/shm).
	TemplateShm string
}

// Driver starts and re-adopts QEMU VMs. It implements hypervisor.Driver.
type Driver struct {
	opts Options
	log  *slog.Logger

	hostOnce    sync.Once
	host        HostInfo
	hostErr     error
	kvm         *kvmProber
	versionOnce sync.Once
}

var _ hypervisor.Driver = (*Driver)(nil)

// New returns a Driver.
func New(opts Options) *Driver {
	if opts.Binary == "" {
		opts.Binary = DefaultBinary
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = 30 * time.Second
	}
	lg := opts.Logger
	if lg == nil {
		lg = slog.Default()
	}
	return &Driver{opts: opts, log: lg.With("driver", DriverName)}
}

// Name implements hypervisor.Driver.
func (d *Driver) Name() string { return DriverName }

// Host detects the host facts once per Driver: the QEMU binary, the TSC,
// virtiofsd. Not KVM: whether it runs guests is probed per machine type by
// Start (see accel.go). Not QEMU's version: `qemu --version` is a whole QEMU start (about
// 0.1 s, more under load) on the path to every supervisor's first VM. Each
// VM's QMP greeting tells the version instead, and --version runs only to
// explain a failed start (see versionHint).
func (d *Driver) Host() (HostInfo, error) {
	d.hostOnce.Do(func() {
		bin, err := exec.LookPath(d.opts.Binary)
		if err != nil {
			d.hostErr = fmt.Errorf("find qemu: %w", err)
			return
		}
		d.opts.Binary = bin
		if d.opts.AccelCache == "" {
			d.opts.AccelCache = filenames.AccelCache(filenames.CacheRoot())
		}
		if d.opts.Templates == "" {
			d.opts.Templates = filenames.TemplateCache(filenames.CacheRoot())
		}
		d.host = HostInfo{TSCkHz: DetectTSCkHz(), Virtiofsd: d.opts.Virtiofsd, Sandbox: ProbeSandbox(bin), Root: os.Geteuid() == 0}
		d.kvm = newKVMProber(bin, d.opts.AccelCache, d.host.TSCkHz, d.log)
		if d.host.Virtiofsd == "" && os.Geteuid() == 0 {
			// QEMU's C virtiofsd sets up its sandbox with namespaces
			// that only root may create: others keep 9p.
			d.host.Virtiofsd = FindVirtiofsd()
		} else if d.host.Virtiofsd == NoVirtiofsd {
			d.host.Virtiofsd = ""
		}
		d.log.Info("qemu host detected", "binary", bin, "tsc_khz", d.host.TSCkHz, "virtiofsd", d.host.Virtiofsd, "sandbox", d.host.Sandbox)
		if d.host.TSCkHz == 0 {
			d.log.Warn("host TSC frequency unknown: microvm guests under TCG may hang in TSC calibration")
		}
	})
	return d.host, d.hostErr
}

// versionHint explains a failed start by QEMU's version, when that is the
// likely cause: -netdev dgram and stream came with QEMU 7.2.
func (d *Driver) versionHint(cfg *hypervisor.Config) string {
	if !usesNewNetdevs(cfg) {
		return ""
	}
	out, err := exec.Command(d.opts.Binary, "--version").Output()
	if err != nil {
		return ""
	}
	v, err := ParseVersion(out)
	if err != nil || v.AtLeast(7, 2) {
		return ""
	}
	return fmt.Sprintf(" (-netdev dgram/stream need QEMU 7.2 or later, have %d.%d)", v.Major, v.Minor)
}

// Start implements hypervisor.Driver. It runs in steps; each step that
// acquires something (a virtiofsd, the QEMU process, the QMP connection)
// pushes its undo right after, and a failed start unwinds them, so that it
// leaves no process behind.
func (d *Driver) Start(ctx context.Context, cfg *hypervisor.Config) (hypervisor.Instance, error) {
	inst, err := d.start(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("start vm %s: %w", cfg.Name, err)
	}
	return inst, nil
}

func (d *Driver) start(ctx context.Context, cfg *hypervisor.Config) (*instance, error) {
	if cfg.Snapshot != "" {
		return d.startSnapshot(ctx, cfg)
	}
	inst, err := d.startAs(ctx, cfg, true)
	var re *restoreError
	if errors.As(err, &re) {
		// A template that does not restore is not used again: the VM
		// boots cold and makes a new one.
		d.log.Warn("restore from template failed; booting cold", "key", re.key, "err", re.err)
		d.templates().Remove(re.key)
		inst, err = d.startAs(ctx, cfg, false)
		if inst != nil {
			inst.boot.Note = fmt.Sprintf("restoring it from the boot template of its shape failed (%v); it booted cold and the template was discarded", re.err)
		}
	}
	return inst, err
}

// restoreError is a start that failed while restoring a template.
type restoreError struct {
	key string
	err error
}

func (e *restoreError) Error() string { return "restore from template: " + e.err.Error() }

// startAs starts QEMU for cfg; restore false boots it cold even when a
// template of its shape is there.
func (d *Driver) startAs(ctx context.Context, cfg *hypervisor.Config, restore bool) (*instance, error) {
	host, err := d.Host()
	if err != nil {
		return nil, err
	}
	host.GuestMicrovm = ProbeKernel(cfg.Kernel)
	accel, err := d.accel(ctx, cfg, &host)
	if err != nil {
		return nil, err
	}
	tpl := templateEligible(cfg)
	if cfg.Paused && !tpl {
		return nil, errors.New("a paused start needs a VM that boots from a template")
	}
	if tpl {
		cfg = templateConfig(cfg)
	}
	args, err := BuildArgs(cfg, host)
	if err != nil {
		return nil, err
	}
	var plan *templatePlan
	configSize := 0
	if tpl {
		args = append(args, "-device", "vmgenid,guid=auto")
		machine, _ := ResolveMachine(cfg, host)
		if plan, args, err = d.planTemplate(ctx, cfg, args, machine, accel.Name, restore); err != nil {
			return nil, err
		}
		configSize = configDiskTemplateSize
	}
	if d.opts.BeforeBoot != nil || cfg.Paused {
		args = append(args, "-S")
	}
	var undo cleanups
	defer undo.unwind()
	if plan != nil && plan.making != nil {
		undo.push(func() {
			plan.making.Abort()
			plan.mem.Close()
			os.Remove(plan.mem.Name())
		})
	}
	if err := d.prepareRunDir(cfg, args, configSize); err != nil {
		return nil, err
	}
	if err := startVirtiofsd(cfg, host, &undo); err != nil {
		return nil, err
	}
	t0 := time.Now()
	inst, err := d.spawn(cfg, args, accel, &undo)
	if err != nil {
		return nil, err
	}
	inst.boot = hypervisor.Boot{Kind: hypervisor.BootCold}
	if plan != nil {
		inst.boot.Note = plan.note
		if plan.making != nil {
			inst.making = plan
		}
	}
	if err := d.bringUp(ctx, cfg, inst, plan, &undo); err != nil {
		// QEMU ran, so its stderr and virtiofsd's logs may say why it
		// failed; they are complete once the unwind has ended both.
		undo.unwind()
		if plan != nil && plan.restore != nil {
			return nil, &restoreError{key: plan.key, err: fmt.Errorf("%w%s", err, stderrTail(stderrPath(cfg.RunDir)))}
		}
		return nil, fmt.Errorf("%w%s%s%s%s", err, d.versionHint(cfg), kvmHint(accel), stderrTail(stderrPath(cfg.RunDir)), virtiofsdTails(cfg, host))
	}
	if plan != nil && plan.restore != nil {
		inst.boot = hypervisor.Boot{Kind: hypervisor.BootTemplate, Took: time.Since(t0)}
		d.templates().Use(plan.restore)
	}
	undo.disarm()
	inst.log.Debug("vm started", "took", time.Since(t0), "boot", inst.boot.Kind)
	return inst, nil
}

// spawn starts QEMU, its output going to the run directory's stderr file.
// Its undo kills QEMU, waits for it and removes the sockets it served,
// which QEMU unlinks only on a clean exit.
func (d *Driver) spawn(cfg *hypervisor.Config, args []string, accel hypervisor.Accel, undo *cleanups) (*instance, error) {
	stderr, err := os.OpenFile(stderrPath(cfg.RunDir), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, filenames.FileMode)
	if err != nil {
		return nil, fmt.Errorf("open stderr file: %w", err)
	}
	defer stderr.Close() // the child has its own copy
	cmd := exec.Command(d.opts.Binary, args...)
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	cmd.ExtraFiles = extraFiles(cfg)
	// Own session: the VMM outlives the caller and is not hit by signals
	// sent to the caller's process group (Ctrl-C on `stack up`).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	pid := cmd.Process.Pid
	inst := &instance{
		d:        d,
		log:      d.log.With("vm", cfg.Name, "pid", pid),
		runDir:   cfg.RunDir,
		hasAgent: cfg.GuestAgent,
		accel:    accel,
		cmd:      cmd,
		exited:   make(chan struct{}),
		drained:  make(chan struct{}),
		closed:   make(chan struct{}),
	}
	go func() {
		inst.waitErr = cmd.Wait()
		close(inst.exited)
	}()
	undo.push(func() {
		_ = cmd.Process.Kill()
		<-inst.exited
		removeSockets(cfg.RunDir)
	})
	return inst, nil
}

// bringUp makes the running QEMU a VM to hand out: its identity recorded,
// its QMP monitor connected and, after BeforeBoot, its guest's CPUs
// started. Errors here are QEMU's to explain (see start).
func (d *Driver) bringUp(ctx context.Context, cfg *hypervisor.Config, inst *instance, plan *templatePlan, undo *cleanups) error {
	pid := inst.cmd.Process.Pid
	st, err := proc.StartTime(pid)
	if err != nil {
		return err
	}
	inst.id = hypervisor.Identity{Driver: DriverName, PID: pid, StartTime: st, RunDir: cfg.RunDir}
	if err := os.WriteFile(filepath.Join(cfg.RunDir, filenames.PIDFile), []byte(strconv.Itoa(pid)+"\n"), filenames.FileMode); err != nil {
		return fmt.Errorf("write pid file: %w", err)
	}

	sctx, cancel := context.WithTimeout(ctx, d.opts.StartTimeout)
	defer cancel()
	c, err := dialQMP(sctx, qmpPath(cfg.RunDir), inst.exited)
	if err != nil {
		return err
	}
	inst.qmp = c
	undo.push(func() { c.Close() })
	d.privateSockets(cfg)
	d.versionOnce.Do(func() {
		v := c.Greeting().Version.QEMU
		d.log.Info("qemu version", "version", fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro))
	})
	go inst.watchEvents()
	switch {
	case plan != nil && plan.snapshot != "":
		if err := setCapability(sctx, c, "x-ignore-shared", plan.ignoreShared); err != nil {
			return err
		}
		if err := migrateFrom(sctx, c, filepath.Join(plan.snapshot, filenames.SnapshotVMState)); err != nil {
			return err
		}
		if d.opts.BeforeBoot != nil {
			if err := d.opts.BeforeBoot(sctx, cfg); err != nil {
				return fmt.Errorf("before boot: %w", err)
			}
		}
		return nil // paused until Resume
	case plan != nil && plan.restore != nil:
		if err := restore(sctx, c, plan.restore); err != nil {
			return err
		}
	case plan != nil && plan.making != nil:
		// QEMU has mapped the memory file: its name can go, so that
		// nothing is left behind when QEMU and the driver are gone.
		os.Remove(plan.mem.Name())
	}
	if cfg.Paused {
		return nil // Claim runs it
	}
	if d.opts.BeforeBoot != nil {
		if err := d.opts.BeforeBoot(sctx, cfg); err != nil {
			return fmt.Errorf("before boot: %w", err)
		}
		if err := c.Cont(sctx); err != nil {
			return err
		}
	}
	return nil
}

// KVM is the verdict on this host's KVM for a machine type and kernel, as
// Start uses it: cached, or probed now (see accel.go).
func (d *Driver) KVM(ctx context.Context, machine, kernel string) (KVMVerdict, error) {
	if _, err := d.Host(); err != nil {
		return KVMVerdict{}, err
	}
	return d.kvm.verdict(ctx, machine, kernel), nil
}

// accel decides the VM's accelerator: unless TCG is asked for, the KVM
// probe's verdict for its machine type (cached, see accel.go) goes into
// host. A VM that asks for KVM where it cannot run guests is refused.
func (d *Driver) accel(ctx context.Context, cfg *hypervisor.Config, host *HostInfo) (hypervisor.Accel, error) {
	if cfg.Accel != AccelTCG {
		machine, err := ResolveMachine(cfg, *host)
		if err != nil {
			return hypervisor.Accel{}, err
		}
		v := d.kvm.verdict(ctx, machine, cfg.Kernel)
		// A VM that insists on KVM gets it unless KVM was seen to fail:
		// an unverified verdict blames no one.
		host.KVM = v.Usable || (cfg.Accel == AccelKVM && v.Unverified)
		host.KVMReason = v.Reason
		if !v.Usable && v.Present && cfg.Accel != AccelKVM {
			name, _ := ResolveAccel(cfg, *host)
			return hypervisor.Accel{Name: name, Fallback: v.Reason}, nil
		}
	}
	name, err := ResolveAccel(cfg, *host)
	return hypervisor.Accel{Name: name}, err
}

// kvmHint names the way out when a VM that ran under KVM failed to start:
// the probe passed, yet this VM's configuration may still trip over KVM.
func kvmHint(a hypervisor.Accel) string {
	if a.Name != AccelKVM {
		return ""
	}
	return `; it ran under KVM: set accel = "tcg" on the VM (or STACK_ACCEL=tcg) to use software emulation`
}

func usesNewNetdevs(cfg *hypervisor.Config) bool {
	for _, n := range cfg.NICs {
		if n.DgramLocal != "" || n.StreamPath != "" || n.FD != nil {
			return true
		}
	}
	return false
}

// qmpDialTimeout bounds a QMP dial whose context has no deadline (a
// supervisor re-adopting its VMs): QEMU greets one client at a time, so a
// socket that another process holds would otherwise block it for ever.
var qmpDialTimeout = 30 * time.Second

// dialQMP polls for the QMP socket until QEMU serves it, QEMU exits (exited
// closes) or ctx ends (qmpDialTimeout when ctx has no deadline).
func dialQMP(ctx context.Context, path string, exited <-chan struct{}) (*qmp.Client, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeoutCause(ctx, qmpDialTimeout,
			fmt.Errorf("QEMU did not answer on its QMP socket %s within %s: another process may hold it (a second supervisor of the namespace?); `stack down --force` ends the namespace's processes: %w", path, qmpDialTimeout, context.DeadlineExceeded))
		defer cancel()
	}
	for {
		c, err := qmp.Dial(ctx, path)
		if err == nil {
			return c, nil
		}
		if ctx.Err() != nil {
			return nil, context.Cause(ctx)
		}
		if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, err
		}
		select {
		case <-exited:
			return nil, errors.New("qemu exited during startup")
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for qmp socket: %w", context.Cause(ctx))
		case <-time.After(pollInterval):
		}
	}
}

// stderrTailLines is how much of QEMU's stderr a start error carries.
const stderrTailLines = 20

func stderrTail(path string) string { return logTail(path, "qemu stderr") }

// logTail is "; <what>:" and the last lines of the file at path, or "".
func logTail(path, what string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	b = bytes.TrimRight(b, "\n")
	if len(b) == 0 {
		return ""
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) > stderrTailLines {
		lines = lines[len(lines)-stderrTailLines:]
	}
	return "; " + what + ":\n" + strings.Join(lines, "\n")
}
