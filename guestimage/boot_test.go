package guestimage

import (
	"bytes"
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/netaddr"
)

const bootTimeout = 3 * time.Minute // TCG on a loaded 2-core machine

// The real image: its contents (kernel release normalised) match the golden
// listing, so adding or losing a module or applet shows up in review.
func TestDefaultImageContents(t *testing.T) {
	img := testImage(t)
	f, err := os.Open(img.Initramfs)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lines, err := Listing(f)
	if err != nil {
		t.Fatal(err)
	}
	out := strings.ReplaceAll(strings.Join(lines, "\n")+"\n", img.KernelRelease, "<release>")
	golden(t, "default-initramfs.golden", []byte(out))
	for _, p := range []string{img.Kernel, img.Initramfs, filepath.Join(filepath.Dir(img.Kernel), filenames.GuestKernelConfig)} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != filenames.FileMode {
			t.Errorf("%s has mode %v, want %v", p, st.Mode().Perm(), filenames.FileMode)
		}
	}
}

// Two builders racing on an empty cache both succeed with the same image,
// and leave no temporary directories behind.
func TestEnsureConcurrentBuilds(t *testing.T) {
	testImage(t) // prerequisites
	cache := t.TempDir()
	var wg sync.WaitGroup
	imgs := make([]*Image, 2)
	errs := make([]error, 2)
	for i := range imgs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			imgs[i], errs[i] = Ensure(context.Background(), Options{CacheRoot: cache})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("builder %d: %v", i, err)
		}
	}
	if imgs[0].Key != imgs[1].Key || imgs[0].Initramfs != imgs[1].Initramfs {
		t.Errorf("builders disagree: %+v vs %+v", imgs[0], imgs[1])
	}
	var leftovers []string
	filepath.Walk(cache, func(p string, info os.FileInfo, err error) error {
		if err == nil && strings.HasPrefix(info.Name(), ".tmp-") {
			leftovers = append(leftovers, p)
		}
		return nil
	})
	if len(leftovers) > 0 {
		t.Errorf("temporary files left behind: %v", leftovers)
	}
	// A third call finds the image without rebuilding it.
	before, _ := os.Stat(imgs[0].Initramfs)
	again, err := Ensure(context.Background(), Options{CacheRoot: cache})
	if err != nil || again.Key != imgs[0].Key {
		t.Fatalf("cached Ensure: %v, %+v", err, again)
	}
	after, _ := os.Stat(again.Initramfs)
	if !after.ModTime().Equal(before.ModTime()) {
		t.Error("cached image was rebuilt")
	}
	// The modules.dep generated from the modules' .modinfo gives
	// virtio_net its real dependencies.
	deps, _ := filepath.Glob(filepath.Join(cache, "kernels", "*", "lib", "modules", "*", "modules.dep"))
	if len(deps) != 1 {
		t.Fatalf("modules.dep files in the kernel cache: %v", deps)
	}
	b, err := os.ReadFile(deps[0])
	if err != nil {
		t.Fatal(err)
	}
	var line string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "kernel/drivers/net/virtio_net.ko:") {
			line = l
		}
	}
	for _, d := range []string{"virtio/virtio_ring.ko", "virtio/virtio.ko", "net/net_failover.ko", "core/failover.ko"} {
		if !strings.Contains(line, "/"+d) {
			t.Errorf("modules.dep line %q lacks %s", line, d)
		}
	}
}

// Boot 1: a static IP on one NIC and DHCP on a second, a one-shot
// workload exiting 3.
func TestBootStaticIPOneShotExit(t *testing.T) {
	img := testImage(t)
	const mac, dhcpMAC = "52:54:00:12:34:56", "52:54:00:12:34:57"
	vm := bootVM(t, img, vmSpec{
		nicMACs: []string{mac, dhcpMAC},
		cfg: guestproto.Config{
			Hostname: "vm-exit",
			NICs: []guestproto.NIC{
				{MAC: netaddr.MustParseMAC(mac), Address: netip.MustParsePrefix("10.42.0.2/24"), Gateway: netip.MustParseAddr("10.42.0.1")},
				{MAC: netaddr.MustParseMAC(dhcpMAC), DHCP: true},
			},
			Command: []string{"sh", "-c", `ping -c 1 -W 1 10.42.0.1 >/dev/null 2>&1; echo "hostname=$(hostname) greeting=$GREETING"; cat /etc/resolv.conf; ip -4 addr show dev eth1; exit 3`},
			Env:     map[string]string{"GREETING": "hi"},
			OneShot: true,
		},
	})
	dhcpDone := make(chan int, 1)
	go serveDHCP(t, vm.nics[1], vm.nicQEMU[1], net.IPv4(10, 43, 0, 50), net.IPv4(10, 43, 0, 1), dhcpDone)
	agent := vm.dialAgent(30 * time.Second)
	msgs := agent.until(t, bootTimeout, isExit)
	var ready *guestproto.Status
	for _, m := range msgs {
		if m.Type == guestproto.TypeError {
			t.Fatalf("guest reported an error: %s", m.Error)
		}
		if isReady(m) && ready == nil {
			ready = m.Status
		}
	}
	if ready == nil {
		t.Fatalf("no ready status before exit: %+v", msgs)
	}
	if got := ready.Addresses[mac]; got != "10.42.0.2" {
		t.Errorf("ready addresses = %v, want %s → 10.42.0.2", ready.Addresses, mac)
	}
	if got := ready.Addresses[dhcpMAC]; got != "10.43.0.50" {
		t.Errorf("ready addresses = %v, want %s → 10.43.0.50 (DHCP)", ready.Addresses, dhcpMAC)
	}
	last := msgs[len(msgs)-1]
	if last.Type != guestproto.TypeExit || last.Status.ExitCode != 3 {
		t.Errorf("last message = %+v, want exit with code 3", last)
	}
	err, exited := vm.waitExit(bootTimeout)
	if !exited {
		t.Fatal("VM did not power off after the one-shot workload exited")
	}
	if err != nil {
		t.Errorf("qemu exited with %v, want 0 (guest power-off)", err)
	}
	console := vm.consoleText()
	for _, want := range []string{"hostname=vm-exit greeting=hi", "nameserver 10.43.0.1", "inet 10.43.0.50/24"} {
		if !strings.Contains(console, want) {
			t.Errorf("console lacks %q (hostname, env, DHCP's DNS and address)", want)
		}
	}
	vm.nics[1].Close()
	if acks := <-dhcpDone; acks != 1 {
		t.Errorf("DHCP server sent %d ACKs, want 1", acks)
	}
	// The NIC really carries the address: the ping made the guest ARP for
	// the gateway from 10.42.0.2 with its MAC.
	hw, _ := net.ParseMAC(mac)
	if !sawARP(t, vm.nics[0], hw, net.IPv4(10, 42, 0, 2), net.IPv4(10, 42, 0, 1)) {
		t.Error("no ARP request from 10.42.0.2 for 10.42.0.1 on the NIC")
	}
}

// sawARP drains the NIC socket looking for an ARP request from (mac, ip)
// asking for target.
func sawARP(t *testing.T, c *net.UnixConn, mac net.HardwareAddr, ip, target net.IP) bool {
	buf := make([]byte, 2048)
	for {
		c.SetReadDeadline(time.Now().Add(2 * time.Second))
		n, _, err := c.ReadFromUnix(buf)
		if err != nil {
			return false
		}
		f := buf[:n]
		if len(f) < 42 || binary.BigEndian.Uint16(f[12:14]) != 0x0806 {
			continue
		}
		arp := f[14:]
		if binary.BigEndian.Uint16(arp[6:8]) == 1 && bytes.Equal(arp[8:14], mac) &&
			net.IP(arp[14:18]).Equal(ip) && net.IP(arp[24:28]).Equal(target) {
			return true
		}
	}
}

// Boot 2: a host-formatted volume mounted by serial, a long-running
// workload, a host that reconnects (and gets a hello with the current
// state), and a graceful poweroff that stops the workload, unmounts and
// powers the VM off.
func TestBootVolumeReconnectPoweroff(t *testing.T) {
	img := testImage(t)
	vol := makeExt4(t, map[string]string{"hello.txt": "hello from the host volume\n"})
	vm := bootVM(t, img, vmSpec{
		disks: []vmDisk{{path: vol, serial: "vol-data"}},
		cfg: guestproto.Config{
			Hostname: "vm-vol",
			Mounts:   []guestproto.Mount{{Source: "disk:vol-data", Target: "/data", Format: true}},
			Command:  []string{"sh", "-c", "cat /data/hello.txt; echo written-by-guest > /data/guest.txt; exec sleep 1000"},
		},
	})
	agent := vm.dialAgent(30 * time.Second)
	msgs := agent.until(t, bootTimeout, isReady)
	for _, m := range msgs {
		if m.Type == guestproto.TypeError {
			t.Fatalf("guest reported an error: %s", m.Error)
		}
	}
	if !vm.waitConsole("hello from the host volume", 30*time.Second) {
		t.Fatal("the workload did not print the volume's file")
	}
	// Reconnect after a pause: the guest notices the host going and
	// coming back (POLLHUP set, then cleared) and sends a hello with the
	// current state on its own.
	agent.c.Close()
	time.Sleep(time.Second)
	agent = vm.dialAgent(10 * time.Second)
	hello := agent.next(t, 30*time.Second)
	if hello.Type != guestproto.TypeHello || hello.Status == nil || !hello.Status.Ready || hello.Status.Exited {
		t.Fatalf("after reconnect got %+v, want hello with ready, not exited", hello)
	}
	// Reconnect at once: the guest may see neither transition, so the
	// host asks with a hello of its own and gets the state back.
	agent.c.Close()
	agent = vm.dialAgent(10 * time.Second)
	agent.send(t, guestproto.Message{Type: guestproto.TypeHello})
	msgs = agent.until(t, 30*time.Second, func(m guestproto.Message) bool { return m.Type == guestproto.TypeHello })
	if st := msgs[len(msgs)-1].Status; st == nil || !st.Ready {
		t.Fatalf("hello after a quick reconnect = %+v", msgs)
	}
	time.Sleep(200 * time.Millisecond) // let the workload's write land before stopping it
	agent.send(t, guestproto.Message{Type: guestproto.TypePoweroff})
	msgs = agent.until(t, bootTimeout, isExit)
	if code := msgs[len(msgs)-1].Status.ExitCode; code != 143 {
		t.Errorf("workload exit code %d, want 143 (SIGTERM)", code)
	}
	err, exited := vm.waitExit(bootTimeout)
	if !exited {
		t.Fatal("VM did not power off on request")
	}
	if err != nil {
		t.Errorf("qemu exited with %v, want 0", err)
	}
	// The guest synced and unmounted: its write is on the volume.
	out, err := exec.Command("debugfs", "-R", "cat /guest.txt", vol).Output()
	if err != nil {
		t.Fatalf("debugfs (apt package e2fsprogs): %v", err)
	}
	if string(out) != "written-by-guest\n" {
		t.Errorf("guest's file on the volume = %q", out)
	}
}

// Boot 3: a bring-up failure (a volume that was never formatted) is
// reported, not a kernel panic, and the VM still powers off on request.
func TestBootReportsBringUpError(t *testing.T) {
	img := testImage(t)
	blank := filepath.Join(t.TempDir(), "blank.img")
	if err := os.WriteFile(blank, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(blank, 4<<20); err != nil {
		t.Fatal(err)
	}
	vm := bootVM(t, img, vmSpec{
		disks: []vmDisk{{path: blank, serial: "vol-blank"}},
		cfg: guestproto.Config{
			Hostname: "vm-err",
			Mounts:   []guestproto.Mount{{Source: "disk:vol-blank", Target: "/data", Format: true}},
			Command:  []string{"sh", "-c", "echo must-not-run"},
		},
	})
	agent := vm.dialAgent(30 * time.Second)
	msgs := agent.until(t, bootTimeout, func(m guestproto.Message) bool {
		return m.Type == guestproto.TypeError || (m.Status != nil && m.Status.Error != "")
	})
	last := msgs[len(msgs)-1]
	text := last.Error
	if last.Status != nil && text == "" {
		text = last.Status.Error
	}
	if !strings.Contains(text, "formatted on the host") {
		t.Errorf("error = %q, want it to say the volume was not formatted", text)
	}
	agent.send(t, guestproto.Message{Type: guestproto.TypePoweroff})
	err, exited := vm.waitExit(bootTimeout)
	if !exited {
		t.Fatal("VM did not power off after a failed bring-up")
	}
	if err != nil {
		t.Errorf("qemu exited with %v, want 0", err)
	}
	if strings.Contains(vm.consoleText(), "must-not-run") {
		t.Error("the workload ran although bring-up failed")
	}
	if strings.Contains(vm.consoleText(), "Kernel panic") {
		t.Error("kernel panicked")
	}
}

// makeExt4 makes a small ext4 image holding files, as the host formats
// volumes (mkfs.ext4 -d).
func makeExt4(t *testing.T, files map[string]string) string {
	t.Helper()
	src := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(src, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	img := filepath.Join(t.TempDir(), "vol.img")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, 16<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-d", src, img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4 (apt package e2fsprogs): %v: %s", err, out)
	}
	return img
}
