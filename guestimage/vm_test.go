package guestimage

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stackvm/stack/guestproto"
)

// This file boots the guest image under QEMU (TCG) with an argv built here,
// mirroring what the QEMU driver does for initramfs-mode VMs: microvm,
// virtio-mmio devices, the config disk by serial, the agent port on a unix
// socket (server=on, wait=off), a NIC on a unix datagram socket the test
// holds.

var (
	imageOnce sync.Once
	imageVal  *Image
	imageErr  error
)

// testImage builds (or finds) the default image in the user's cache, as
// `make guest-image` would, so that a prebuilt image is reused.
func testImage(tb testing.TB) *Image {
	tb.Helper()
	if testing.Short() {
		tb.Skip("boots a VM; skipped with -short")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		tb.Fatalf("qemu-system-x86_64 (apt package qemu-system-x86) is needed: %v", err)
	}
	imageOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		imageVal, imageErr = Ensure(ctx, Options{})
	})
	if imageErr != nil {
		tb.Fatalf("build the guest image (needs apt access for %s, busybox-static, a Go toolchain): %v", "linux-image-cloud-amd64", imageErr)
	}
	return imageVal
}

type vmSpec struct {
	cmdline string // appended to the kernel command line
	// icount runs the guest with -icount shift=0: its clock counts
	// instructions (1 ns each) plus idle time, so guest-side durations do
	// not depend on the host's load.
	icount    bool
	cfg       guestproto.Config
	initramfs string   // default: the image's
	nicMACs   []string // one NIC per MAC, each on its own datagram socket
	disks     []vmDisk
}

type vmDisk struct {
	path, serial string
}

type testVM struct {
	tb        testing.TB
	dir       string
	cmd       *exec.Cmd
	start     time.Time
	agentPath string
	nics      []*net.UnixConn
	nicQEMU   []string // the sockets QEMU binds, where frames to the guest go
	done      chan struct{}
	waitErr   error

	mu      sync.Mutex
	console bytes.Buffer
	marks   map[string]time.Time // console lines starting with "MARK " → first seen
}

func tscKHz(tb testing.TB) int64 {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		tb.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int64(f * 1000)
			}
		}
	}
	tb.Fatal("no cpu MHz in /proc/cpuinfo")
	return 0
}

func bootVM(tb testing.TB, img *Image, spec vmSpec) *testVM {
	tb.Helper()
	dir, err := os.MkdirTemp("", "stack-vm-")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	vm := &testVM{tb: tb, dir: dir, agentPath: filepath.Join(dir, "agent.sock"), done: make(chan struct{}), marks: map[string]time.Time{}}

	spec.cfg.Version = guestproto.Version
	cfgJSON, err := json.Marshal(spec.cfg)
	if err != nil {
		tb.Fatal(err)
	}
	disk := make([]byte, (len(cfgJSON)/512+1)*512)
	copy(disk, cfgJSON)
	cfgPath := filepath.Join(dir, "config.img")
	if err := os.WriteFile(cfgPath, disk, 0o600); err != nil {
		tb.Fatal(err)
	}
	initrd := spec.initramfs
	if initrd == "" {
		initrd = img.Initramfs
	}
	khz := tscKHz(tb)
	if spec.icount {
		khz = 1000000 // the virtual TSC of -icount shift=0 runs at 1 GHz
	}
	args := []string{
		"-M", "microvm,rtc=on", "-accel", "tcg", "-cpu", "max", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", img.Kernel, "-initrd", initrd,
		"-append", fmt.Sprintf("console=ttyS0 tsc_early_khz=%d panic=-1 quiet %s", khz, spec.cmdline),
		"-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
		"-drive", "id=cfg,file=" + cfgPath + ",format=raw,if=none,readonly=on",
		"-device", "virtio-blk-device,drive=cfg,serial=" + guestproto.ConfigDiskSerial,
	}
	if spec.icount {
		args = append(args, "-icount", "shift=0,sleep=on")
	}
	for i, d := range spec.disks {
		args = append(args,
			"-drive", fmt.Sprintf("id=d%d,file=%s,format=raw,if=none", i, d.path),
			"-device", fmt.Sprintf("virtio-blk-device,drive=d%d,serial=%s", i, d.serial))
	}
	for i, mac := range spec.nicMACs {
		hostSock := filepath.Join(dir, fmt.Sprintf("nic%d.sock", i))
		qemuSock := filepath.Join(dir, fmt.Sprintf("qemu-nic%d.sock", i))
		c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: hostSock, Net: "unixgram"})
		if err != nil {
			tb.Fatal(err)
		}
		vm.nics = append(vm.nics, c)
		vm.nicQEMU = append(vm.nicQEMU, qemuSock)
		tb.Cleanup(func() { c.Close() })
		args = append(args,
			"-netdev", fmt.Sprintf("dgram,id=n%d,local.type=unix,local.path=%s,remote.type=unix,remote.path=%s", i, qemuSock, hostSock),
			"-device", fmt.Sprintf("virtio-net-device,netdev=n%d,mac=%s", i, mac))
	}
	args = append(args,
		"-chardev", "socket,id=agent,path="+vm.agentPath+",server=on,wait=off",
		"-device", "virtio-serial-device",
		"-device", "virtserialport,chardev=agent,name="+guestproto.AgentPort)

	vm.cmd = exec.Command("qemu-system-x86_64", args...)
	vm.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdout, err := vm.cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	var stderr bytes.Buffer
	vm.cmd.Stderr = &stderr
	vm.start = time.Now()
	if err := vm.cmd.Start(); err != nil {
		tb.Fatalf("start qemu: %v", err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			line := strings.TrimRight(sc.Text(), "\r")
			vm.mu.Lock()
			vm.console.WriteString(line + "\n")
			if strings.Contains(line, "stack-init") && strings.Contains(line, "msg=ready") {
				line = "MARK init-ready"
			}
			if m, ok := strings.CutPrefix(line, "MARK "); ok {
				if _, seen := vm.marks[m]; !seen {
					vm.marks[m] = time.Now()
				}
			}
			vm.mu.Unlock()
		}
		io.Copy(io.Discard, stdout)
		vm.waitErr = vm.cmd.Wait()
		if vm.waitErr != nil && stderr.Len() > 0 {
			vm.waitErr = fmt.Errorf("%w: %s", vm.waitErr, strings.TrimSpace(stderr.String()))
		}
		close(vm.done)
	}()
	tb.Cleanup(func() {
		select {
		case <-vm.done:
		default:
			syscall.Kill(-vm.cmd.Process.Pid, syscall.SIGKILL)
			<-vm.done
		}
		if tb.Failed() {
			tb.Logf("console of %s:\n%s", dir, vm.consoleText())
		}
	})
	return vm
}

func (vm *testVM) consoleText() string {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return vm.console.String()
}

// waitConsole waits for s to appear on the console.
func (vm *testVM) waitConsole(s string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if strings.Contains(vm.consoleText(), s) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return false
}

// waitExit waits for QEMU to exit and returns its error (nil: exit 0).
func (vm *testVM) waitExit(timeout time.Duration) (error, bool) {
	select {
	case <-vm.done:
		return vm.waitErr, true
	case <-time.After(timeout):
		return nil, false
	}
}

// agentConn is the host end of the agent port.
type agentConn struct {
	c    net.Conn
	msgs chan guestproto.Message
	errs chan error
}

func (vm *testVM) dialAgent(timeout time.Duration) *agentConn {
	vm.tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		c, err := net.Dial("unix", vm.agentPath)
		if err == nil {
			a := &agentConn{c: c, msgs: make(chan guestproto.Message, 64), errs: make(chan error, 1)}
			go func() {
				sc := bufio.NewScanner(c)
				for sc.Scan() {
					var m guestproto.Message
					if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
						a.errs <- fmt.Errorf("agent sent %q: %w", sc.Text(), err)
						return
					}
					a.msgs <- m
				}
				close(a.msgs)
			}()
			vm.tb.Cleanup(func() { c.Close() })
			return a
		}
		if time.Now().After(deadline) {
			vm.tb.Fatalf("connect to agent socket: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// next returns the next message, or fails the test after timeout.
func (a *agentConn) next(tb testing.TB, timeout time.Duration) guestproto.Message {
	tb.Helper()
	select {
	case m, ok := <-a.msgs:
		if !ok {
			tb.Fatal("agent connection closed")
		}
		return m
	case err := <-a.errs:
		tb.Fatal(err)
	case <-time.After(timeout):
		tb.Fatalf("no agent message within %s", timeout)
	}
	return guestproto.Message{}
}

// until reads messages until one satisfies f, returning all read.
func (a *agentConn) until(tb testing.TB, timeout time.Duration, f func(guestproto.Message) bool) []guestproto.Message {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	var got []guestproto.Message
	for {
		left := time.Until(deadline)
		if left <= 0 {
			tb.Fatalf("condition not met within %s; messages: %+v", timeout, got)
		}
		m := a.next(tb, left)
		got = append(got, m)
		if f(m) {
			return got
		}
	}
}

func (a *agentConn) send(tb testing.TB, m guestproto.Message) {
	tb.Helper()
	b, _ := json.Marshal(m)
	if _, err := a.c.Write(append(b, '\n')); err != nil {
		tb.Fatalf("send to agent: %v", err)
	}
}

func isReady(m guestproto.Message) bool { return m.Status != nil && m.Status.Ready }
func isExit(m guestproto.Message) bool  { return m.Status != nil && m.Status.Exited }
