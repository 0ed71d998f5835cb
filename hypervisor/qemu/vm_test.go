package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/stackvm/stack/guestimage"
	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/console"
	"github.com/stackvm/stack/hypervisor/proc"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/netaddr"
	"github.com/stackvm/stack/internal/testutil"
)

// attachEnv makes the test binary, re-executed by TestVMLifecycle, act as a
// second process that re-adopts a VM from its identity (JSON in the value).
const attachEnv = "STACK_QEMU_TEST_ATTACH"

func TestMain(m *testing.M) {
	if v := os.Getenv(attachEnv); v != "" {
		os.Exit(attachHelper(v))
	}
	goleak.VerifyTestMain(m)
}

// attachHelper re-adopts the VM, checks that it runs and that the guest
// greets it, prints "ATTACH-OK" and leaves the VM running.
func attachHelper(idJSON string) int {
	var id hypervisor.Identity
	if err := json.Unmarshal([]byte(idJSON), &id); err != nil {
		fmt.Println("bad identity:", err)
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	inst, err := New(Options{}).Attach(ctx, id)
	if err != nil {
		fmt.Println("attach:", err)
		return 1
	}
	defer inst.Close()
	st, err := inst.State(ctx)
	if err != nil || st != hypervisor.StateRunning {
		fmt.Println("state:", st, err)
		return 1
	}
	if err := expectHello(ctx, inst.Guest()); err != nil {
		fmt.Println("hello:", err)
		return 1
	}
	fmt.Println("ATTACH-OK")
	return 0
}

func needVMs(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a VM; skipped with -short")
	}
	if _, err := exec.LookPath(DefaultBinary); err != nil {
		t.Fatalf("%s not found (install qemu-system-x86): %v", DefaultBinary, err)
	}
}

// shortRunDir makes a private runtime directory with a short path: socket
// paths are limited to 107 bytes and t.TempDir's can be long.
func shortRunDir(t testing.TB) string {
	t.Helper()
	d, err := os.MkdirTemp("", "stq-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d, filenames.DirMode); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

func testConfig(t testing.TB, name, machine string, agent bool) *hypervisor.Config {
	kernel, initrd := testGuest(t)
	cfg := &hypervisor.Config{
		Name: name, RunDir: shortRunDir(t), CPUs: 1, MemoryMB: 256,
		Kernel: kernel, Initramfs: initrd, Machine: machine, Accel: "auto",
		GuestAgent: agent,
	}
	if agent {
		cfg.GuestConfig = []byte(`{"version":1,"hostname":"` + name + `"}`)
	}
	return cfg
}

// withRelay is a BeforeBoot hook that connects a console relay while the
// guest is still paused, so the log has the whole boot.
func withRelay(t *testing.T, logPath string, relay **console.Relay) func(context.Context, *hypervisor.Config) error {
	return func(ctx context.Context, cfg *hypervisor.Config) error {
		r, err := console.Start(ctx, console.Options{
			VMMSocket: ConsoleVMMSocket(cfg.RunDir),
			Socket:    filepath.Join(cfg.RunDir, filenames.ConsoleSocket),
			LogPath:   logPath,
		})
		if err != nil {
			return err
		}
		*relay = r
		t.Cleanup(func() { r.Close() })
		return nil
	}
}

// waitLog waits for substr in the console log.
func waitLog(t *testing.T, ctx context.Context, logPath, substr string) {
	t.Helper()
	for {
		b, _ := os.ReadFile(logPath)
		if strings.Contains(string(b), substr) {
			return
		}
		select {
		case <-ctx.Done():
			lines, _ := console.Tail(logPath, 30)
			t.Fatalf("%q never appeared on the console; last lines:\n%s", substr, strings.Join(lines, "\n"))
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func expectHello(ctx context.Context, g hypervisor.GuestChannel) error {
	if g == nil {
		return errors.New("no guest channel")
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	select {
	case line, ok := <-g.Events():
		if !ok {
			return errors.New("guest channel closed")
		}
		var m guestproto.Message
		if err := json.Unmarshal(line, &m); err != nil {
			return fmt.Errorf("bad guest message %q: %w", line, err)
		}
		if m.Type != guestproto.TypeHello || m.Status == nil || !m.Status.Ready {
			return fmt.Errorf("first guest message %q, want a ready hello", line)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("no hello from the guest: %w", ctx.Err())
	}
}

// TestVMLifecycle boots one microvm guest with the agent channel and a
// console relay, and takes it through attach (same process and another
// process) and a graceful stop through the agent.
func TestVMLifecycle(t *testing.T) {
	needVMs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := testConfig(t, "life", "auto", true)
	cfg.Cmdline = "loglevel=7" // the kernel's first line shows the relay was early
	logPath := filepath.Join(shortRunDir(t), filenames.ConsoleLog)
	var relay *console.Relay
	d := New(Options{BeforeBoot: withRelay(t, logPath, &relay)})

	t0 := time.Now()
	inst, err := d.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Kill(); inst.Close() })
	started := time.Since(t0)
	id := inst.Identity()
	if id.Driver != "qemu" || id.PID <= 0 || !proc.Alive(id.PID, id.StartTime) || id.RunDir != cfg.RunDir {
		t.Fatalf("identity %+v", id)
	}
	if st, err := inst.State(ctx); err != nil || st != hypervisor.StateRunning {
		t.Fatalf("state = %v, %v; want running", st, err)
	}
	for _, s := range []string{filenames.QMPSocket, filenames.ConsoleSocket, filenames.AgentSocket} {
		fi, err := os.Stat(filepath.Join(cfg.RunDir, s))
		if err != nil || fi.Mode()&fs.ModeSocket == 0 {
			t.Errorf("%s: %v", s, err)
		}
	}
	waitLog(t, ctx, logPath, "STACKTEST-READY")
	booted := time.Since(t0)
	t.Logf("Start returned after %v, guest ready after %v", started, booted)
	b, _ := os.ReadFile(logPath)
	log := string(b)
	// The relay was connected before the guest ran: the kernel's first
	// line is in the log.
	if !strings.Contains(log, "Linux version") {
		t.Errorf("early kernel output missing from the console log")
	}
	if !strings.Contains(log, "serial=stack-config") || !strings.Contains(log, `STACKTEST-CONFIG {"version":1,"hostname":"life"}`) {
		t.Errorf("config disk not seen by the guest; log:\n%s", log)
	}
	if !strings.Contains(log, "tsc_early_khz=") {
		t.Errorf("microvm under TCG booted without tsc_early_khz")
	}

	// The console socket carries live output and takes input.
	cc, err := net.Dial("unix", filepath.Join(cfg.RunDir, filenames.ConsoleSocket))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := io.WriteString(cc, "ping-from-host\n"); err != nil {
		t.Fatal(err)
	}
	cc.SetReadDeadline(time.Now().Add(30 * time.Second))
	sc := bufio.NewScanner(cc)
	found := false
	for sc.Scan() {
		if strings.Contains(sc.Text(), "STACKTEST-GOT:ping-from-host") {
			found = true
			break
		}
	}
	if !found {
		t.Fatalf("echo of console input never came back on the console socket: %v", sc.Err())
	}
	cc.Close()

	if err := expectHello(ctx, inst.Guest()); err != nil {
		t.Fatal(err)
	}
	// QEMU serves one client per socket: release ours before re-adopting.
	inst.Close()

	// A second driver in this process.
	d2 := New(Options{})
	inst2, err := d2.Attach(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := inst2.State(ctx); err != nil || st != hypervisor.StateRunning {
		t.Fatalf("attached state = %v, %v", st, err)
	}
	if err := expectHello(ctx, inst2.Guest()); err != nil {
		t.Fatalf("re-adopted instance: %v", err)
	}
	inst2.Close()

	// Another process.
	idJSON, _ := json.Marshal(id)
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), attachEnv+"="+string(idJSON))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "ATTACH-OK") {
		t.Fatalf("attach from another process: %v\n%s", err, out)
	}

	// Stop through a fresh handle: the guest ignores ACPI, so exiting
	// within the timeout proves the agent's poweroff was used.
	inst3, err := d2.Attach(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer inst3.Close()
	t1 := time.Now()
	if err := inst3.Stop(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("graceful stop via agent took %v", time.Since(t1))
	if proc.Alive(id.PID, id.StartTime) {
		t.Fatal("qemu still alive after Stop")
	}
	st, err := inst3.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.GuestShutdown || st.Known {
		t.Errorf("exit status %+v, want a guest shutdown with unknown code (not our child)", st)
	}
	waitLog(t, ctx, logPath, "STACKTEST-AGENT-POWEROFF")
	if s, err := inst3.State(ctx); err != nil || s != hypervisor.StateExited {
		t.Errorf("state after stop = %v, %v", s, err)
	}
	for _, s := range []string{filenames.QMPSocket, filenames.AgentSocket, filenames.ConsoleVMMSocket} {
		if _, err := os.Stat(filepath.Join(cfg.RunDir, s)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s left behind after Stop: %v", s, err)
		}
	}
	select {
	case <-relay.Done():
	case <-ctx.Done():
		t.Error("console relay did not notice the VMM exit")
	}
	if _, err := d2.Attach(ctx, id); !errors.Is(err, hypervisor.ErrGone) {
		t.Errorf("attach to a stopped VM: %v, want ErrGone", err)
	}
}

// TestStopTimeoutQuits boots a q35 guest without the agent: it ignores the
// ACPI power button, so Stop must fall back to QMP quit after its timeout.
func TestStopTimeoutQuits(t *testing.T) {
	needVMs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := testConfig(t, "quit", "q35", false)
	logPath := filepath.Join(shortRunDir(t), filenames.ConsoleLog)
	var relay *console.Relay
	inst, err := New(Options{BeforeBoot: withRelay(t, logPath, &relay)}).Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Kill(); inst.Close() })
	if inst.Guest() != nil {
		t.Error("guest channel on a VM without the agent")
	}
	waitLog(t, ctx, logPath, "STACKTEST-READY")
	b, _ := os.ReadFile(logPath)
	if strings.Contains(string(b), "tsc_early_khz") {
		t.Error("tsc_early_khz on q35")
	}
	const timeout = 2 * time.Second
	t1 := time.Now()
	if err := inst.Stop(ctx, timeout); err != nil {
		t.Fatal(err)
	}
	took := time.Since(t1)
	if took < timeout {
		t.Errorf("stop took %v, less than the timeout: the guest was not supposed to honour ACPI", took)
	}
	t.Logf("stop (timeout %v, then quit) took %v", timeout, took)
	st, err := inst.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Known || st.Code != 0 || st.Signal != 0 || st.GuestShutdown {
		t.Errorf("exit status %+v, want code 0 from quit, not a guest shutdown", st)
	}
}

// TestKillSeenAsSignal starts a VM and kills QEMU with SIGKILL from outside
// (as kill -9 would); Wait must report the signal.
func TestKillSeenAsSignal(t *testing.T) {
	needVMs(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := testConfig(t, "kill", "microvm", false)
	t0 := time.Now()
	inst, err := New(Options{}).Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Start took %v", time.Since(t0))
	defer inst.Close()
	if err := syscall.Kill(inst.Identity().PID, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	t1 := time.Now()
	st, err := inst.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Wait saw the kill after %v", time.Since(t1))
	if !st.Known || st.Signal != syscall.SIGKILL || st.Code != -1 || st.GuestShutdown {
		t.Errorf("exit status %+v, want killed by signal 9", st)
	}
	if s, err := inst.State(ctx); err != nil || s != hypervisor.StateExited {
		t.Errorf("state = %v, %v", s, err)
	}
	// Kill and Stop on a dead VM are no-ops, and Stop cleans the sockets.
	if err := inst.Kill(); err != nil {
		t.Error(err)
	}
	if err := inst.Stop(ctx, time.Second); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(filepath.Join(cfg.RunDir, filenames.QMPSocket)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("qmp socket left behind: %v", err)
	}
}

// TestStartFailureCarriesStderr needs no boot: QEMU rejects a missing
// kernel at once, and the error must say so.
func TestStartFailureCarriesStderr(t *testing.T) {
	needVMs(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := &hypervisor.Config{
		Name: "bad", RunDir: shortRunDir(t), CPUs: 1, MemoryMB: 64,
		Kernel: "/nonexistent/vmlinuz", Machine: "microvm",
	}
	_, err := New(Options{}).Start(ctx, cfg)
	if err == nil {
		t.Fatal("start with a missing kernel succeeded")
	}
	if !strings.Contains(err.Error(), "qemu stderr") || !strings.Contains(err.Error(), "/nonexistent/vmlinuz") {
		t.Errorf("error lacks qemu's stderr: %v", err)
	}
	if _, err := os.Stat(filepath.Join(cfg.RunDir, filenames.ArgsFile)); err != nil {
		t.Errorf("argv not recorded: %v", err)
	}
}

// TestRealGuestImage boots the project's own guest image (stack-init as
// PID 1) and stops it through the real agent's poweroff.
func TestRealGuestImage(t *testing.T) {
	needVMs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img, err := guestimage.Ensure(ctx, guestimage.Options{})
	if err != nil {
		t.Fatalf("build the guest image: %v", err)
	}
	if s := ProbeKernel(img.Kernel); s != Yes {
		t.Errorf("guest image kernel: microvm support %v, want Yes from its config file", s)
	}
	gc, _ := json.Marshal(guestproto.Config{Version: guestproto.Version, Hostname: "real"})
	cfg := &hypervisor.Config{
		Name: "real", RunDir: shortRunDir(t), CPUs: 1, MemoryMB: 256,
		Kernel: img.Kernel, Initramfs: img.Initramfs, Machine: "auto", Accel: "auto",
		GuestAgent: true, GuestConfig: gc,
	}
	logPath := filepath.Join(shortRunDir(t), filenames.ConsoleLog)
	var relay *console.Relay
	t0 := time.Now()
	inst, err := New(Options{BeforeBoot: withRelay(t, logPath, &relay)}).Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { inst.Kill(); inst.Close() })
	g := inst.Guest()
	ready := false
	for !ready {
		select {
		case line, ok := <-g.Events():
			if !ok {
				lines, _ := console.Tail(logPath, 30)
				t.Fatalf("guest channel closed before ready; console:\n%s", strings.Join(lines, "\n"))
			}
			var m guestproto.Message
			if err := json.Unmarshal(line, &m); err != nil {
				t.Fatalf("bad guest message %q: %v", line, err)
			}
			if m.Type == guestproto.TypeError {
				t.Fatalf("guest reported an error: %s", line)
			}
			ready = m.Type == guestproto.TypeReady || (m.Status != nil && m.Status.Ready)
		case <-time.After(2 * time.Minute):
			lines, _ := console.Tail(logPath, 30)
			t.Fatalf("guest never became ready; console:\n%s", strings.Join(lines, "\n"))
		}
	}
	t.Logf("real guest ready %v after Start", time.Since(t0))
	t1 := time.Now()
	if err := inst.Stop(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("graceful stop via the real agent took %v", time.Since(t1))
	st, err := inst.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !st.Known || st.Code != 0 || !st.GuestShutdown {
		t.Errorf("exit status %+v, want a guest shutdown with code 0", st)
	}
}

// TestAttachedKill kills a VMM through a re-adopted handle (pidfd signal)
// and checks both views of the exit: the attached one (pidfd readable,
// status unknown) and the parent's (real status, signal 9).
func TestAttachedKill(t *testing.T) {
	needVMs(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := testConfig(t, "akill", "microvm", false)
	parent, err := New(Options{}).Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { parent.Kill() })
	parent.Close() // frees QMP for the attached handle; the child is still reaped
	att, err := New(Options{}).Attach(ctx, parent.Identity())
	if err != nil {
		t.Fatal(err)
	}
	defer att.Close()
	if err := att.Kill(); err != nil {
		t.Fatal(err)
	}
	ast, err := att.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ast.Known || ast.GuestShutdown {
		t.Errorf("attached exit status %+v, want unknown and not a guest shutdown", ast)
	}
	pst, err := parent.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !pst.Known || pst.Signal != syscall.SIGKILL {
		t.Errorf("parent exit status %+v, want signal 9", pst)
	}
	if err := att.Stop(ctx, time.Second); err != nil {
		t.Errorf("stop after exit: %v", err)
	}
	for _, s := range []string{filenames.QMPSocket, filenames.ConsoleVMMSocket} {
		if _, err := os.Stat(filepath.Join(cfg.RunDir, s)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s left behind: %v", s, err)
		}
	}
}

// TestArgvAcceptedByQEMU starts (without waiting for a boot) one VM per
// machine type with every kind of device the driver emits except TAP (which
// needs a host TAP device): QEMU must accept the argv, and the block devices
// must come up with the requested read-only flags.
func TestArgvAcceptedByQEMU(t *testing.T) {
	needVMs(t)
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatalf("qemu-img not found (install qemu-utils): %v", err)
	}
	for _, machine := range []string{"microvm", "q35"} {
		t.Run(machine, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cfg := testConfig(t, "argv-"+machine, machine, true)
			data := shortRunDir(t)
			raw := filepath.Join(data, "scratch.img")
			if err := os.WriteFile(raw, make([]byte, 1<<20), 0o600); err != nil {
				t.Fatal(err)
			}
			overlay := filepath.Join(data, "root.qcow2")
			if out, err := exec.Command("qemu-img", "create", "-f", "qcow2", "-F", "raw", "-b", raw, overlay).CombinedOutput(); err != nil {
				t.Fatalf("qemu-img: %v\n%s", err, out)
			}
			// The switch side of each transport.
			remote := filepath.Join(data, "sw-dgram.sock")
			rc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: remote, Net: "unixgram"})
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			streamPath := filepath.Join(data, "sw-stream.sock")
			ln, err := net.Listen("unix", streamPath)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			accepted := make(chan net.Conn, 1)
			go func() {
				if c, err := ln.Accept(); err == nil {
					accepted <- c
				}
				close(accepted)
			}()
			fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_DGRAM|syscall.SOCK_CLOEXEC, 0)
			if err != nil {
				t.Fatal(err)
			}
			ours, theirs := os.NewFile(uintptr(fds[0]), "switch-end"), os.NewFile(uintptr(fds[1]), "vm-end")
			defer ours.Close()
			defer theirs.Close()

			cfg.Disks = []hypervisor.Disk{
				{Path: overlay, Format: "qcow2", Serial: "root"},
				{Path: raw, Format: "raw", ReadOnly: true, Serial: "seed"},
			}
			cfg.NICs = []hypervisor.NIC{
				{MAC: netaddr.MustParseMAC("52:54:00:00:00:01"), DgramLocal: filepath.Join(cfg.RunDir, "n0.sock"), DgramRemote: remote},
				{MAC: netaddr.MustParseMAC("52:54:00:00:00:02"), StreamPath: streamPath},
				{MAC: netaddr.MustParseMAC("52:54:00:00:00:03"), FD: theirs},
			}
			cfg.SharedDirs = []hypervisor.SharedDir{{Tag: "src", HostPath: data, ReadOnly: true}}

			inst, err := New(Options{}).Start(ctx, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer inst.Close()
			defer inst.Kill()
			if c, ok := <-accepted; ok {
				c.Close()
			} else {
				t.Error("QEMU did not connect to the stream NIC's socket")
			}
			ret, err := inst.(*instance).qmp.Execute(ctx, "query-block", nil)
			if err != nil {
				t.Fatal(err)
			}
			var blocks []struct {
				Device   string `json:"device"`
				QDev     string `json:"qdev"`
				Inserted *struct {
					File string `json:"file"`
					RO   bool   `json:"ro"`
				} `json:"inserted"`
			}
			if err := json.Unmarshal(ret, &blocks); err != nil {
				t.Fatal(err)
			}
			ro := map[string]bool{}
			for _, b := range blocks {
				if b.Inserted != nil {
					ro[b.Inserted.File] = b.Inserted.RO
				}
			}
			want := map[string]bool{overlay: false, raw: true, configDiskPath(cfg.RunDir): true}
			for f, w := range want {
				got, ok := ro[f]
				if !ok || got != w {
					t.Errorf("block %s: present %v read-only %v, want read-only %v (all: %s)", f, ok, got, w, ret)
				}
			}
			inst.Kill()
			if st, err := inst.Wait(ctx); err != nil || st.Signal != syscall.SIGKILL {
				t.Errorf("wait: %+v, %v", st, err)
			}
		})
	}
}

// fakeQEMU writes script as a stand-in qemu-system-x86_64 and returns it
// with the config of a q35 VM named name (its kernel is never read).
func fakeQEMU(t *testing.T, name, script string) (bin string, cfg *hypervisor.Config) {
	t.Helper()
	dir := t.TempDir()
	bin = filepath.Join(dir, "qemu-system-x86_64")
	if err := os.WriteFile(bin, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return bin, &hypervisor.Config{
		Name: name, RunDir: shortRunDir(t), CPUs: 1, MemoryMB: 64,
		// tcg: a stand-in QEMU has no KVM to probe.
		Kernel: filepath.Join(dir, "vmlinuz"), Machine: "q35", Accel: "tcg",
	}
}

// TestOldQEMUExplained: a QEMU older than 7.2 fails on -netdev dgram; the
// start error says why (the driver asks for the version only then). The
// "QEMU" here is a script that answers --version like QEMU 6.2 and fails
// like it on anything else.
func TestOldQEMUExplained(t *testing.T) {
	bin, cfg := fakeQEMU(t, "old", "#!/bin/sh\n"+
		"if [ \"$1\" = --version ]; then echo 'QEMU emulator version 6.2.0 (Debian 1:6.2+dfsg-2)'; exit 0; fi\n"+
		"echo \"qemu-system-x86_64: -netdev dgram,id=n0: Parameter 'type' expects a netdev backend type\" >&2\n"+
		"exit 1\n")
	dir := filepath.Dir(bin)
	cfg.NICs = []hypervisor.NIC{{MAC: netaddr.MustParseMAC("52:54:00:00:00:01"), DgramLocal: filepath.Join(dir, "l.sock"), DgramRemote: filepath.Join(dir, "r.sock")}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := New(Options{Binary: bin}).Start(ctx, cfg)
	if err == nil {
		t.Fatal("start with QEMU 6.2 succeeded")
	}
	for _, want := range []string{"need QEMU 7.2 or later, have 6.2", "expects a netdev backend type"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	cfg.NICs = nil
	if _, err := New(Options{Binary: bin}).Start(ctx, cfg); err == nil || strings.Contains(err.Error(), "7.2") {
		t.Errorf("without dgram NICs the error blames the version: %v", err)
	}
}

// TestVirtiofsdEndsWithAFailedStart: when QEMU fails to start, the
// virtiofsd started for its shared directory is killed rather than left
// waiting for a connection that never comes. The "QEMU" exits at once.
func TestVirtiofsdEndsWithAFailedStart(t *testing.T) {
	vfsd := FindVirtiofsd()
	if vfsd == "" {
		t.Fatal("no virtiofsd (Debian: /usr/lib/qemu/virtiofsd from qemu-system-common)")
	}
	share := t.TempDir()
	bin, cfg := fakeQEMU(t, "vfs", "#!/bin/sh\necho 'qemu-system-x86_64: cannot start' >&2\nexit 1\n")
	cfg.SharedDirs = []hypervisor.SharedDir{{Tag: "share", HostPath: share}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := New(Options{Binary: bin, Virtiofsd: vfsd}).Start(ctx, cfg)
	if err == nil || !strings.Contains(err.Error(), "cannot start") {
		t.Fatalf("start = %v, want QEMU's error", err)
	}
	if left, err := testutil.WaitProcessesGone(10*time.Second, share); err != nil || len(left) > 0 {
		t.Fatalf("virtiofsd outlived the failed start: %v %v", left, err)
	}
}

// TestAccelOnThisHost boots the real guest under "auto" and "kvm" on this
// host, whatever its KVM: where a test boot shows that KVM runs guests, both
// run under KVM; where it does not (no /dev/kvm, or kvm-pvm, which makes
// QEMU assert), "auto" runs under TCG and says why when a KVM device is
// there, and "kvm" is refused with the probe's reason.
func TestAccelOnThisHost(t *testing.T) {
	needVMs(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	d := New(Options{})
	cfg := testConfig(t, "accel", "microvm", false)
	v, err := d.KVM(ctx, MachineMicrovm, cfg.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("KVM verdict on this host: %+v", v)

	inst, err := d.Start(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	got := inst.Accel()
	inst.Kill()
	inst.Wait(ctx)
	inst.Close()
	want := hypervisor.Accel{Name: AccelKVM}
	if !v.Usable {
		want = hypervisor.Accel{Name: AccelTCG}
		if v.Present {
			want.Fallback = v.Reason
		}
	}
	if got != want {
		t.Errorf("auto with verdict %+v runs %+v, want %+v", v, got, want)
	}
	if got, want := recordedAccel(cfg.RunDir), got.Name; got != want {
		t.Errorf("argv has -accel %q, the instance says %q", got, want)
	}

	cfg = testConfig(t, "accel-kvm", "microvm", false)
	cfg.Accel = AccelKVM
	inst, err = d.Start(ctx, cfg)
	if v.Usable {
		if err != nil {
			t.Fatalf("accel = kvm where KVM runs guests: %v", err)
		}
		inst.Kill()
		inst.Wait(ctx)
		inst.Close()
		return
	}
	if err == nil {
		inst.Kill()
		inst.Close()
		t.Fatal("accel = kvm started where KVM does not run guests")
	}
	if !strings.Contains(err.Error(), v.Reason) || !strings.Contains(err.Error(), `accel = "kvm"`) {
		t.Errorf("refusal does not name the probe's reason %q: %v", v.Reason, err)
	}
}
