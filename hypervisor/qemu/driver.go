// Package qemu is the QEMU driver: it turns a hypervisor.Config into the
// argv of qemu-system-x86_64 (BuildArgs, pure and golden-tested), starts it
// as a detached process, controls it over QMP, re-adopts it from a recorded
// Identity in a later process, and speaks the host side of the guest agent
// channel (see package guestproto).
package qemu

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
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
		d.host = HostInfo{TSCkHz: DetectTSCkHz(), Virtiofsd: d.opts.Virtiofsd}
		d.kvm = newKVMProber(bin, d.opts.AccelCache, d.host.TSCkHz, d.log)
		if d.host.Virtiofsd == "" && os.Geteuid() == 0 {
			// QEMU's C virtiofsd sets up its sandbox with namespaces
			// that only root may create: others keep 9p.
			d.host.Virtiofsd = FindVirtiofsd()
		} else if d.host.Virtiofsd == NoVirtiofsd {
			d.host.Virtiofsd = ""
		}
		d.log.Info("qemu host detected", "binary", bin, "tsc_khz", d.host.TSCkHz, "virtiofsd", d.host.Virtiofsd)
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

// Start implements hypervisor.Driver.
func (d *Driver) Start(ctx context.Context, cfg *hypervisor.Config) (hypervisor.Instance, error) {
	host, err := d.Host()
	if err != nil {
		return nil, fmt.Errorf("start vm %s: %w", cfg.Name, err)
	}
	host.GuestMicrovm = ProbeKernel(cfg.Kernel)
	accel, err := d.accel(ctx, cfg, &host)
	if err != nil {
		return nil, fmt.Errorf("start vm %s: %w", cfg.Name, err)
	}
	args, err := BuildArgs(cfg, host)
	if err != nil {
		return nil, fmt.Errorf("start vm %s: %w", cfg.Name, err)
	}
	if d.opts.BeforeBoot != nil {
		args = append(args, "-S")
	}
	if err := d.prepareRunDir(cfg, args); err != nil {
		return nil, fmt.Errorf("start vm %s: %w", cfg.Name, err)
	}

	stopVirtiofsd, err := startVirtiofsd(cfg, host)
	if err != nil {
		return nil, fmt.Errorf("start vm %s: %w", cfg.Name, err)
	}
	stderrPath := filepath.Join(cfg.RunDir, filenames.StderrFile)
	stderr, err := os.OpenFile(stderrPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, filenames.FileMode)
	if err != nil {
		stopVirtiofsd()
		return nil, fmt.Errorf("start vm %s: open stderr file: %w", cfg.Name, err)
	}
	defer stderr.Close() // the child has its own copy
	cmd := exec.Command(d.opts.Binary, args...)
	cmd.Stdout = stderr
	cmd.Stderr = stderr
	cmd.ExtraFiles = extraFiles(cfg)
	// Own session: the VMM outlives the caller and is not hit by signals
	// sent to the caller's process group (Ctrl-C on `stack up`).
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		stopVirtiofsd()
		return nil, fmt.Errorf("start vm %s: %w", cfg.Name, err)
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
	fail := func(err error) (hypervisor.Instance, error) {
		_ = cmd.Process.Kill()
		<-inst.exited
		stopVirtiofsd()
		if inst.qmp != nil {
			inst.qmp.Close()
		}
		removeSockets(cfg.RunDir)
		return nil, fmt.Errorf("start vm %s: %w%s%s%s%s", cfg.Name, err, d.versionHint(cfg), kvmHint(accel), stderrTail(stderrPath), virtiofsdTails(cfg, host))
	}
	st, err := proc.StartTime(pid)
	if err != nil {
		return fail(err)
	}
	inst.id = hypervisor.Identity{Driver: DriverName, PID: pid, StartTime: st, RunDir: cfg.RunDir}
	if err := os.WriteFile(filepath.Join(cfg.RunDir, filenames.PIDFile), []byte(strconv.Itoa(pid)+"\n"), filenames.FileMode); err != nil {
		return fail(fmt.Errorf("write pid file: %w", err))
	}

	sctx, cancel := context.WithTimeout(ctx, d.opts.StartTimeout)
	defer cancel()
	c, err := dialQMP(sctx, qmpPath(cfg.RunDir), inst.exited)
	if err != nil {
		return fail(err)
	}
	inst.qmp = c
	d.privateSockets(cfg)
	d.versionOnce.Do(func() {
		v := c.Greeting().Version.QEMU
		d.log.Info("qemu version", "version", fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro))
	})
	go inst.watchEvents()
	if d.opts.BeforeBoot != nil {
		if err := d.opts.BeforeBoot(sctx, cfg); err != nil {
			return fail(fmt.Errorf("before boot: %w", err))
		}
		if err := c.Cont(sctx); err != nil {
			return fail(err)
		}
	}
	inst.log.Debug("vm started", "took", time.Since(t0))
	return inst, nil
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

// privateSockets makes the sockets QEMU serves, which it creates with the
// umask's mode, 0600 like every other socket of stack (their directory is
// 0700 too). QEMU has created them all once its monitor answers; a VM
// without a guest agent has no agent socket.
func (d *Driver) privateSockets(cfg *hypervisor.Config) {
	paths := vmmSockets(cfg.RunDir)
	for _, n := range cfg.NICs {
		if n.DgramLocal != "" {
			paths = append(paths, n.DgramLocal)
		}
	}
	for _, p := range paths {
		if err := os.Chmod(p, filenames.FileMode); err != nil && !errors.Is(err, fs.ErrNotExist) {
			d.log.Warn("make vmm socket private", "path", p, "err", err)
		}
	}
}

func usesNewNetdevs(cfg *hypervisor.Config) bool {
	for _, n := range cfg.NICs {
		if n.DgramLocal != "" || n.StreamPath != "" || n.FD != nil {
			return true
		}
	}
	return false
}

// prepareRunDir removes sockets left by an earlier VMM in the same run
// directory (QEMU refuses to bind over them), writes the config disk and
// records the argv.
func (d *Driver) prepareRunDir(cfg *hypervisor.Config, args []string) error {
	st, err := os.Stat(cfg.RunDir)
	if err != nil {
		return fmt.Errorf("check run dir: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("check run dir: %s is not a directory", cfg.RunDir)
	}
	removeSockets(cfg.RunDir)
	if len(cfg.GuestConfig) > 0 {
		if err := writePrivate(configDiskPath(cfg.RunDir), ConfigDiskImage(cfg.GuestConfig)); err != nil {
			return fmt.Errorf("write config disk: %w", err)
		}
	}
	b, err := json.MarshalIndent(append([]string{d.opts.Binary}, args...), "", "  ")
	if err != nil {
		return fmt.Errorf("encode argv: %w", err)
	}
	if err := writePrivate(filepath.Join(cfg.RunDir, filenames.ArgsFile), append(b, '\n')); err != nil {
		return fmt.Errorf("write argv file: %w", err)
	}
	return nil
}

// recordedAccel reads the accelerator from the argv that prepareRunDir
// recorded, or "".
func recordedAccel(runDir string) string {
	b, err := os.ReadFile(filepath.Join(runDir, filenames.ArgsFile))
	if err != nil {
		return ""
	}
	var argv []string
	if json.Unmarshal(b, &argv) != nil {
		return ""
	}
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == "-accel" {
			return argv[i+1]
		}
	}
	return ""
}

func writePrivate(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, filenames.FileMode)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// removeSockets removes the sockets QEMU serves in runDir. QEMU unlinks
// them itself on a clean exit, not when killed.
func removeSockets(runDir string) {
	for _, p := range vmmSockets(runDir) {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			slog.Warn("remove vmm socket", "path", p, "err", err)
		}
	}
}

// vmmSockets are the sockets QEMU serves in runDir (the agent's only for
// a VM with a guest agent).
func vmmSockets(runDir string) []string {
	return []string{qmpPath(runDir), consoleVMMPath(runDir), agentPath(runDir)}
}

// dialQMP polls for the QMP socket until QEMU serves it, QEMU exits (exited
// closes) or ctx ends.
func dialQMP(ctx context.Context, path string, exited <-chan struct{}) (*qmp.Client, error) {
	for {
		c, err := qmp.Dial(ctx, path)
		if err == nil {
			return c, nil
		}
		if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ECONNREFUSED) {
			return nil, err
		}
		select {
		case <-exited:
			return nil, errors.New("qemu exited during startup")
		case <-ctx.Done():
			return nil, fmt.Errorf("wait for qmp socket: %w", ctx.Err())
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

// Attach implements hypervisor.Driver. QEMU serves one QMP client at a time:
// a handle still open elsewhere must be closed first, or Attach waits for it
// until ctx ends.
func (d *Driver) Attach(ctx context.Context, id hypervisor.Identity) (hypervisor.Instance, error) {
	if id.Driver != "" && id.Driver != DriverName {
		return nil, fmt.Errorf("attach to pid %d: identity is for driver %q", id.PID, id.Driver)
	}
	if !proc.Alive(id.PID, id.StartTime) {
		return nil, fmt.Errorf("attach to pid %d: %w", id.PID, hypervisor.ErrGone)
	}
	pf, err := openPidfd(id)
	if err != nil {
		return nil, fmt.Errorf("attach to pid %d: %w", id.PID, err)
	}
	inst := &instance{
		d:         d,
		log:       d.log.With("pid", id.PID, "run_dir", id.RunDir),
		id:        id,
		runDir:    id.RunDir,
		pidfd:     pf,
		exited:    make(chan struct{}),
		watchDone: make(chan struct{}),
		drained:   make(chan struct{}),
		closed:    make(chan struct{}),
	}
	inst.accel.Name = recordedAccel(id.RunDir)
	// The agent socket exists only for VMs started with the agent channel.
	if fi, err := os.Stat(agentPath(id.RunDir)); err == nil && fi.Mode()&fs.ModeSocket != 0 {
		inst.hasAgent = true
	}
	go inst.watchPidfd()
	c, err := dialQMP(ctx, qmpPath(id.RunDir), inst.exited)
	if err != nil {
		close(inst.closed)
		pf.Close()
		<-inst.watchDone
		if errors.Is(err, context.DeadlineExceeded) {
			// QEMU greets one QMP client at a time.
			err = fmt.Errorf("%w (is another handle on this VM still open?)", err)
		}
		return nil, fmt.Errorf("attach to pid %d: %w", id.PID, err)
	}
	inst.qmp = c
	go inst.watchEvents()
	return inst, nil
}

// openPidfd opens a pidfd for id and checks, after opening, that the pid
// still has the recorded start time: from then on the pidfd refers to that
// process whatever happens to the pid.
func openPidfd(id hypervisor.Identity) (*os.File, error) {
	fd, err := pidfdOpen(id.PID)
	if err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return nil, hypervisor.ErrGone
		}
		return nil, fmt.Errorf("open pidfd: %w", err)
	}
	f := os.NewFile(uintptr(fd), "pidfd:"+strconv.Itoa(id.PID))
	if !proc.Alive(id.PID, id.StartTime) {
		f.Close()
		return nil, hypervisor.ErrGone
	}
	return f, nil
}

// instance implements hypervisor.Instance.
type instance struct {
	d        *Driver
	log      *slog.Logger
	id       hypervisor.Identity
	runDir   string
	hasAgent bool
	accel    hypervisor.Accel
	qmp      *qmp.Client

	cmd     *exec.Cmd // set when we are QEMU's parent
	waitErr error     // cmd.Wait's result, valid once exited is closed
	pidfd   *os.File  // set when attached
	// watchDone is closed when the pidfd watcher has returned (attached).
	watchDone chan struct{}

	exited  chan struct{} // closed once the process is gone
	drained chan struct{} // closed once all QMP events were seen
	closed  chan struct{}

	mu        sync.Mutex
	shutdown  *qmp.ShutdownData
	agent     *agentChannel
	closeOnce sync.Once
}

var _ hypervisor.Instance = (*instance)(nil)

func (in *instance) Identity() hypervisor.Identity { return in.id }

// Accel implements hypervisor.Instance. A re-adopted VMM's accelerator is
// read back from the argv its start recorded.
func (in *instance) Accel() hypervisor.Accel { return in.accel }

// watchEvents records the SHUTDOWN event (why QEMU is exiting) until the QMP
// connection ends.
func (in *instance) watchEvents() {
	defer close(in.drained)
	for ev := range in.qmp.Events() {
		in.log.Debug("qmp event", "event", ev.Name, "data", string(ev.Data))
		if ev.Name != "SHUTDOWN" {
			continue
		}
		d, err := qmp.ParseShutdown(ev)
		if err != nil {
			in.log.Warn("bad SHUTDOWN event", "err", err)
			continue
		}
		in.mu.Lock()
		in.shutdown = &d
		in.mu.Unlock()
	}
}

// watchPidfd closes exited when the attached process ends: a pidfd becomes
// readable when its process exits, and the runtime poller waits for that
// without holding a thread. Where the poller cannot take the pidfd, /proc is
// polled instead. Closing the instance ends the watch (watchDone) without
// closing exited.
func (in *instance) watchPidfd() {
	defer close(in.watchDone)
	rc, err := in.pidfd.SyscallConn()
	if err == nil {
		err = rc.Read(func(fd uintptr) bool { return pidfdExited(int(fd)) })
		if err == nil {
			close(in.exited)
			return
		}
	}
	for proc.Alive(in.id.PID, in.id.StartTime) {
		select {
		case <-in.closed:
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	close(in.exited)
}

func (in *instance) gone() bool {
	select {
	case <-in.exited:
		return true
	default:
		return false
	}
}

// State implements hypervisor.Instance.
func (in *instance) State(ctx context.Context) (hypervisor.RunState, error) {
	if in.gone() {
		return hypervisor.StateExited, nil
	}
	s, err := in.qmp.QueryStatus(ctx)
	if err != nil {
		if errors.Is(err, qmp.ErrClosed) {
			select {
			case <-in.exited:
				return hypervisor.StateExited, nil
			case <-time.After(time.Second):
			}
		}
		return "", fmt.Errorf("query vm state: %w", err)
	}
	switch s.Status {
	case "running":
		return hypervisor.StateRunning, nil
	case "shutdown":
		return hypervisor.StateShutdown, nil
	default: // paused, prelaunch, suspended, inmigrate, ...
		return hypervisor.StatePaused, nil
	}
}

// Stop implements hypervisor.Instance: the guest agent's poweroff for guests
// that have one (a minimal guest ignores ACPI), else the ACPI power button;
// after timeout QMP quit, and after that SIGKILL.
func (in *instance) Stop(ctx context.Context, timeout time.Duration) error {
	defer func() {
		if in.gone() {
			removeSockets(in.runDir)
		}
	}()
	if in.gone() {
		return nil
	}
	asked := false
	if in.hasAgent {
		actx, cancel := context.WithTimeout(ctx, min(timeout, 2*time.Second))
		err := in.guest().Send(actx, []byte(`{"type":"poweroff"}`))
		cancel()
		if err == nil {
			asked = true
			in.log.Debug("asked guest agent to power off")
		} else {
			in.log.Warn("guest agent poweroff failed, trying ACPI", "err", err)
		}
	}
	if !asked {
		if err := in.qmp.SystemPowerdown(ctx); err != nil && !errors.Is(err, qmp.ErrClosed) {
			in.log.Warn("system_powerdown failed", "err", err)
		}
	}
	if in.waitExit(ctx, timeout) {
		return nil
	}
	in.log.Info("guest did not power off in time, quitting qemu", "timeout", timeout)
	if err := in.qmp.Quit(ctx); err != nil {
		in.log.Warn("qmp quit failed", "err", err)
	}
	if in.waitExit(ctx, 5*time.Second) {
		return nil
	}
	in.log.Warn("qemu did not quit, killing it")
	if err := in.Kill(); err != nil {
		return fmt.Errorf("stop vm: %w", err)
	}
	if in.waitExit(ctx, 10*time.Second) {
		return nil
	}
	if ctx.Err() != nil {
		return fmt.Errorf("stop vm: %w", ctx.Err())
	}
	return fmt.Errorf("stop vm: pid %d still there after SIGKILL", in.id.PID)
}

func (in *instance) waitExit(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-in.exited:
		return true
	case <-t.C:
		return false
	case <-ctx.Done():
		return false
	}
}

// Kill implements hypervisor.Instance. Both paths are immune to pid reuse:
// an unreaped child keeps its pid, and a pidfd names one process.
func (in *instance) Kill() error {
	if in.gone() {
		return nil
	}
	var err error
	if in.cmd != nil {
		err = in.cmd.Process.Signal(syscall.SIGKILL)
	} else {
		err = pidfdSendSignal(in.pidfd, syscall.SIGKILL)
	}
	if err != nil && !errors.Is(err, os.ErrProcessDone) && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("kill vmm pid %d: %w", in.id.PID, err)
	}
	return nil
}

// Wait implements hypervisor.Instance.
func (in *instance) Wait(ctx context.Context) (hypervisor.ExitStatus, error) {
	select {
	case <-in.exited:
	case <-ctx.Done():
		return hypervisor.ExitStatus{}, fmt.Errorf("wait for vmm: %w", ctx.Err())
	}
	// QEMU's exit closes the QMP connection; its last events (SHUTDOWN)
	// are read before that, so wait for them briefly.
	select {
	case <-in.drained:
	case <-time.After(2 * time.Second):
	case <-ctx.Done():
	}
	var st hypervisor.ExitStatus
	in.mu.Lock()
	if in.shutdown != nil {
		st.GuestShutdown = in.shutdown.Guest && in.shutdown.Reason == "guest-shutdown"
	}
	in.mu.Unlock()
	if in.cmd == nil || in.cmd.ProcessState == nil {
		st.Code = -1
		return st, nil // Known stays false: not our child
	}
	st.Known = true
	ws, ok := in.cmd.ProcessState.Sys().(syscall.WaitStatus)
	switch {
	case ok && ws.Signaled():
		st.Code = -1
		st.Signal = ws.Signal()
	default:
		st.Code = in.cmd.ProcessState.ExitCode()
	}
	return st, nil
}

// Guest implements hypervisor.Instance.
func (in *instance) Guest() hypervisor.GuestChannel {
	if !in.hasAgent {
		return nil
	}
	return in.guest()
}

func (in *instance) guest() *agentChannel {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.agent == nil {
		in.agent = newAgentChannel(agentPath(in.runDir), in.exited, in.closed, in.log)
	}
	return in.agent
}

// Close implements hypervisor.Instance: it drops this process's QMP and
// agent connections and leaves the VMM running. For a VMM this process
// started, Wait still reports its exit after Close (the child is reaped
// either way); State, Stop and Guest need an open handle.
func (in *instance) Close() error {
	in.closeOnce.Do(func() {
		close(in.closed)
		if in.qmp != nil {
			in.qmp.Close()
		}
		in.mu.Lock()
		a := in.agent
		in.mu.Unlock()
		if a != nil {
			a.close()
		}
		if in.pidfd != nil {
			in.pidfd.Close()
			<-in.watchDone
		}
		if in.gone() {
			removeSockets(in.runDir)
		}
	})
	return nil
}

// agentChannel is the host end of the virtio-serial agent port. It connects
// in the background (QEMU serves the socket from startup; the guest speaks
// once its init runs) and delivers each line the guest sends.
type agentChannel struct {
	path   string
	log    *slog.Logger
	events chan []byte
	ready  chan struct{} // closed once connected
	stop   chan struct{}
	once   sync.Once
	wmu    sync.Mutex
	conn   net.Conn // set before ready closes
	done   chan struct{}
}

func newAgentChannel(path string, exited, closed <-chan struct{}, lg *slog.Logger) *agentChannel {
	a := &agentChannel{
		path:   path,
		log:    lg,
		events: make(chan []byte, 64),
		ready:  make(chan struct{}),
		stop:   make(chan struct{}),
		done:   make(chan struct{}),
	}
	go func() {
		select {
		case <-exited:
		case <-closed:
		case <-a.done:
		}
		a.close()
	}()
	go a.run()
	return a
}

func (a *agentChannel) close() { a.once.Do(func() { close(a.stop) }) }

func (a *agentChannel) run() {
	defer close(a.done)
	defer close(a.events)
	var conn net.Conn
	for {
		c, err := net.Dial("unix", a.path)
		if err == nil {
			conn = c
			break
		}
		select {
		case <-a.stop:
			return
		case <-time.After(10 * time.Millisecond):
		}
	}
	a.conn = conn
	// Ask for the guest's status. The guest also sends a hello by itself
	// when it sees the host connect, but a disconnect followed quickly by a
	// reconnect (a handle closed, another attached) can pass unseen by a
	// guest blocked in read(): the port is "connected" again before the
	// reader wakes. An explicit request is never missed. Guests answer any
	// host hello with their own.
	if _, err := conn.Write([]byte(`{"type":"hello"}` + "\n")); err != nil {
		a.log.Debug("guest hello request failed", "err", err)
	}
	close(a.ready)
	go func() {
		<-a.stop
		conn.Close()
	}()
	// Lines are JSON messages, short except for future exec output; a
	// generous limit keeps one bad line from eating memory.
	r := newLineReader(conn, 1<<20)
	for {
		line, err := r.next()
		if err != nil {
			if !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
				a.log.Warn("guest agent channel read failed", "err", err)
			}
			return
		}
		if len(line) == 0 {
			continue
		}
		select {
		case a.events <- line:
		case <-a.stop:
			return
		}
	}
}

// Events implements hypervisor.GuestChannel.
func (a *agentChannel) Events() <-chan []byte { return a.events }

// Send implements hypervisor.GuestChannel: msg must be one JSON value; it is
// compacted onto one line.
func (a *agentChannel) Send(ctx context.Context, msg []byte) error {
	var buf bytes.Buffer
	if err := json.Compact(&buf, msg); err != nil {
		return fmt.Errorf("send to guest: message is not JSON: %w", err)
	}
	buf.WriteByte('\n')
	select {
	case <-a.ready:
	case <-a.stop:
		return errors.New("send to guest: channel closed")
	case <-ctx.Done():
		return fmt.Errorf("send to guest: connect: %w", ctx.Err())
	}
	a.wmu.Lock()
	defer a.wmu.Unlock()
	if dl, ok := ctx.Deadline(); ok {
		a.conn.SetWriteDeadline(dl)
		defer a.conn.SetWriteDeadline(time.Time{})
	}
	if _, err := a.conn.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("send to guest: %w", err)
	}
	return nil
}
