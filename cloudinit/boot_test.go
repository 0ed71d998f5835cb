package cloudinit_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stackvm/stack/cloudinit"
	"github.com/stackvm/stack/disks"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/netaddr"
)

// Files of the image made by scripts/build-debian-image.sh.
const (
	imageName   = "debian-12"
	imageRoot   = "debian-12.raw"
	imageKernel = "vmlinuz"
	imageInitrd = "initrd.img"
	imageLabel  = "stack-root"
)

// debianImage builds the Debian test image, or reuses the cached one (the
// script returns at once when its key matches), and returns its directory:
// $STACK_DEBIAN_IMAGE_DIR (the Makefile sets it), else images/debian-12
// under the cache root.
func debianImage(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("STACK_DEBIAN_IMAGE_DIR")
	if dir == "" {
		dir = filenames.Image(filenames.CacheRoot(), imageName)
	}
	script, err := filepath.Abs(filepath.Join("..", "scripts", "build-debian-image.sh"))
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cmd := exec.Command("bash", script, dir)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("build the Debian image (needs root, debootstrap and a Debian mirror; make debian-image): %v\n%s", err, out)
	}
	t.Logf("Debian image ready in %v: %s", time.Since(start).Round(time.Millisecond), strings.TrimSpace(string(out)))
	return dir
}

func sha256File(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum
}

const bootUserData = `#cloud-config
runcmd:
  - [sh, -c, 'echo "RUNCMD hostname=$(hostname) fqdn=$(hostname -f)" >/dev/console']
  - [sh, -c, 'sed "s/^/HOSTS /" /etc/hosts >/dev/console']
  - [sh, -c, 'echo "ADDR $(ip -4 -o addr show dev eth0 | tr -s " " | cut -d" " -f4)" >/dev/console']
  - [sh, -c, 'echo "ROUTE $(ip route show default)" >/dev/console']
  - [sh, -c, 'sed "s/^/RESOLV /" /etc/resolv.conf >/dev/console']
  - [sh, -c, 'sed "s/^/AUTHKEY /" /home/debian/.ssh/authorized_keys >/dev/console']
  - [sh, -c, 'echo "MOUNT $(findmnt -n -o FSTYPE,TARGET /data)" >/dev/console']
  - [sh, -c, 'echo "WAITER $(systemctl is-active stack-ready.service)" >/dev/console']
  - [sh, -c, 'echo written-by-the-guest >/data/hello && umount /data && echo UMOUNTED >/dev/console']
final_message: USER-FINAL-MESSAGE
`

// TestBootDebianWithSeed boots the Debian image under QEMU (TCG) from a
// qcow2 overlay with a seed and a volume, and checks that cloud-init
// applied the seed: the ready line, the hostname, /etc/hosts, the static
// address, gateway and nameserver, the SSH key, the volume's mount, the
// user's runcmd and final_message. The base image must be unchanged.
// One boot: about 30-60 s on an idle machine, minutes on a loaded one.
func TestBootDebianWithSeed(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a VM")
	}
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img", "mkfs.ext4", "debugfs"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found (make deps installs qemu-system-x86, qemu-utils, e2fsprogs): %v", tool, err)
		}
	}
	img := debianImage(t)
	base := filepath.Join(img, imageRoot)
	baseSum := sha256File(t, base)

	ctx := context.Background()
	dir := t.TempDir()
	overlay := filepath.Join(dir, filenames.OverlayDisk)
	if err := disks.CreateOverlay(ctx, base, overlay); err != nil {
		t.Fatal(err)
	}
	volume := filepath.Join(dir, "data.img")
	if _, err := disks.EnsureVolume(ctx, volume, 64<<20, disks.FormatExt4); err != nil {
		t.Fatal(err)
	}
	const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq3UPQ4S0m1pY5GHWjXmIuJjP3ZfYbT7t0n4D3D6b0L boot@test"
	in := cloudinit.Input{
		VMName: "ci-vm", Namespace: "citest",
		// QEMU's user-mode network (restricted: nothing leaves the host)
		// gives a real NIC; its gateway and DNS addresses are fixed.
		NICs: []cloudinit.NIC{{
			MAC:     netaddr.MustParseMAC("52:54:00:c1:00:01"),
			Address: netip.MustParsePrefix("10.0.2.15/24"),
			Gateway: netip.MustParseAddr("10.0.2.2"),
			DNS:     []netip.Addr{netip.MustParseAddr("10.0.2.3")},
		}},
		Hosts:             []cloudinit.Host{{Name: "db", IP: netip.MustParseAddr("10.0.2.20")}},
		SSHAuthorizedKeys: []string{key},
		Mounts:            []cloudinit.Mount{{Serial: "vol-data", GuestPath: "/data"}},
		UserData:          bootUserData,
	}
	seedPath := filepath.Join(dir, filenames.SeedISO)
	seed, _, err := cloudinit.EnsureISO(in, seedPath)
	if err != nil {
		t.Fatal(err)
	}

	consolePath := filepath.Join(dir, filenames.ConsoleLog)
	qemu := exec.Command("qemu-system-x86_64",
		"-machine", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "512",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-chardev", "file,id=con0,path="+consolePath, "-serial", "chardev:con0",
		"-kernel", filepath.Join(img, imageKernel), "-initrd", filepath.Join(img, imageInitrd),
		"-append", "root=LABEL="+imageLabel+" console=ttyS0 panic=-1",
		"-drive", "file="+overlay+",format=qcow2,if=none,id=root",
		"-device", "virtio-blk-pci,drive=root,serial=root",
		"-drive", "file="+seedPath+",format=raw,if=none,id=seed,readonly=on",
		"-device", "virtio-blk-pci,drive=seed,serial=cidata",
		"-drive", "file="+volume+",format=raw,if=none,id=vol",
		"-device", "virtio-blk-pci,drive=vol,serial=vol-data",
		"-netdev", "user,id=net0,restrict=on",
		"-device", "virtio-net-pci,netdev=net0,mac="+in.NICs[0].MAC.String(),
	)
	var stderr bytes.Buffer
	qemu.Stderr = &stderr
	qemu.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := qemu.Start(); err != nil {
		t.Fatal(err)
	}
	var waitErr error
	exited := make(chan struct{})
	go func() { waitErr = qemu.Wait(); close(exited) }()
	stop := func() {
		qemu.Process.Kill() // an error only means it is gone already
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			t.Error("QEMU did not exit after SIGKILL")
		}
	}
	t.Cleanup(stop)

	console := func() string {
		b, _ := os.ReadFile(consolePath)
		return string(b)
	}
	// The whole console on failure: the start of the boot matters too.
	tail := func() string { return console() }
	ready, failed := cloudinit.ReadyLine(seed.InstanceID), cloudinit.FailedLine(seed.InstanceID)
	deadline := time.After(10 * time.Minute) // TCG on a loaded 2-core machine: 7 min seen
wait:
	for {
		select {
		case <-exited:
			t.Fatalf("QEMU exited before the ready line: %v\n%s\nconsole:\n%s", waitErr, stderr.String(), tail())
		case <-deadline:
			t.Fatalf("no ready line after %v; QEMU stderr: %s; console:\n%s", time.Since(start), stderr.String(), tail())
		case <-time.After(500 * time.Millisecond):
			c := console()
			if strings.Contains(c, failed) {
				t.Fatalf("cloud-init reported errors:\n%s", tail())
			}
			if strings.Contains(c, ready) {
				break wait
			}
		}
	}
	t.Logf("ready line after %v", time.Since(start).Round(time.Second))
	stop()

	// Lines as the guest printed them, white space normalised (cloud-init
	// rewrites /etc/hosts with tabs).
	lines := map[string]bool{}
	for _, l := range strings.Split(console(), "\n") {
		lines[strings.Join(strings.Fields(l), " ")] = true
	}
	for _, want := range []string{
		"RUNCMD hostname=ci-vm fqdn=ci-vm.citest.internal",
		"HOSTS # BEGIN stack-managed hosts",
		"HOSTS 10.0.2.20 db db.citest.internal",
		"HOSTS 127.0.1.1 ci-vm.citest.internal ci-vm",
		"ADDR 10.0.2.15/24",
		"RESOLV nameserver 10.0.2.3",
		"AUTHKEY " + key,
		"MOUNT ext4 /data",
		"UMOUNTED",
		"WAITER active", // the ready waiter runs while the user's runcmd does
		ready,
	} {
		if !lines[want] {
			t.Errorf("console lacks the line %q", want)
		}
	}
	if !strings.Contains(console(), "ROUTE default via 10.0.2.2 dev eth0") {
		t.Error("console lacks the default route via 10.0.2.2")
	}
	// final_message is the user's and comes before the ready line.
	if i, j := strings.Index(console(), "USER-FINAL-MESSAGE"), strings.Index(console(), ready); i < 0 || i > j {
		t.Errorf("user's final_message missing or after the ready line (at %d, ready at %d)", i, j)
	}
	if t.Failed() {
		t.Logf("console:\n%s", tail())
	}

	// The guest's write went to the volume, found by its serial.
	out, err := exec.Command("debugfs", "-R", "cat /hello", volume).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "written-by-the-guest") {
		t.Errorf("volume lacks the guest's file: %v\n%s", err, out)
	}
	if sha256File(t, base) != baseSum {
		t.Error("the base image changed")
	}
}
