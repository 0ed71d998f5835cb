package app

import (
	"compress/gzip"
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

vm "gz" {
  kernel    = "${var.image}/vmlinuz"
  initramfs = "${var.image}/initrd.img"
  root_disk = "${var.dir}/debian-12.raw.gz"
  memory_mb = 512
  network "lan" {}
  ready {
    timeout = "15m"
  }
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

// TestCompressedRootDisk boots the Debian image given as a gzip and as a
// zstd root_disk: each is decompressed into the cache under its digest,
// the VMs' overlays are backed by those files, and both guests come up.
func TestCompressedRootDisk(t *testing.T) {
	requireVMs(t)
	image := debianImageDir(t)
	dir := t.TempDir()
	cache := t.TempDir()
	t.Setenv("STACK_CACHE_DIR", cache)
	raw := filepath.Join(image, "debian-12.raw")
	compressFile(t, raw, filepath.Join(dir, "debian-12.raw.gz"), func(w io.Writer) (io.WriteCloser, error) {
		return gzip.NewWriterLevel(w, gzip.BestSpeed)
	})
	compressFile(t, raw, filepath.Join(dir, "debian-12.raw.zst"), func(w io.Writer) (io.WriteCloser, error) {
		return zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest))
	})
	file := filepath.Join(dir, "stack.hcl")
	writeFile(t, file, compressedStack)
	c := newCLI(t, fmt.Sprintf("cz-%d", os.Getpid()))
	c.mustRun("-f", file, "--var", "image="+image, "--var", "dir="+dir, "up", "--progress", "plain")

	imgs, _ := filepath.Glob(filepath.Join(filenames.DiskCache(cache), "sha256-*[0-9a-f]"))
	if len(imgs) != 2 {
		t.Fatalf("decompressed images in the cache: %v, want one per compressed file", imgs)
	}
	for _, vm := range []string{"gz", "zst"} {
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
