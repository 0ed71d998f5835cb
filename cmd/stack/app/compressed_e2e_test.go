package app

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/stackvm/stack/disks"
	"github.com/stackvm/stack/internal/filenames"
)

const compressedStack = `variable "image" {
  type = string
}

variable "dir" {
  type = string
}

network "lan" {
  subnet = "10.63.0.0/24"
}

vm "zst" {
  kernel    = "${var.image}/vmlinuz"
  initramfs = "${var.image}/initrd.img"
  root_disk = "${var.dir}/debian-12.raw.zst"
  memory_mb = 512
  network "lan" {}
  ready {
    timeout = "15m"
  }
}
`

// compressFile writes src compressed by w's maker to dst.
func compressFile(t *testing.T, src, dst string, wrap func(io.Writer) (io.WriteCloser, error)) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	w, err := wrap(out)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(w, in); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestCompressedRootDisk boots the Debian image given as a zstd root_disk:
// it is decompressed into the cache under its digest, the VM's overlay is
// backed by that file, and the guest comes up. One boot is enough here:
// gzip and xz differ only in the decompressor, which the tests of package
// decompress cover, and a Debian boot costs a minute or more under TCG.
func TestCompressedRootDisk(t *testing.T) {
	requireVMs(t)
	image := debianImageDir(t)
	dir := t.TempDir()
	cache := t.TempDir()
	t.Setenv("STACK_CACHE_DIR", cache)
	raw := filepath.Join(image, "debian-12.raw")
	compressFile(t, raw, filepath.Join(dir, "debian-12.raw.zst"), func(w io.Writer) (io.WriteCloser, error) {
		return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest))
	})
	file := filepath.Join(dir, "stack.hcl")
	writeFile(t, file, compressedStack)
	c := newCLI(t, fmt.Sprintf("cz-%d", os.Getpid()))
	c.mustRun("-f", file, "--var", "image="+image, "--var", "dir="+dir, "up", "--progress", "plain")

	imgs, _ := filepath.Glob(filepath.Join(filenames.DiskCache(cache), "sha256-*[0-9a-f]"))
	if len(imgs) != 1 {
		t.Fatalf("decompressed images in the cache: %v, want the one of the compressed file", imgs)
	}
	for _, vm := range []string{"zst"} {
		if r := c.run("exec", vm, "--", "cat", "/etc/debian_version"); r.code != 0 || r.stdout == "" {
			t.Errorf("%s: %+v", vm, r)
		}
		overlay := filepath.Join(c.stateDir, c.ns, filenames.VMDir, vm, filenames.OverlayDisk)
		info, err := disks.Info(t.Context(), overlay)
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Dir(info.BackingFilename) != filenames.DiskCache(cache) {
			t.Errorf("%s: overlay backed by %s, want a decompressed image in the cache", vm, info.BackingFilename)
		}
	}
}
