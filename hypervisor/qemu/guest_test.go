package qemu

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/u-root/u-root/pkg/cpio"

	"github.com/stackvm/stack/internal/filenames"
)

// The integration tests boot a Debian cloud kernel with a tiny busybox
// initramfs of their own. The kernel comes from the distribution's package
// (apt-get download + dpkg-deb -x, cached under the stack cache dir); the
// initramfs holds busybox-static, the virtio modules it needs and testInit.

// testInit is PID 1 of the test guest. It ignores ACPI (no acpid), so a
// graceful stop only works through its tiny agent, which speaks just enough
// of guestproto: a hello whenever the host connects or sends any line
// (the host asks with its own hello), and poweroff.
const testInit = `#!/bin/sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in virtio_ring virtio virtio_mmio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci virtio_blk virtio_console; do
	insmod /lib/modules/$m.ko 2>/dev/null
done
if grep -q stacktest.poweroff /proc/cmdline; then
	echo STACKTEST-POWEROFF-NOW
	poweroff -f
fi
echo STACKTEST-BOOTED
sleep 0.2 # let devices settle
for b in /sys/block/vd*; do
	[ -e "$b" ] || continue
	s=$(cat $b/serial 2>/dev/null)
	echo "STACKTEST-DISK $(basename $b) serial=$s"
	if [ "$s" = stack-config ]; then
		echo "STACKTEST-CONFIG $(head -c 512 /dev/$(basename $b) | tr -d '\000')"
	fi
done
port=
for p in /sys/class/virtio-ports/*; do
	[ -e "$p/name" ] && [ "$(cat $p/name)" = org.stackvm.agent ] && port=/dev/$(basename $p)
done
if [ -n "$port" ]; then
	echo "STACKTEST-AGENT $port"
	(
		exec 3<>$port
		while :; do
			# Blocks until the host connects: the write is the hello.
			echo '{"type":"hello","status":{"ready":true,"exited":false,"exit_code":0}}' >&3
			if read -r line <&3; then
				case "$line" in
				*'"poweroff"'*) echo STACKTEST-AGENT-POWEROFF; poweroff -f ;;
				esac
			else
				sleep 0.05
			fi
		done
	) &
fi
echo STACKTEST-READY
while :; do
	if read -r line </dev/ttyS0; then echo "STACKTEST-GOT:$line"; else sleep 1; fi
done
`

var testModules = []string{
	"kernel/drivers/virtio/virtio_ring.ko",
	"kernel/drivers/virtio/virtio.ko",
	"kernel/drivers/virtio/virtio_mmio.ko",
	"kernel/drivers/virtio/virtio_pci_legacy_dev.ko",
	"kernel/drivers/virtio/virtio_pci_modern_dev.ko",
	"kernel/drivers/virtio/virtio_pci.ko",
	"kernel/drivers/block/virtio_blk.ko",
	"kernel/drivers/char/virtio_console.ko",
}

var (
	guestOnce                sync.Once
	guestKernel, guestInitrd string
	guestErr                 error
)

// testGuest returns the kernel and initramfs of the test guest, fetching
// and building them on first use. A failure is a test failure: the
// integration tests need them.
func testGuest(t testing.TB) (kernel, initramfs string) {
	t.Helper()
	guestOnce.Do(func() { guestKernel, guestInitrd, guestErr = buildTestGuest() })
	if guestErr != nil {
		t.Fatalf("test guest unavailable (needs apt-get with package lists, dpkg-deb and busybox-static): %v", guestErr)
	}
	return guestKernel, guestInitrd
}

func buildTestGuest() (string, string, error) {
	cache := filepath.Join(filenames.CacheRoot(), "test", "qemu-driver")
	if err := os.MkdirAll(cache, 0o700); err != nil {
		return "", "", fmt.Errorf("create test cache: %w", err)
	}
	root, err := cloudKernel(cache)
	if err != nil {
		return "", "", err
	}
	kernels, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(kernels) != 1 {
		return "", "", fmt.Errorf("find kernel in %s: %d candidates", root, len(kernels))
	}
	mods, _ := filepath.Glob(filepath.Join(root, "lib", "modules", "*"))
	if len(mods) != 1 {
		return "", "", fmt.Errorf("find modules in %s: %d candidates", root, len(mods))
	}
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return "", "", fmt.Errorf("read busybox (install busybox-static): %w", err)
	}
	recs := []cpio.Record{
		cpio.Directory("bin", 0o755), cpio.Directory("dev", 0o755), cpio.Directory("proc", 0o755),
		cpio.Directory("sys", 0o755), cpio.Directory("lib", 0o755), cpio.Directory("lib/modules", 0o755),
		cpio.Directory("sbin", 0o755), cpio.Directory("usr", 0o755), cpio.Directory("usr/bin", 0o755),
		cpio.Directory("usr/sbin", 0o755), cpio.Directory("tmp", 0o1777),
		cpio.StaticRecord(bb, cpio.Info{Name: "bin/busybox", Mode: cpio.S_IFREG | 0o755}),
		cpio.Symlink("bin/sh", "busybox"),
		cpio.StaticFile("init", testInit, 0o755),
	}
	for _, m := range testModules {
		b, err := os.ReadFile(filepath.Join(mods[0], m))
		if err != nil {
			return "", "", fmt.Errorf("read module: %w", err)
		}
		recs = append(recs, cpio.StaticRecord(b, cpio.Info{Name: "lib/modules/" + filepath.Base(m), Mode: cpio.S_IFREG | 0o644}))
	}
	var buf bytes.Buffer
	w := cpio.Newc.Writer(&buf)
	if err := cpio.WriteRecords(w, recs); err != nil {
		return "", "", fmt.Errorf("write initramfs: %w", err)
	}
	if err := cpio.WriteTrailer(w); err != nil {
		return "", "", fmt.Errorf("write initramfs: %w", err)
	}
	sum := sha256.Sum256(buf.Bytes())
	initrd := filepath.Join(cache, "initramfs-"+hex.EncodeToString(sum[:8])+".cpio")
	if _, err := os.Stat(initrd); err != nil {
		tmp := initrd + ".tmp"
		if err := os.WriteFile(tmp, buf.Bytes(), 0o600); err != nil {
			return "", "", fmt.Errorf("write initramfs: %w", err)
		}
		if err := os.Rename(tmp, initrd); err != nil {
			return "", "", fmt.Errorf("write initramfs: %w", err)
		}
	}
	return kernels[0], initrd, nil
}

// cloudKernel unpacks the Debian cloud kernel package that the
// linux-image-cloud-amd64 metapackage depends on, once per cache.
func cloudKernel(cache string) (string, error) {
	// Any kernel already unpacked will do (apt-cache is slow on a loaded
	// machine); delete the cache dir to pick up a newer one.
	if have, _ := filepath.Glob(filepath.Join(cache, "linux-image-*", "boot")); len(have) > 0 {
		return filepath.Dir(have[0]), nil
	}
	out, err := exec.Command("apt-cache", "depends", "linux-image-cloud-amd64").Output()
	if err != nil {
		return "", fmt.Errorf("apt-cache depends linux-image-cloud-amd64: %w", err)
	}
	var pkg string
	for _, l := range strings.Split(string(out), "\n") {
		if p, ok := strings.CutPrefix(strings.TrimSpace(l), "Depends: "); ok && strings.HasPrefix(p, "linux-image-") {
			pkg = p
			break
		}
	}
	if pkg == "" {
		return "", fmt.Errorf("no kernel package in apt-cache output %q (run apt-get update)", out)
	}
	root := filepath.Join(cache, pkg)
	if _, err := os.Stat(filepath.Join(root, "boot")); err == nil {
		return root, nil
	}
	dl, err := os.MkdirTemp(cache, "dl-")
	if err != nil {
		return "", fmt.Errorf("create download dir: %w", err)
	}
	defer os.RemoveAll(dl)
	cmd := exec.Command("apt-get", "download", pkg)
	cmd.Dir = dl
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s: %w: %s", pkg, err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
	if len(debs) != 1 {
		return "", fmt.Errorf("apt-get download %s: %d .deb files", pkg, len(debs))
	}
	x := filepath.Join(dl, "x")
	if out, err := exec.Command("dpkg-deb", "-x", debs[0], x).CombinedOutput(); err != nil {
		return "", fmt.Errorf("dpkg-deb -x %s: %w: %s", debs[0], err, out)
	}
	if err := os.Rename(x, root); err != nil {
		return "", fmt.Errorf("move kernel into cache: %w", err)
	}
	return root, nil
}
