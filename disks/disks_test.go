package disks

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// These tests run the real qemu-img, qemu-io, mkfs.ext4, e2fsck, resize2fs
// and debugfs (Debian: qemu-utils, e2fsprogs); they are fast and boot no VM.

func needTools(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found: install qemu-utils and e2fsprogs (make deps): %v", tool, err)
		}
	}
}

func runT(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return string(out)
}

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

func checkMode(t *testing.T, path string) {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("%s: mode %v, want 0600", path, st.Mode().Perm())
	}
}

// noTemps fails when a temporary file was left in dir.
func noTemps(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.Contains(e.Name(), ".tmp-") {
			t.Errorf("temporary file left behind: %s", e.Name())
		}
	}
}

func TestCreateOverlayKeepsBaseUnchanged(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	ctx := context.Background()
	for _, baseFormat := range []string{FormatRaw, FormatQCOW2} {
		t.Run(baseFormat, func(t *testing.T) {
			dir := t.TempDir()
			base := filepath.Join(dir, "base.img")
			runT(t, "qemu-img", "create", "-q", "-f", baseFormat, base, "8M")
			runT(t, "qemu-io", "-f", baseFormat, "-c", "write -P 0x11 0 1M", base)
			before := fileHash(t, base)

			overlay := filepath.Join(dir, "vm", "root.qcow2")
			if err := CreateOverlay(ctx, base, overlay); err != nil {
				t.Fatal(err)
			}
			checkMode(t, overlay)
			info, err := Info(ctx, overlay)
			if err != nil {
				t.Fatal(err)
			}
			if info.Format != FormatQCOW2 || info.BackingFilename != base || info.BackingFormat != baseFormat || info.VirtualSize != 8<<20 {
				t.Errorf("overlay info = %+v, want qcow2 backed by %s (%s), 8 MiB", info, base, baseFormat)
			}

			// Write through the overlay: the overlay sees the new bytes and
			// the base's old ones elsewhere; the base file is unchanged.
			runT(t, "qemu-io", "-f", FormatQCOW2, "-c", "write -P 0xab 0 64k", overlay)
			runT(t, "qemu-io", "-f", FormatQCOW2, "-c", "read -P 0xab 0 64k", "-c", "read -P 0x11 64k 64k", overlay)
			if fileHash(t, base) != before {
				t.Error("base image changed after writing through the overlay")
			}
			noTemps(t, filepath.Dir(overlay))
		})
	}
}

func TestCreateOverlayRelativeBaseIsRecordedAbsolute(t *testing.T) {
	needTools(t, "qemu-img")
	dir := t.TempDir()
	runT(t, "qemu-img", "create", "-q", "-f", "raw", filepath.Join(dir, "base.raw"), "1M")
	t.Chdir(dir)
	overlay := filepath.Join(t.TempDir(), "root.qcow2") // another directory
	if err := CreateOverlay(context.Background(), "base.raw", overlay); err != nil {
		t.Fatal(err)
	}
	info, err := Info(context.Background(), overlay)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "base.raw"); info.BackingFilename != want {
		t.Errorf("backing file = %q, want %q", info.BackingFilename, want)
	}
}

func TestCreateOverlayRejectsBadBase(t *testing.T) {
	needTools(t, "qemu-img")
	ctx := context.Background()
	dir := t.TempDir()
	vmdk := filepath.Join(dir, "base.vmdk")
	runT(t, "qemu-img", "create", "-q", "-f", "vmdk", vmdk, "1M")
	for name, base := range map[string]string{
		"missing":     filepath.Join(dir, "nope.raw"),
		"directory":   dir,
		"unsupported": vmdk,
	} {
		t.Run(name, func(t *testing.T) {
			overlay := filepath.Join(dir, name+".qcow2")
			if err := CreateOverlay(ctx, base, overlay); err == nil {
				t.Fatal("CreateOverlay succeeded")
			}
			if _, err := os.Stat(overlay); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("overlay exists after failure: %v", err)
			}
		})
	}
	noTemps(t, dir)
}

func TestEnsureOverlay(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io")
	ctx := context.Background()
	dir := t.TempDir()
	base1, base2 := filepath.Join(dir, "a.raw"), filepath.Join(dir, "b.raw")
	runT(t, "qemu-img", "create", "-q", "-f", "raw", base1, "1M")
	runT(t, "qemu-img", "create", "-q", "-f", "raw", base2, "2M")
	overlay := filepath.Join(dir, "root.qcow2")

	if created, err := EnsureOverlay(ctx, base1, overlay); err != nil || !created {
		t.Fatalf("first EnsureOverlay = %v, %v; want created", created, err)
	}
	runT(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 4k", overlay)
	if created, err := EnsureOverlay(ctx, base1, overlay); err != nil || created {
		t.Fatalf("second EnsureOverlay = %v, %v; want kept", created, err)
	}
	// Kept means the guest's writes are still there.
	runT(t, "qemu-io", "-f", "qcow2", "-c", "read -P 0x5a 0 4k", overlay)

	if created, err := EnsureOverlay(ctx, base2, overlay); err != nil || !created {
		t.Fatalf("EnsureOverlay with another base = %v, %v; want recreated", created, err)
	}
	info, err := Info(ctx, overlay)
	if err != nil {
		t.Fatal(err)
	}
	if info.BackingFilename != base2 || info.VirtualSize != 2<<20 {
		t.Errorf("recreated overlay = %+v, want backed by %s", info, base2)
	}
}

var blockCountRe = regexp.MustCompile(`(?m)^Block count:\s+(\d+)`)

func ext4Blocks(t *testing.T, path string) int {
	t.Helper()
	m := blockCountRe.FindStringSubmatch(runT(t, "dumpe2fs", "-h", path))
	if m == nil {
		t.Fatalf("no block count in dumpe2fs -h %s", path)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

func TestEnsureVolumeExt4(t *testing.T) {
	needTools(t, "mkfs.ext4", "e2fsck", "debugfs", "dumpe2fs")
	ctx := context.Background()
	dir := t.TempDir()
	vol := filepath.Join(dir, "volumes", "data.img")
	const size = 64<<20 + 100 // not a whole sector: rounded up

	created, err := EnsureVolume(ctx, vol, size, FormatExt4)
	if err != nil || !created {
		t.Fatalf("EnsureVolume = %v, %v; want created", created, err)
	}
	checkMode(t, vol)
	st, err := os.Stat(vol)
	if err != nil {
		t.Fatal(err)
	}
	if want := int64(64<<20 + 512); st.Size() != want {
		t.Errorf("size = %d, want %d", st.Size(), want)
	}
	if used := st.Sys().(*syscall.Stat_t).Blocks * 512; used > st.Size()/4 {
		t.Errorf("volume uses %d bytes on disk of %d: not sparse", used, st.Size())
	}
	runT(t, "e2fsck", "-f", "-n", vol) // a clean ext4 file system
	if out := runT(t, "debugfs", "-R", "stat /", vol); !regexp.MustCompile(`User:\s+0\s+Group:\s+0`).MatchString(out) {
		t.Errorf("root directory not owned by 0:0:\n%s", out)
	}

	// Data written into the volume survives a second EnsureVolume.
	src := filepath.Join(dir, "hello.txt")
	if err := os.WriteFile(src, []byte("kept\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	runT(t, "debugfs", "-w", "-R", "write "+src+" hello.txt", vol)
	created, err = EnsureVolume(ctx, vol, 128<<20, FormatExt4)
	if err != nil || created {
		t.Fatalf("second EnsureVolume = %v, %v; want existing kept", created, err)
	}
	if out := runT(t, "debugfs", "-R", "cat /hello.txt", vol); !strings.Contains(out, "kept") {
		t.Errorf("file lost after second EnsureVolume: %q", out)
	}
	noTemps(t, filepath.Dir(vol))
}

func TestEnsureVolumeRawIsLeftAlone(t *testing.T) {
	vol := filepath.Join(t.TempDir(), "raw.img")
	created, err := EnsureVolume(context.Background(), vol, 1<<20, FormatRaw)
	if err != nil || !created {
		t.Fatalf("EnsureVolume = %v, %v", created, err)
	}
	b, err := os.ReadFile(vol)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) != 1<<20 || !bytes.Equal(b, make([]byte, 1<<20)) {
		t.Errorf("raw volume: %d bytes, want 1 MiB of zeros", len(b))
	}
}

func TestEnsureVolumeErrors(t *testing.T) {
	needTools(t, "mkfs.ext4")
	ctx := context.Background()
	dir := t.TempDir()
	cases := []struct {
		name   string
		size   int64
		format string
	}{
		{"bad format", 1 << 20, "xfs"},
		{"zero size", 0, FormatExt4},
		{"negative size", -1, FormatRaw},
		{"too small for ext4", 4096, FormatExt4}, // mkfs.ext4 fails
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			vol := filepath.Join(dir, strings.ReplaceAll(c.name, " ", "-")+".img")
			if _, err := EnsureVolume(ctx, vol, c.size, c.format); err == nil {
				t.Fatal("EnsureVolume succeeded")
			}
			if _, err := os.Stat(vol); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("volume exists after failure: %v", err)
			}
		})
	}
	noTemps(t, dir)
	if _, err := EnsureVolume(ctx, dir, 1<<20, FormatRaw); err == nil {
		t.Error("EnsureVolume on a directory succeeded")
	}
}

func TestGrowVolume(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io", "mkfs.ext4", "e2fsck", "resize2fs", "dumpe2fs", "debugfs")
	ctx := context.Background()
	dir := t.TempDir()

	t.Run("ext4", func(t *testing.T) {
		vol := filepath.Join(dir, "data.img")
		if _, err := EnsureVolume(ctx, vol, 32<<20, FormatExt4); err != nil {
			t.Fatal(err)
		}
		src := filepath.Join(dir, "f")
		if err := os.WriteFile(src, []byte("before grow\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		runT(t, "debugfs", "-w", "-R", "write "+src+" f", vol)
		blocks := ext4Blocks(t, vol)

		grown, err := GrowVolume(ctx, vol, 64<<20, FormatExt4)
		if err != nil || !grown {
			t.Fatalf("GrowVolume = %v, %v; want grown", grown, err)
		}
		st, _ := os.Stat(vol)
		if st.Size() != 64<<20 {
			t.Errorf("size = %d, want 64 MiB", st.Size())
		}
		if after := ext4Blocks(t, vol); after != 2*blocks {
			t.Errorf("file system has %d blocks after growing, want %d", after, 2*blocks)
		}
		runT(t, "e2fsck", "-f", "-n", vol)
		if out := runT(t, "debugfs", "-R", "cat /f", vol); !strings.Contains(out, "before grow") {
			t.Errorf("data lost by growing: %q", out)
		}

		if grown, err := GrowVolume(ctx, vol, 64<<20, FormatExt4); err != nil || grown {
			t.Errorf("GrowVolume to the same size = %v, %v; want no-op", grown, err)
		}
		if _, err := GrowVolume(ctx, vol, 32<<20, FormatExt4); !errors.Is(err, ErrShrink) {
			t.Errorf("shrinking: err = %v, want ErrShrink", err)
		}
		if st, _ := os.Stat(vol); st.Size() != 64<<20 {
			t.Errorf("refused shrink changed the size to %d", st.Size())
		}
	})

	t.Run("raw", func(t *testing.T) {
		vol := filepath.Join(dir, "raw.img")
		if _, err := EnsureVolume(ctx, vol, 1<<20, FormatRaw); err != nil {
			t.Fatal(err)
		}
		if grown, err := GrowVolume(ctx, vol, 3<<20, FormatRaw); err != nil || !grown {
			t.Fatalf("GrowVolume = %v, %v", grown, err)
		}
		if st, _ := os.Stat(vol); st.Size() != 3<<20 {
			t.Errorf("size = %d, want 3 MiB", st.Size())
		}
	})
}

// TestGrowVolumeRefusesVolumeInUse holds the volume open in a paused QEMU
// (no guest runs), as a running VM would.
func TestGrowVolumeRefusesVolumeInUse(t *testing.T) {
	needTools(t, "qemu-system-x86_64", "qemu-img", "qemu-io", "mkfs.ext4")
	ctx := context.Background()
	for _, format := range []string{FormatExt4, FormatRaw} {
		t.Run(format, func(t *testing.T) {
			vol := filepath.Join(t.TempDir(), "vol.img")
			if _, err := EnsureVolume(ctx, vol, 16<<20, format); err != nil {
				t.Fatal(err)
			}
			qemu := exec.Command("qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-S",
				"-nodefaults", "-display", "none", "-monitor", "none", "-serial", "none",
				"-drive", "file="+vol+",format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0")
			var stderr bytes.Buffer
			qemu.Stderr = &stderr
			if err := qemu.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() {
				qemu.Process.Kill()
				qemu.Wait()
			})
			// Wait until QEMU holds the lock: a write-mode open then fails.
			deadline := time.Now().Add(30 * time.Second)
			for exec.Command("qemu-io", "-f", "raw", "-c", "length", vol).Run() == nil {
				if time.Now().After(deadline) {
					t.Fatalf("QEMU did not lock the volume; stderr: %s", stderr.String())
				}
				time.Sleep(100 * time.Millisecond)
			}
			if _, err := GrowVolume(ctx, vol, 32<<20, format); err == nil {
				t.Fatal("GrowVolume of a volume in use succeeded")
			}
			if st, _ := os.Stat(vol); st.Size() != 16<<20 {
				t.Errorf("size changed to %d", st.Size())
			}
		})
	}
}

func TestRemove(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "scratch-x.img")
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Remove(p); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("file still there: %v", err)
	}
	if err := Remove(p); err != nil {
		t.Errorf("removing a missing file: %v", err)
	}
}

// The tools that parse a guest's file system when a volume grows do not
// run as root (where stack does): they get the volume as a descriptor and
// run as nobody, and the volume is root's, 0600, again afterwards.
func TestGrowVolumeToolsRunUnprivileged(t *testing.T) {
	needTools(t, "qemu-img", "qemu-io", "mkfs.ext4", "e2fsck", "resize2fs")
	if os.Geteuid() != 0 {
		t.Skip("stack runs the tools as itself when it is not root")
	}
	// Not t.TempDir: its parent is closed to the tools' user, who runs
	// the wrappers and appends to the record.
	dir, err := os.MkdirTemp("", "fstools")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	uids := filepath.Join(dir, "uids")
	for _, tool := range []*string{&e2fsck, &resize2f} {
		real, err := exec.LookPath(*tool)
		if err != nil {
			t.Fatal(err)
		}
		wrapper := filepath.Join(dir, filepath.Base(real))
		script := "#!/bin/sh\necho \"$(basename $0) $(id -u)\" >> " + uids + "\nexec " + real + " \"$@\"\n"
		if err := os.WriteFile(wrapper, []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func(old string) func() { return func() { *tool = old } }(*tool))
		*tool = wrapper
	}
	if err := os.WriteFile(uids, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chmod(uids, 0o666) // past the umask
	os.Chmod(dir, 0o755)
	vol := filepath.Join(t.TempDir(), "data.img")
	ctx := context.Background()
	if _, err := EnsureVolume(ctx, vol, 32<<20, FormatExt4); err != nil {
		t.Fatal(err)
	}
	if grown, err := GrowVolume(ctx, vol, 64<<20, FormatExt4); err != nil || !grown {
		t.Fatalf("GrowVolume = %v, %v", grown, err)
	}
	got, err := os.ReadFile(uids)
	if err != nil {
		t.Fatal(err)
	}
	runs := strings.Fields(string(got))
	if len(runs) != 4 {
		t.Fatalf("tool runs recorded: %q, want e2fsck and resize2fs", got)
	}
	for i := 0; i < len(runs); i += 2 {
		if runs[i+1] == "0" {
			t.Errorf("%s ran as root", runs[i])
		}
	}
	st, err := os.Stat(vol)
	if err != nil {
		t.Fatal(err)
	}
	if sys := st.Sys().(*syscall.Stat_t); sys.Uid != 0 || sys.Gid != 0 || st.Mode().Perm() != 0o600 {
		t.Errorf("the volume is %d:%d %v after growing, want 0:0 0600", sys.Uid, sys.Gid, st.Mode().Perm())
	}
	runT(t, "e2fsck", "-f", "-n", vol)
}
