//go:build linux

package guestinit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/internal/filenames"
)

// Timeouts of the bring-up and shutdown steps.
const (
	deviceWait   = 5 * time.Second // for the config disk, agent port, NICs
	stopGrace    = 5 * time.Second // SIGTERM to SIGKILL for the workload
	killAllGrace = 500 * time.Millisecond
	flushWait    = time.Second
)

// Init is the running guest init.
type Init struct {
	log     *slog.Logger
	start   time.Time
	console *os.File
	reaper  *Reaper
	agent   atomic.Pointer[Agent]
	modules *ModuleLoader
	level   slog.LevelVar

	mu       sync.Mutex
	status   guestproto.Status
	cfg      *guestproto.Config
	workPID  int
	mounted  []string // mount points to unmount at power-off, in mount order
	stopping bool
	execs    map[string]*execSession // running execs by the host's ID
	root     *imageRoot              // an image VM's root; nil: the init's own

	workDone chan struct{}
	release  chan struct{} // closed by the host's TypeStart (HoldWorkload)
	released sync.Once
	unpark   chan guestproto.Unpark // the host's TypeUnpark, at the park point
	// restored: unparked from a template (guestproto.Unpark.Restored).
	restored bool
	stopOnce sync.Once
}

// Main is PID 1's whole life; it never returns. Failures are reported and
// the VM idles (or powers off when asked), because an init that exits makes
// the kernel panic.
func Main() {
	console := os.Stdout
	if f, err := os.OpenFile("/dev/console", os.O_WRONLY, 0); err == nil {
		console = f
	}
	in := &Init{
		start:    time.Now(),
		console:  console,
		workDone: make(chan struct{}),
		release:  make(chan struct{}),
		unpark:   make(chan guestproto.Unpark, 1),
	}
	in.level.Set(slog.LevelInfo)
	in.log = slog.New(slog.NewTextHandler(console, &slog.HandlerOptions{
		Level: &in.level,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			if a.Key == slog.TimeKey {
				return slog.String("t", fmt.Sprintf("%.3fs", time.Since(in.start).Seconds()))
			}
			return a
		},
	})).With("src", "stack-init")
	defer func() {
		if r := recover(); r != nil {
			in.fail(fmt.Errorf("init panicked: %v", r))
			in.idle()
		}
	}()
	in.run()
	in.idle()
}

func (in *Init) run() {
	if err := mountBase(); err != nil {
		in.fail(err)
	}
	// stack.debug on the kernel command line turns on step timings.
	cmdline, _ := os.ReadFile("/proc/cmdline")
	if hasWord(string(cmdline), "stack.debug") {
		in.level.Set(slog.LevelDebug)
	}
	// The kernel's uptime when the init got going, to tell kernel boot time
	// from init time in the console log.
	if b, err := os.ReadFile("/proc/uptime"); err == nil {
		in.log.Info("stack-init started", "kernel_uptime", strings.Fields(string(b))[0])
	}
	os.Setenv("PATH", DefaultPath)
	in.reaper = StartReaper()
	in.handleSignals()

	ml, err := NewModuleLoader(filenames.GuestModuleList)
	if err != nil {
		in.log.Warn("modules", "err", err)
	}
	in.modules = ml
	in.loadModules("boot")
	if hasPCI() {
		in.loadModules("pci")
	}
	in.log.Info("modules loaded")

	// The agent comes up in the background: bring-up does not wait for
	// it, and whatever it missed, its first hello reports.
	in.goSafe("agent", in.startAgent)

	var unparked guestproto.Unpark
	if hasWord(string(cmdline), guestproto.ParkArg) {
		unparked = in.park()
	}
	var cfg *guestproto.Config
	if len(unparked.Config) > 0 {
		cfg, err = ParseConfig(unparked.Config)
	} else {
		cfg, err = in.readConfig()
	}
	if err != nil {
		in.fail(err)
		return
	}
	in.log.Debug("config read")
	in.mu.Lock()
	in.cfg = cfg
	in.mu.Unlock()
	if err := in.bringUp(cfg); err != nil {
		in.fail(err)
		return
	}
	if len(cfg.Command) == 0 {
		in.setReady()
		in.log.Info("ready; no command, idling")
		return
	}
	if cfg.HoldWorkload {
		in.mu.Lock()
		in.status.Held = true
		st := in.status
		in.mu.Unlock()
		in.log.Info("bring-up done; the workload waits for the host's start")
		in.send(guestproto.Message{Type: guestproto.TypeHello, Status: &st})
		<-in.release
		in.mu.Lock()
		in.status.Held = false
		stopping := in.stopping
		in.mu.Unlock()
		if stopping {
			return
		}
	}
	if err := in.startWorkload(cfg); err != nil {
		in.fail(err)
		return
	}
}

// bootSeconds is the time since the kernel booted (CLOCK_BOOTTIME), as
// "1.234": with -icount it measures guest work independent of host load.
func bootSeconds() string {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return "?"
	}
	return fmt.Sprintf("%.3f", float64(ts.Nano())/1e9)
}

func hasWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}

func (in *Init) startAgent() {
	port, err := waitFor(deviceWait, func() (string, error) { return FindPort("/sys/class/virtio-ports", guestproto.AgentPort) })
	if err != nil {
		in.log.Warn("no agent port; running without host reports", "err", err)
		return
	}
	a, err := NewAgent(port, in.currentStatus, in.onMessage, func(f string, args ...any) { in.log.Warn(fmt.Sprintf(f, args...)) })
	if err != nil {
		in.log.Warn("agent", "err", err)
		return
	}
	in.log.Debug("agent port found", "port", port)
	in.agent.Store(a)
	if err := a.Run(); err != nil {
		in.log.Error("agent port failed", "err", err)
	}
}

func (in *Init) loadModules(group string) {
	for _, e := range in.modules.Load(group) {
		in.log.Warn("load module", "group", group, "err", e)
	}
}

// hasPCI reports whether the machine has PCI devices (q35 does; microvm's
// devices are all virtio-mmio).
func hasPCI() bool {
	ents, err := os.ReadDir("/sys/bus/pci/devices")
	return err == nil && len(ents) > 0
}

// park waits at the park point (see guestproto.ParkArg) for the host's
// TypeUnpark, then makes the VM its own: the host's clock, fresh entropy,
// and, when it was restored from a template, no cached block of a disk
// that belongs to another VM.
func (in *Init) park() guestproto.Unpark {
	in.mu.Lock()
	in.status.Parked = true
	st := in.status
	in.mu.Unlock()
	in.log.Info("parked; waiting for the host", "uptime", bootSeconds())
	in.send(guestproto.Message{Type: guestproto.TypeHello, Status: &st})
	u := <-in.unpark
	in.mu.Lock()
	in.status.Parked = false
	in.restored = u.Restored
	in.mu.Unlock()
	in.takeHost(u.Time, u.Entropy)
	if u.Restored {
		for _, err := range FlushBlockCaches("/sys/block") {
			in.log.Warn("flush disk cache", "err", err)
		}
	}
	in.log.Info("unparked", "restored", u.Restored)
	return u
}

func (in *Init) readConfig() (*guestproto.Config, error) {
	dev, err := waitFor(deviceWait, func() (string, error) { return FindDiskBySerial("/sys/block", guestproto.ConfigDiskSerial) })
	if err != nil {
		return nil, fmt.Errorf("find config disk: %w", err)
	}
	f, err := os.Open(dev)
	if err != nil {
		return nil, fmt.Errorf("open config disk: %w", err)
	}
	defer f.Close()
	data, err := readUntilNUL(f, MaxConfigSize)
	if err != nil {
		return nil, fmt.Errorf("read config disk: %w", err)
	}
	return ParseConfig(data)
}

func (in *Init) bringUp(cfg *guestproto.Config) error {
	if cfg.Hostname != "" {
		if err := unix.Sethostname([]byte(cfg.Hostname)); err != nil {
			return fmt.Errorf("set hostname: %w", err)
		}
	}
	if cfg.MachineID != "" {
		if err := os.WriteFile("/etc/machine-id", []byte(cfg.MachineID+"\n"), 0o444); err != nil {
			return fmt.Errorf("write /etc/machine-id: %w", err)
		}
	}
	hosts := RenderHosts(cfg)
	if err := os.WriteFile("/etc/hosts", hosts, 0o644); err != nil {
		return fmt.Errorf("write /etc/hosts: %w", err)
	}
	in.log.Debug("hostname and hosts set")
	in.mu.Lock()
	byPosition := in.restored
	in.mu.Unlock()
	addrs, dns, err := configureNetwork(context.Background(), cfg.NICs, byPosition, in.log)
	if err != nil {
		return err
	}
	if len(cfg.DNS) > 0 {
		dns = cfg.DNS
	}
	resolv := RenderResolvConf(dns, cfg.Search)
	if err := os.WriteFile("/etc/resolv.conf", resolv, 0o644); err != nil {
		return fmt.Errorf("write /etc/resolv.conf: %w", err)
	}
	in.mu.Lock()
	in.status.Addresses = addrs
	in.mu.Unlock()
	if cfg.Root != nil {
		in.loadModules("fs-overlay")
		root, err := mountRoot(cfg.Root, in.addMounted)
		if err != nil {
			return err
		}
		if err := root.writeEtc(map[string][]byte{"hosts": hosts, "resolv.conf": resolv, "hostname": []byte(cfg.Hostname + "\n")}); err != nil {
			return err
		}
		in.mu.Lock()
		in.root = root
		in.mu.Unlock()
		in.log.Debug("image root mounted")
	}
	for _, m := range cfg.Mounts {
		switch {
		case m.FSType != "":
			in.loadModules("fs-" + m.FSType)
		case strings.HasPrefix(m.Source, "share:"):
			in.loadModules("fs-virtiofs")
			in.loadModules("fs-9p")
		}
		if cfg.Root != nil {
			// Targets are paths inside the image's root.
			target, err := resolveInRoot(in.root.dir, m.Target, true)
			if err != nil {
				return fmt.Errorf("mount %s: %w", m.Target, err)
			}
			m.Target = target
		}
		if err := mountOne(m); err != nil {
			return err
		}
		in.addMounted(m.Target)
	}
	in.log.Info("configured", "hostname", cfg.Hostname, "addresses", addrs, "mounts", len(cfg.Mounts))
	return nil
}

// addMounted records a mount point for power-off to unmount.
func (in *Init) addMounted(target string) {
	in.mu.Lock()
	in.mounted = append(in.mounted, target)
	in.mu.Unlock()
}

func (in *Init) startWorkload(cfg *guestproto.Config) error {
	in.mu.Lock()
	root := in.root
	in.mu.Unlock()
	vars := maps.Clone(cfg.Env)
	if vars == nil {
		vars = map[string]string{}
	}
	if root != nil {
		root.setHome(vars)
	}
	cmd, err := command(root, cfg.Command, WorkloadEnv(vars))
	if err != nil {
		return fmt.Errorf("start workload %q: %w", cfg.Command[0], err)
	}
	cmd.Stdout = in.console
	cmd.Stderr = in.console
	if root != nil {
		root.enter(cmd, "")
	}
	pid, statusCh, err := in.reaper.Start(cmd)
	if err != nil {
		return fmt.Errorf("start workload %q: %w", cfg.Command[0], err)
	}
	in.mu.Lock()
	in.workPID = pid
	in.mu.Unlock()
	in.setReady()
	var command any = cfg.Command
	if cfg.SensitiveCommand {
		command = "(sensitive value)"
	}
	in.log.Info("workload started", "pid", pid, "command", command)
	if ports := uniquePorts(cfg.WatchPorts); len(ports) > 0 {
		in.goSafe("port watch", func() { in.watchPorts(ports) })
	}
	in.goSafe("workload waiter", func() {
		ws := <-statusCh
		code := ExitCode(ws.Exited(), ws.ExitStatus(), ws.Signaled(), int(ws.Signal()))
		in.mu.Lock()
		in.workPID = 0
		in.status.Exited = true
		in.status.ExitCode = code
		st := in.status
		stopping := in.stopping
		in.mu.Unlock()
		in.log.Info("workload exited", "code", code)
		// Queue the exit report before poweroff (waiting on workDone)
		// flushes the agent, so that the report is not lost.
		in.send(guestproto.Message{Type: guestproto.TypeExit, Status: &st})
		close(in.workDone)
		if cfg.OneShot && !stopping {
			in.poweroff("one-shot workload exited")
		}
	})
	return nil
}

// goSafe runs f in a goroutine that reports a panic instead of crashing:
// PID 1 exiting panics the kernel.
func (in *Init) goSafe(what string, f func()) {
	go func() {
		defer func() {
			if r := recover(); r != nil {
				in.fail(fmt.Errorf("init panicked in %s: %v", what, r))
			}
		}()
		f()
	}()
}

func (in *Init) setReady() {
	in.mu.Lock()
	in.status.Ready = true
	st := in.status
	in.mu.Unlock()
	// The report goes first: the console line takes milliseconds to write
	// through the emulated UART, and the host (and dependents) wait for
	// the report, not the line.
	in.send(guestproto.Message{Type: guestproto.TypeReady, Status: &st})
	in.log.Info("ready", "addresses", st.Addresses, "uptime", bootSeconds())
	// What no bring-up step needs loads after the ready report.
	in.goSafe("late modules", func() { in.loadModules("late") })
}

func (in *Init) currentStatus() guestproto.Status {
	total, avail := memInfo("/proc/meminfo")
	in.mu.Lock()
	defer in.mu.Unlock()
	st := in.status
	st.MemTotal, st.MemAvailable = total, avail
	if st.Addresses != nil {
		m := make(map[string]string, len(st.Addresses))
		for k, v := range st.Addresses {
			m[k] = v
		}
		st.Addresses = m
	}
	return st
}

func (in *Init) send(m guestproto.Message) {
	if a := in.agent.Load(); a != nil {
		a.Send(m)
	}
}

// fail reports a bring-up failure on the console and to the host.
func (in *Init) fail(err error) {
	in.log.Error("bring-up failed", "err", err)
	in.mu.Lock()
	if in.status.Error == "" {
		in.status.Error = err.Error()
	}
	in.mu.Unlock()
	in.send(guestproto.Message{Type: guestproto.TypeError, Error: err.Error()})
}

func (in *Init) onMessage(m guestproto.Message) {
	switch m.Type {
	case guestproto.TypePoweroff:
		in.goSafe("poweroff", func() { in.poweroff("host asked") })
	case guestproto.TypeExec:
		in.startExec(m)
	case guestproto.TypeExecInput:
		in.execInput(m)
	case guestproto.TypeStart:
		in.released.Do(func() { close(in.release) })
	case guestproto.TypeResumed:
		var r guestproto.Resumed
		if err := json.Unmarshal(m.Body, &r); err != nil {
			in.log.Warn("agent: bad resumed", "err", err)
			return
		}
		in.takeHost(r.Time, r.Entropy)
		in.log.Info("resumed from a snapshot; clock stepped", "time", time.Unix(0, r.Time).UTC().Format(time.RFC3339Nano))
	case guestproto.TypeUnpark:
		var u guestproto.Unpark
		if err := json.Unmarshal(m.Body, &u); err != nil {
			in.log.Warn("agent: bad unpark", "err", err)
			return
		}
		select {
		case in.unpark <- u:
		default: // unparked already
		}
	default:
		in.log.Warn("agent: ignoring message", "type", m.Type)
	}
}

func (in *Init) handleSignals() {
	// busybox poweroff/halt/reboot signal PID 1 (USR2, USR1, TERM); the
	// kernel sends SIGINT for ctrl-alt-del and SIGPWR on ACPI power events.
	// All of them power off: restarting a VM is the host's business.
	ch := make(chan os.Signal, 4)
	signal.Notify(ch, unix.SIGTERM, unix.SIGINT, unix.SIGUSR1, unix.SIGUSR2, unix.SIGPWR)
	go func() {
		for s := range ch {
			in.goSafe("poweroff", func() { in.poweroff("signal " + s.String()) })
		}
	}()
}

// idle blocks forever; power-off happens from other goroutines.
func (in *Init) idle() {
	select {}
}

// poweroff stops the workload (SIGTERM, then SIGKILL after stopGrace),
// ends every other process, flushes the agent, syncs and unmounts, and
// powers the machine off. It runs once.
func (in *Init) poweroff(reason string) {
	in.stopOnce.Do(func() {
		in.log.Info("powering off", "reason", reason)
		in.mu.Lock()
		in.stopping = true
		pid := in.workPID
		in.mu.Unlock()
		if pid > 0 {
			_ = unix.Kill(-pid, unix.SIGTERM)
			_ = unix.Kill(pid, unix.SIGTERM)
			select {
			case <-in.workDone:
			case <-time.After(stopGrace):
				in.log.Warn("workload ignored SIGTERM; killing it")
				_ = unix.Kill(-pid, unix.SIGKILL)
				_ = unix.Kill(pid, unix.SIGKILL)
				select {
				case <-in.workDone:
				case <-time.After(time.Second):
				}
			}
		}
		if a := in.agent.Load(); a != nil {
			a.Flush(flushWait)
		}
		// kill(-1) reaches every process but the init; ESRCH means there
		// was none left, so no grace period is needed.
		if unix.Kill(-1, unix.SIGTERM) == nil {
			time.Sleep(killAllGrace)
			_ = unix.Kill(-1, unix.SIGKILL)
		}
		unix.Sync()
		in.mu.Lock()
		mounted := append([]string(nil), in.mounted...)
		in.mu.Unlock()
		for i := len(mounted) - 1; i >= 0; i-- {
			if err := unix.Unmount(mounted[i], 0); err != nil {
				in.log.Warn("unmount", "target", mounted[i], "err", err)
				_ = unix.Unmount(mounted[i], unix.MNT_DETACH)
			}
		}
		unix.Sync()
		in.log.Info("power off")
		if err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF); err != nil {
			in.log.Error("power off failed", "err", err)
		}
	})
}

// mountBase mounts the pseudo filesystems every guest needs.
func mountBase() error {
	type mnt struct {
		src, target, fstype string
		flags               uintptr
		data                string
	}
	var errs []error
	for _, m := range []mnt{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"devpts", "/dev/pts", "devpts", unix.MS_NOSUID | unix.MS_NOEXEC, "gid=5,mode=0620,ptmxmode=0666"},
		{"tmpfs", "/dev/shm", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
		{"tmpfs", "/run", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	} {
		if err := os.MkdirAll(m.target, 0o755); err != nil {
			errs = append(errs, fmt.Errorf("create %s: %w", m.target, err))
			continue
		}
		if err := unix.Mount(m.src, m.target, m.fstype, m.flags, m.data); err != nil && !errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("mount %s: %w", m.target, err))
		}
	}
	return errors.Join(errs...)
}

// ModuleLoader loads the image's kernel modules by group (see
// guestimage.DefaultModules for the groups), each file once.
type ModuleLoader struct {
	mu      sync.Mutex
	entries []ModuleEntry
	loaded  map[string]bool
	groups  map[string]bool
}

// NewModuleLoader reads the module list; a missing list means no modules
// (a custom initramfs).
func NewModuleLoader(listPath string) (*ModuleLoader, error) {
	l := &ModuleLoader{loaded: map[string]bool{}, groups: map[string]bool{}}
	data, err := os.ReadFile(listPath)
	if os.IsNotExist(err) {
		return l, nil
	}
	if err != nil {
		return l, fmt.Errorf("read module list: %w", err)
	}
	l.entries = ParseModuleList(data)
	return l, nil
}

// Load loads group's modules in order, once per group.
func (l *ModuleLoader) Load(group string) []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.groups[group] {
		return nil
	}
	l.groups[group] = true
	var paths []string
	for _, e := range l.entries {
		if e.Group == group && !l.loaded[e.Path] {
			paths = append(paths, e.Path)
			l.loaded[e.Path] = true
		}
	}
	return LoadModules(paths)
}

// LoadModules loads the modules at paths in order with finit_module; a
// module that is already loaded is fine. It returns one error per failure
// and carries on, so one bad module does not cost the rest.
func LoadModules(paths []string) []error {
	var errs []error
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			errs = append(errs, fmt.Errorf("open module: %w", err))
			continue
		}
		err = unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			errs = append(errs, fmt.Errorf("load module %s: %w", filepath.Base(p), err))
		}
	}
	return errs
}

// mountOne mounts a disk (by serial) or a shared directory.
func mountOne(m guestproto.Mount) error {
	kind, name, err := ParseMountSource(m.Source)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(m.Target, 0o755); err != nil {
		return fmt.Errorf("create mount point %s: %w", m.Target, err)
	}
	var flags uintptr
	if m.ReadOnly {
		flags |= unix.MS_RDONLY
	}
	switch kind {
	case "disk":
		dev, err := waitFor(deviceWait, func() (string, error) { return FindDiskBySerial("/sys/block", name) })
		if err != nil {
			return fmt.Errorf("mount %s: %w", m.Target, err)
		}
		fstype := m.FSType
		if fstype == "" {
			fstype = "ext4"
		}
		if strings.HasPrefix(fstype, "ext") {
			f, err := os.Open(dev)
			if err != nil {
				return fmt.Errorf("mount %s: open %s: %w", m.Target, dev, err)
			}
			ok, err := HasExtFilesystem(f)
			f.Close()
			if err != nil {
				return fmt.Errorf("mount %s: check %s: %w", m.Target, dev, err)
			}
			if !ok {
				// Volumes are formatted on the host before boot
				// (disks.EnsureVolume); the guest never runs mkfs.
				return fmt.Errorf("mount %s: disk %s (%s) has no ext filesystem; it should have been formatted on the host before boot", m.Target, name, dev)
			}
		}
		if err := unix.Mount(dev, m.Target, fstype, flags, ""); err != nil {
			return fmt.Errorf("mount %s on %s: %w", dev, m.Target, err)
		}
	case "share":
		fstypes := []string{m.FSType}
		if m.FSType == "" {
			fstypes = []string{"virtiofs", "9p"}
		}
		var errs []error
		for _, t := range fstypes {
			data := ""
			if t == "9p" {
				data = guestproto.NinePMountOptions
			}
			err := unix.Mount(name, m.Target, t, flags, data)
			if err == nil {
				return nil
			}
			errs = append(errs, fmt.Errorf("%s: %w", t, err))
		}
		return fmt.Errorf("mount share %s on %s: %w", name, m.Target, errors.Join(errs...))
	}
	return nil
}

// waitFor retries f until it succeeds or timeout passes (devices appear
// asynchronously after their driver loads).
func waitFor(timeout time.Duration, f func() (string, error)) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		s, err := f()
		if err == nil || time.Now().After(deadline) {
			return s, err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// readUntilNUL reads 4 KiB blocks until a NUL byte (the end of the
// config's JSON), EOF, or max bytes.
func readUntilNUL(r io.Reader, max int) ([]byte, error) {
	var out []byte
	buf := make([]byte, 4096)
	for len(out) < max {
		n, err := io.ReadFull(r, buf)
		out = append(out, buf[:n]...)
		if bytes.IndexByte(buf[:n], 0) >= 0 || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
			return out, nil
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// command makes the command for argv with env, in the working directory
// /, in a session of its own. A name without a slash is looked up in
// env's PATH (not the init's), in root's file system when root is set.
func command(root *imageRoot, argv []string, env []string) (*exec.Cmd, error) {
	path := argv[0]
	if !strings.Contains(path, "/") {
		pathList := DefaultPath
		for _, kv := range env {
			if p, ok := strings.CutPrefix(kv, "PATH="); ok {
				pathList = p
			}
		}
		rootDir := ""
		if root != nil {
			rootDir = root.dir
		}
		lp, err := lookPath(rootDir, path, pathList)
		if err != nil {
			return nil, fmt.Errorf("%s: command not found", path)
		}
		path = lp
	}
	// Not exec.Command: it would look the name up in the init's PATH.
	return &exec.Cmd{
		Path:        path,
		Args:        slices.Clone(argv),
		Env:         env,
		Dir:         "/",
		SysProcAttr: &syscall.SysProcAttr{Setsid: true},
	}, nil
}

// takeHost steps the clock to the host's (Unix nanoseconds; 0: left as
// is) and reseeds the random generator with the host's entropy: a guest
// restored from saved state has the saved moment's clock and generator.
func (in *Init) takeHost(now int64, entropy []byte) {
	if now != 0 {
		ts := unix.NsecToTimespec(now)
		if err := unix.ClockSettime(unix.CLOCK_REALTIME, &ts); err != nil {
			in.log.Warn("set the clock", "err", err)
		}
	}
	if err := reseed(entropy); err != nil {
		in.log.Warn("reseed the random generator", "err", err)
	}
}

// reseed mixes the host's entropy into the kernel's pool and reseeds its
// random generator at once. A guest restored from a saved state has the
// generator of the VM that was saved: the VM generation ID device makes
// the kernel reseed too, but through an ACPI notification that a workload
// started right after can outrun (seen: two clones of one template read
// the same bytes from /dev/urandom). RNDRESEEDCRNG closes that window.
func reseed(entropy []byte) error {
	f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	if len(entropy) > 0 {
		if _, err := f.Write(entropy); err != nil {
			return err
		}
	}
	return unix.IoctlSetInt(int(f.Fd()), unix.RNDRESEEDCRNG, 0)
}
