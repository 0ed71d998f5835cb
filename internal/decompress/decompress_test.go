package decompress

import (
	"bytes"
	"compress/gzip"
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"

	"github.com/stackvm/stack/internal/fsutil"
)

// rawImage is 8 MiB of mostly zeros with data at a few offsets, like a
// disk image.
func rawImage() []byte {
	img := make([]byte, 8<<20)
	copy(img, "boot sector")
	copy(img[3<<20+17:], strings.Repeat("data", 5000))
	copy(img[len(img)-4:], "tail")
	return img
}

func compress(t *testing.T, kind string, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	var w io.WriteCloser
	var err error
	switch kind {
	case Gzip:
		w = gzip.NewWriter(&b)
	case Zstd:
		w, err = zstd.NewWriter(&b)
	case Xz:
		w, err = xz.NewWriter(&b)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func writeTemp(t *testing.T, name string, data []byte) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestDecompressed: each compression is recognised by its content (not
// the file's name), decompressed to the same bytes, sparse and
// read-only, once: a second call returns the same file untouched.
func TestDecompressed(t *testing.T) {
	img := rawImage()
	for _, kind := range []string{Gzip, Zstd, Xz} {
		t.Run(kind, func(t *testing.T) {
			src := writeTemp(t, "root.img.any", compress(t, kind, img))
			cache := t.TempDir()
			out, err := Cached(context.Background(), src, cache)
			if err != nil {
				t.Fatal(err)
			}
			if filepath.Dir(out) != cache || !strings.HasPrefix(filepath.Base(out), "sha256-") {
				t.Fatalf("decompressed to %s, want a digest-named file in %s", out, cache)
			}
			got, err := os.ReadFile(out)
			if err != nil || !bytes.Equal(got, img) {
				t.Fatalf("decompressed content differs (%v)", err)
			}
			fi, _ := os.Stat(out)
			if fi.Mode().Perm() != 0o400 {
				t.Errorf("mode %v, want read-only", fi.Mode())
			}
			if blocks := fi.Sys().(*syscall.Stat_t).Blocks * 512; blocks >= int64(len(img))/2 {
				t.Errorf("%d bytes allocated for an image of %d mostly zeros: not sparse", blocks, len(img))
			}
			again, err := Cached(context.Background(), src, cache)
			fi2, _ := os.Stat(again)
			if err != nil || again != out || !os.SameFile(fi, fi2) {
				t.Errorf("second call: %s, %v; want the same file %s", again, err, out)
			}
		})
	}
	t.Run("plain", func(t *testing.T) {
		src := writeTemp(t, "root.img.gz", img) // the name does not matter
		if out, err := Cached(context.Background(), src, t.TempDir()); err != nil || out != src {
			t.Errorf("an uncompressed image: %s, %v; want itself", out, err)
		}
	})
}

// TestDecompressedConcurrent: callers at the same time all get the one
// complete image, and nothing else is left in the cache.
func TestDecompressedConcurrent(t *testing.T) {
	img := rawImage()
	src := writeTemp(t, "root.zst", compress(t, Zstd, img))
	cache := t.TempDir()
	const n = 8
	outs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			outs[i], errs[i] = Cached(context.Background(), src, cache)
		}()
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil || outs[i] != outs[0] {
			t.Fatalf("caller %d: %s, %v; caller 0: %s", i, outs[i], errs[i], outs[0])
		}
	}
	if got, _ := os.ReadFile(outs[0]); !bytes.Equal(got, img) {
		t.Fatal("the image differs")
	}
	checkCacheHolds(t, cache, filepath.Base(outs[0]))
}

// checkCacheHolds asserts the cache has the image and its lock only.
func checkCacheHolds(t *testing.T, cache, image string) {
	t.Helper()
	entries, _ := os.ReadDir(cache)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{image, image + ".lock"}; strings.Join(names, " ") != strings.Join(want, " ") {
		t.Errorf("cache holds %v, want %v", names, want)
	}
}

// TestDecompressedKilled: what a killed decompression leaves (its temp
// file) is not taken for the image: the next call decompresses anew and
// removes it. A damaged stream or a cancelled one leaves no image.
func TestDecompressedKilled(t *testing.T) {
	img := rawImage()
	gz := compress(t, Gzip, img)
	src := writeTemp(t, "root.gz", gz)
	cache := t.TempDir()
	digest, err := fsutil.FileSHA256(src)
	if err != nil {
		t.Fatal(err)
	}
	image := "sha256-" + digest
	// A killed run's temp file: part of the image.
	if err := os.WriteFile(filepath.Join(cache, "."+image+".tmp-123"), img[:1<<20], 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := Cached(context.Background(), src, cache)
	if err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(out); !bytes.Equal(got, img) {
		t.Fatal("the image differs")
	}
	checkCacheHolds(t, cache, image)

	truncated := writeTemp(t, "short.gz", gz[:len(gz)/2])
	cache2 := t.TempDir()
	if _, err := Cached(context.Background(), truncated, cache2); err == nil {
		t.Error("a truncated gzip stream decompressed without error")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := Cached(ctx, src, cache2); err == nil {
		t.Error("a cancelled decompression returned an image")
	}
	entries, _ := os.ReadDir(cache2)
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".lock") {
			t.Errorf("a failed decompression left %s", e.Name())
		}
	}
}
