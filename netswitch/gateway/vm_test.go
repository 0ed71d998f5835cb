package gateway

// The real-VM test: two QEMU guests (TCG) on one switch with its gateway.
// It boots the built-in guest image's kernel and initramfs with a shell
// script appended as /init (an appended initramfs archive overrides
// files of the first), so that the test depends on the image's kernel and
// modules but not on the guest init's protocol.

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/stackvm/stack/guestimage"
	"github.com/stackvm/stack/netswitch"
)

// guestScript is /init of the test guests. It loads the image's boot
// modules, takes an address by DHCP and runs the role's part. Console lines
// starting with "MARK " are what the host waits for.
const guestScript = `#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
for m in $(cat /netmods); do insmod /lib/modules/$(uname -r)/$m 2>/dev/null; done
ip link set lo up
ip link set eth0 up
n=0
until udhcpc -i eth0 -n -q -t 5 -T 1 -s /dhcp.sh; do
  n=$((n+1)); [ $n -ge 5 ] && { echo "MARK fail dhcp"; poweroff -f; }
done
ROLE=$(sed -n 's/.*role=\([a-z]*\).*/\1/p' /proc/cmdline)
if [ "$ROLE" = server ]; then
  mkdir -p /www && echo "hello from $(hostname)" > /www/index.html
  httpd -p 80 -h /www
  echo "MARK ready"
  while true; do sleep 60; done
fi
# client
PEER=$(sed -n 's/.*peer=\([a-z0-9.-]*\).*/\1/p' /proc/cmdline)
for i in 1 2 3 4 5 6 7 8 9 10; do
  IP=$(nslookup "$PEER" 2>/dev/null | sed -n '/^Name:/,$ s/^Address[^0-9]*\([0-9.]*\).*/\1/p' | head -n 1)
  [ -n "$IP" ] && break
  sleep 1
done
echo "MARK resolved $PEER $IP"
for i in 1 2 3; do
  OUT=$(nslookup -debug "$PEER.demo.internal" 2>&1)
  IP2=$(echo "$OUT" | sed -n '/^Name:/,$ s/^Address[^0-9]*\([0-9.]*\).*/\1/p' | head -n 1)
  [ -n "$IP2" ] && break
  echo "$OUT"
done
echo "MARK resolved-fqdn $IP2 tries=$i"
if ping -c 3 -W 3 "$IP" >/dev/null 2>&1; then echo "MARK ping ok"; else echo "MARK ping fail"; fi
echo "MARK http $(printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 5 "$IP" 80 2>&1 | tail -n 1)"
echo "MARK phase1"
# After the host restarts the switch: keep pinging and report successes.
while true; do
  if ping -c 1 -W 1 "$IP" >/dev/null 2>&1; then echo "MARK alive $(cut -d' ' -f1 /proc/uptime)"; fi
  sleep 1
done
`

const dhcpScript = `#!/bin/sh
case "$1" in
bound|renew)
  ip addr add "$ip/${mask:-24}" dev "$interface"
  [ -n "$router" ] && ip route add default via "$router"
  : > /etc/resolv.conf
  for s in $dns; do echo "nameserver $s" >> /etc/resolv.conf; done
  [ -n "$hostname" ] && hostname "$hostname"
  echo "MARK dhcp $ip $router $dns $hostname"
  ;;
esac
exit 0
`

// testInitramfs writes the image's initramfs followed by an archive with
// the test's /init.
func testInitramfs(t *testing.T, img *guestimage.Image, dir string) string {
	t.Helper()
	var mods []string
	for _, m := range img.Modules {
		if m.Group == "boot" {
			mods = append(mods, m.Path)
		}
	}
	base, err := os.ReadFile(img.Initramfs)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	buf.Write(base)
	for buf.Len()%4 != 0 {
		buf.WriteByte(0)
	}
	gz := gzip.NewWriter(&buf)
	w := cpio.Newc.Writer(gz)
	for i, r := range []cpio.Record{
		cpio.StaticFile("init", guestScript, 0o755),
		cpio.StaticFile("dhcp.sh", dhcpScript, 0o755),
		cpio.StaticFile("netmods", strings.Join(mods, "\n")+"\n", 0o644),
	} {
		r.Ino = uint64(900000 + i)
		r.NLink = 1
		if err := w.WriteRecord(r); err != nil {
			t.Fatal(err)
		}
	}
	if err := cpio.WriteTrailer(w); err != nil {
		t.Fatal(err)
	}
	if err := gz.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "initramfs-test.cpio.gz")
	if err := os.WriteFile(p, buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// qemuVM is one guest; its console lines are collected.
type qemuVM struct {
	name  string
	cmd   *exec.Cmd
	mu    sync.Mutex
	lines []string
	cond  chan struct{} // closed and replaced on each new line
	done  chan struct{}
}

func tscKHz(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "cpu MHz" {
			if f, err := strconv.ParseFloat(strings.TrimSpace(v), 64); err == nil {
				return int64(f * 1000)
			}
		}
	}
	t.Fatal("no cpu MHz in /proc/cpuinfo")
	return 0
}

func startVM(t *testing.T, name, kernel, initrd, cmdline, mac, local, remote string) *qemuVM {
	t.Helper()
	args := []string{
		"-M", "microvm,rtc=on", "-accel", "tcg", "-cpu", "max", "-m", "192", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", kernel, "-initrd", initrd,
		"-append", fmt.Sprintf("console=ttyS0 tsc_early_khz=%d panic=-1 quiet %s", tscKHz(t), cmdline),
		"-chardev", "stdio,id=con,signal=off", "-serial", "chardev:con",
		"-netdev", "dgram,id=n0,local.type=unix,local.path=" + local + ",remote.type=unix,remote.path=" + remote,
		"-device", "virtio-net-device,netdev=n0,mac=" + mac,
	}
	vm := &qemuVM{name: name, cond: make(chan struct{}), done: make(chan struct{})}
	vm.cmd = exec.Command("qemu-system-x86_64", args...)
	vm.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := vm.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	vm.cmd.Stderr = &stderr
	if err := vm.cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	go func() {
		defer close(vm.done)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			vm.mu.Lock()
			vm.lines = append(vm.lines, strings.TrimRight(sc.Text(), "\r"))
			close(vm.cond)
			vm.cond = make(chan struct{})
			vm.mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		vm.cmd.Process.Kill()
		<-vm.done
		vm.cmd.Wait()
		if t.Failed() {
			vm.mu.Lock()
			t.Logf("console of %s:\n%s\nstderr: %s", name, strings.Join(vm.lines, "\n"), stderr.String())
			vm.mu.Unlock()
		}
	})
	return vm
}

// waitMark waits for a console line "MARK <prefix>..." after line index
// from and returns its rest and the index after it.
func (vm *qemuVM) waitMark(t *testing.T, prefix string, from int, timeout time.Duration) (string, int) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		vm.mu.Lock()
		for i := from; i < len(vm.lines); i++ {
			if rest, ok := strings.CutPrefix(vm.lines[i], "MARK "+prefix); ok {
				vm.mu.Unlock()
				return strings.TrimSpace(rest), i + 1
			}
			if strings.HasPrefix(vm.lines[i], "MARK fail") {
				vm.mu.Unlock()
				t.Fatalf("%s: %s", vm.name, vm.lines[i])
			}
		}
		c := vm.cond
		vm.mu.Unlock()
		select {
		case <-c:
		case <-vm.done:
			t.Fatalf("%s exited before MARK %s", vm.name, prefix)
		case <-deadline:
			t.Fatalf("%s: no MARK %s within %v", vm.name, prefix, timeout)
		}
	}
}

func (vm *qemuVM) lineCount() int {
	vm.mu.Lock()
	defer vm.mu.Unlock()
	return len(vm.lines)
}

func TestTwoGuests(t *testing.T) {
	if testing.Short() {
		t.Skip("boots two QEMU guests")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Fatalf("qemu-system-x86_64 (apt package qemu-system-x86) is needed: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img, err := guestimage.Ensure(ctx, guestimage.Options{})
	if err != nil {
		t.Fatalf("guest image (guestimage.Ensure; needs apt access for the kernel and busybox-static): %v", err)
	}
	dir, err := os.MkdirTemp("", "stk-vm-") // short: socket paths
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	initrd := testInitramfs(t, img, dir)
	swDir := filepath.Join(dir, "net")
	httpPort := freePort(t, "tcp")

	macServer, macClient := netswitch.MAC{0x52, 0x54, 0, 0xaa, 0, 0x0a}, netswitch.MAC{0x52, 0x54, 0, 0xaa, 0, 0x0b}
	hosts := map[string]netip.Addr{"vm-a": ipA, "vm-b": ipB}
	leases := map[netswitch.MAC]netip.Addr{macServer: ipA, macClient: ipB}
	publish := []Forward{{Protocol: "tcp", HostPort: httpPort, GuestIP: ipA, GuestPort: 80}}

	// up starts a switch with its gateway and both VMs' ports, as the
	// engine would (again after a restart, with the same paths).
	up := func() (*netswitch.Switch, *Gateway, map[string]string) {
		sw, err := netswitch.New(netswitch.Config{Name: "lan", Dir: swDir})
		if err != nil {
			t.Fatal(err)
		}
		g, err := New(Config{Namespace: "demo", Network: "lan", Subnet: subnet, GatewayIP: gwIP,
			DHCP: true, DNS: true, Hosts: hosts, Leases: leases, Publish: publish})
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Attach(sw); err != nil {
			t.Fatal(err)
		}
		paths := map[string]string{}
		// Each port is pinned to its VM's MAC and address, as the
		// supervisor does.
		for vm, mac := range map[string]netswitch.MAC{"vm-a": macServer, "vm-b": macClient} {
			p, err := sw.AddDgramPort(vm, filepath.Join(dir, vm+".sock"), netswitch.PinMACs(mac), netswitch.PinIPs(leases[mac]))
			if err != nil {
				t.Fatal(err)
			}
			paths[vm] = p
		}
		return sw, g, paths
	}
	down := func(sw *netswitch.Switch, g *Gateway) {
		if err := g.Close(); err != nil {
			t.Errorf("close gateway: %v", err)
		}
		if err := sw.Close(); err != nil {
			t.Errorf("close switch: %v", err)
		}
	}
	sw, g, paths := up()
	closed := false
	t.Cleanup(func() {
		if closed {
			return
		}
		for _, p := range sw.Stats().Ports {
			t.Logf("port %-8s rx %5d frames %7d bytes, %d drops; tx %5d frames %7d bytes, %d drops", p.Name, p.RxFrames, p.RxBytes, p.RxDrops, p.TxFrames, p.TxBytes, p.TxDrops)
		}
	})
	t.Cleanup(func() {
		if !closed {
			down(sw, g)
		}
	})

	start := time.Now()
	a := startVM(t, "vm-a", img.Kernel, initrd, "role=server", macServer.String(), filepath.Join(dir, "vm-a.sock"), paths["vm-a"])
	b := startVM(t, "vm-b", img.Kernel, initrd, "role=client peer=vm-a", macClient.String(), filepath.Join(dir, "vm-b.sock"), paths["vm-b"])

	// DHCP: each guest gets its lease, the gateway as router and DNS, and
	// its name.
	got, _ := a.waitMark(t, "dhcp", 0, 3*time.Minute)
	if want := fmt.Sprintf("%s %s %s vm-a", ipA, gwIP, gwIP); got != want {
		t.Fatalf("vm-a dhcp: %q, want %q", got, want)
	}
	got, _ = b.waitMark(t, "dhcp", 0, 3*time.Minute)
	if want := fmt.Sprintf("%s %s %s vm-b", ipB, gwIP, gwIP); got != want {
		t.Fatalf("vm-b dhcp: %q, want %q", got, want)
	}
	a.waitMark(t, "ready", 0, time.Minute)
	t.Logf("both guests configured by DHCP %v after start", time.Since(start).Round(time.Millisecond))

	// DNS by short and full name, ping, and HTTP between the guests.
	if got, _ := b.waitMark(t, "resolved ", 0, time.Minute); got != "vm-a "+ipA.String() {
		t.Fatalf("vm-b resolved %q, want vm-a %s", got, ipA)
	}
	got, _ = b.waitMark(t, "resolved-fqdn", 0, time.Minute)
	if got != ipA.String()+" tries=1" {
		t.Fatalf("vm-b resolved vm-a.demo.internal to %q", got)
	}
	t.Logf("vm-a.demo.internal resolved (%s)", got)
	if got, _ := b.waitMark(t, "ping", 0, time.Minute); got != "ok" {
		t.Fatalf("vm-b ping vm-a: %s", got)
	}
	if got, _ := b.waitMark(t, "http", 0, time.Minute); got != "hello from vm-a" {
		t.Fatalf("vm-b fetched %q from vm-a", got)
	}
	b.waitMark(t, "phase1", 0, time.Minute)

	// The host reaches vm-a's httpd through the published port.
	fetch := func() string {
		t.Helper()
		c := &http.Client{Timeout: 10 * time.Second}
		resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d/", httpPort))
		if err != nil {
			t.Fatalf("published port: %v", err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(body))
	}
	if got := fetch(); got != "hello from vm-a" {
		t.Fatalf("published port answered %q", got)
	}
	if gs := g.Stats(); gs.Spoofed != 0 {
		t.Errorf("the gateway dropped %d frames of real guests as spoofed", gs.Spoofed)
	}
	st := sw.Stats()
	for _, p := range st.Ports {
		t.Logf("port %-8s rx %5d frames %7d bytes, %d drops; tx %5d frames %7d bytes, %d drops", p.Name, p.RxFrames, p.RxBytes, p.RxDrops, p.TxFrames, p.TxBytes, p.TxDrops)
		if p.Kind == netswitch.KindDgram && (p.RxFrames == 0 || p.TxFrames == 0) {
			t.Errorf("port %s carried no traffic", p.Name)
		}
		if p.SpoofDrops != 0 || p.QueueDrops != 0 {
			t.Errorf("port %s: a real guest's frames were dropped (%d as spoofed, %d at its queue)", p.Name, p.SpoofDrops, p.QueueDrops)
		}
	}

	// Restart the switch and gateway; the guests keep their sockets.
	down(sw, g)
	closed = true
	// Pings that were answered before the switch went down have been
	// reported after 2 s (ping -W 1, then sleep 1); later reports are of
	// pings through the new switch.
	time.Sleep(2 * time.Second)
	restartLine := b.lineCount()
	sw, g, _ = up()
	closed = false
	restarted := time.Now()
	b.waitMark(t, "alive", restartLine, time.Minute)
	t.Logf("vm-b pings vm-a again %v after the switch came back", time.Since(restarted).Round(time.Millisecond))
	if got := fetch(); got != "hello from vm-a" {
		t.Fatalf("published port after the switch restart answered %q", got)
	}
	t.Logf("whole test with two guests: %v", time.Since(start).Round(time.Millisecond))
}
