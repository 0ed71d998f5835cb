package image

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// benchImage is a synthetic image of about 100 MB uncompressed, in three
// layers, shaped like a distribution image: thousands of small files in a
// deep tree (text that compresses about 3:1), a few large ones (half of
// them incompressible), symlinks, and a second layer that rewrites and
// whites out some of the first. It is the same on every run.
func benchImage(b *testing.B) (v1.Image, int64) {
	rng := rand.New(rand.NewPCG(1, 2))
	words := strings.Fields("the of and to in is for on that with as by this be are from or at an it not which have " +
		"config library module package error value return function string default system file data")
	text := func(n int) string {
		var sb strings.Builder
		for sb.Len() < n {
			sb.WriteString(words[rng.IntN(len(words))])
			sb.WriteByte(" \n"[rng.IntN(2)])
		}
		return sb.String()[:n]
	}
	random := func(n int) string {
		buf := make([]byte, n)
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		return string(buf)
	}
	var total int64
	layer := func(files int, prefix string, extra ...ent) []ent {
		var es []ent
		for i := range files {
			dir := fmt.Sprintf("%s/d%02d/s%02d", prefix, i%40, (i/40)%12)
			var size int
			switch r := rng.IntN(100); {
			case r < 75:
				size = 200 + rng.IntN(8<<10)
			case r < 97:
				size = 8<<10 + rng.IntN(32<<10)
			case r < 99 || rng.IntN(10) < 7:
				size = 40<<10 + rng.IntN(360<<10)
			default:
				size = 1<<20 + rng.IntN(3<<20)
			}
			data := text(size)
			if i%7 == 0 && size > 64<<10 {
				data = random(size)
			}
			total += int64(size)
			es = append(es, ent{Name: dir + "/f" + strconv.Itoa(i), Data: data, Mode: 0o644})
			if i%50 == 0 {
				es = append(es, ent{Name: dir + "/l" + strconv.Itoa(i), Type: '2', Link: "f" + strconv.Itoa(i)})
			}
		}
		return append(es, extra...)
	}
	l1 := layerOf(b, layer(3500, "usr", ent{Name: "usr/bin/su", Mode: 0o4755, Data: "su"})...)
	l2 := layerOf(b, layer(900, "opt", ent{Name: "usr/d00/.wh.s00"}, ent{Name: "usr/d01/.wh..wh..opq"})...)
	l3 := layerOf(b, layer(200, "var/lib/app", ent{Name: "var/lib/app/", Type: '5', Mode: 0o700, UID: 999, GID: 999})...)
	return imageOf(b, "", v1.Config{Cmd: []string{"/bin/sh"}}, l1, l2, l3), total
}

// BenchmarkConvert measures a pull and conversion of benchImage from an
// in-process registry into an ext4 image, by stack and by Debian's
// skopeo copy + umoci unpack + mkfs.ext4 -d (scripts/deps.sh bench-image
// installs them). Each iteration starts from an empty cache.
func BenchmarkConvert(b *testing.B) {
	b.Setenv("DOCKER_CONFIG", b.TempDir())
	img, total := benchImage(b)
	ref := serve(b, nil) + "/bench:1"
	push(b, ref, img)
	b.Logf("image: %.1f MB of file data", float64(total)/1e6)

	b.Run("stack", func(b *testing.B) {
		convertLoop(b, total, func(work string) string {
			got, err := Pull(context.Background(), ref, Options{CacheRoot: work})
			if err != nil {
				b.Fatal(err)
			}
			return got.RootFS
		})
	})

	b.Run("skopeo+umoci+mkfs", func(b *testing.B) {
		for _, tool := range []string{"skopeo", "umoci", "mkfs.ext4"} {
			if _, err := exec.LookPath(tool); err != nil {
				b.Skipf("%s not installed (scripts/deps.sh bench-image installs skopeo and umoci): %v", tool, err)
			}
		}
		policy := filepath.Join(b.TempDir(), "policy.json")
		if err := os.WriteFile(policy, []byte(`{"default":[{"type":"insecureAcceptAnything"}]}`), 0o600); err != nil {
			b.Fatal(err)
		}
		unpack := []string{"umoci", "unpack"}
		if os.Geteuid() != 0 {
			unpack = append(unpack, "--rootless")
		}
		convertLoop(b, total, func(work string) string {
			layoutDir, bundle := filepath.Join(work, "layout"), filepath.Join(work, "bundle")
			out := filepath.Join(work, "rootfs.ext4")
			run(b, "skopeo", "--policy", policy, "copy", "--quiet", "--src-tls-verify=false", "docker://"+ref, "oci:"+layoutDir+":bench")
			run(b, append(unpack, "--image", layoutDir+":bench", bundle)...)
			run(b, "mkfs.ext4", "-q", "-F", "-t", "ext4", "-T", "default", "-b", "4096", "-I", "256", "-m", "0",
				"-O", mkfsFeatures, "-E", "nodiscard", "-d", filepath.Join(bundle, "rootfs"), out, strconv.FormatInt(3*total/4096, 10))
			return out
		})
	})
}

// convertLoop times convert, which turns the image into a file system
// image under an empty directory and returns its path, and reports the
// image's size on disk.
func convertLoop(b *testing.B, total int64, convert func(work string) string) {
	b.SetBytes(total)
	var used int64
	for b.Loop() {
		b.StopTimer()
		work := b.TempDir()
		b.StartTimer()
		out := convert(work)
		b.StopTimer()
		used = allocated(b, out)
		os.RemoveAll(work)
		b.StartTimer()
	}
	b.ReportMetric(float64(used)/1e6, "MB-image")
}

func run(b *testing.B, argv ...string) {
	b.Helper()
	if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
		b.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
}

// allocated is the disk space a (sparse) file system image takes: what
// mkfs wrote, data and metadata, without the free blocks.
func allocated(b *testing.B, path string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		b.Fatal(err)
	}
	return st.Blocks * 512
}
