// Package guestimage owns the built-in guest image of initramfs mode: a
// Debian cloud kernel and an initramfs holding the stack guest init as
// /init, a static busybox with its common applets, and the kernel modules
// the guest needs (loaded by the init in dependency order). Ensure returns
// the image from a cache keyed by the hash of every input, building it when
// missing.
//
// Inputs and where they come from:
//   - kernel: the linux-image-<release>-cloud-amd64 package that the
//     metapackage linux-image-cloud-amd64 depends on, resolved with
//     apt-cache, fetched with apt-get download and unpacked with dpkg-deb -x
//     under <cache>/kernels (never installed);
//   - busybox: the host's /bin/busybox (package busybox-static);
//   - init: see Options.InitBinary;
//   - modules: DefaultModules plus their modules.dep dependencies.
package guestimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
)

// builderVersion is part of the cache key: bump it whenever the layout of
// the image or the way it is built changes.
const builderVersion = "stack-guestimage/5"

// DefaultCompression is how the initramfs is compressed: not at all. Under
// TCG the guest kernel's inflate runs emulated; measured in guest time
// (BenchmarkGuestWorkICount), a plain archive (6.9 MiB) reaches ready about
// 0.1 s (7%) sooner than gzip at level 1, 6 or 9 (3.2/2.9/2.9 MiB), whose
// levels make no difference to speed. The cost is disk space in the cache.
const DefaultCompression = "none"

// compressionLevel maps "none" and "gzip1".."gzip9" to a gzip level, with
// -1 for none.
func compressionLevel(c string) (int, error) {
	if c == "" {
		c = DefaultCompression
	}
	if c == "none" {
		return -1, nil
	}
	if len(c) == 5 && strings.HasPrefix(c, "gzip") && c[4] >= '1' && c[4] <= '9' {
		return int(c[4] - '0'), nil
	}
	return 0, fmt.Errorf("unknown initramfs compression %q (want none or gzip1..gzip9)", c)
}

// Options say where the image's inputs come from. The zero value builds the
// default image into filenames.CacheRoot().
type Options struct {
	// CacheRoot defaults to filenames.CacheRoot().
	CacheRoot string
	// KernelPackage is the Debian metapackage; default linux-image-cloud-amd64.
	KernelPackage string
	// KernelDeb, when set, is a local kernel .deb used instead of
	// resolving and downloading KernelPackage (offline hosts).
	KernelDeb string
	// Busybox defaults to /bin/busybox (busybox-static).
	Busybox string
	// InitBinary is a static stack-init. When empty, Ensure uses
	// $STACK_INIT_BINARY, else stack-init next to the running executable
	// (bin/stack beside bin/stack-init), else it builds cmd/stack-init
	// from this module's source into <cache>/guest/init-build with
	// `CGO_ENABLED=0 go build -trimpath -buildvcs=false -ldflags=-s`,
	// which needs a Go toolchain and the source tree (tests, `go run`).
	// The Makefile's bin/stack-init should use the same flags, so that
	// both give the same bytes and hence the same cached image.
	InitBinary string
	// SourceDir is the module root to build stack-init from; default: the
	// directory this package was compiled from, if it still exists.
	SourceDir string
	// Modules are the wanted top-level modules ("group:name", see
	// DefaultModules); default DefaultModules.
	Modules []string
	// Compression is "none" or "gzip1".."gzip9"; "" means
	// DefaultCompression.
	Compression string
	Logger      *slog.Logger
}

// Image is a built guest image.
type Image struct {
	Kernel    string // path to vmlinuz
	Initramfs string // path to the initramfs
	Key       string // the cache key (hex)
	// KernelRelease is the guest kernel's `uname -r`.
	KernelRelease string
	// Modules are the modules in the image by group, in load order.
	Modules []ModuleEntry
}

// manifest records what went into an image, for people and for tests.
type manifest struct {
	Builder       string   `json:"builder"`
	KernelPackage string   `json:"kernel_package"`
	KernelVersion string   `json:"kernel_version"`
	KernelRelease string   `json:"kernel_release"`
	KernelSHA256  string   `json:"kernel_sha256"`
	BusyboxSHA256 string   `json:"busybox_sha256"`
	InitSHA256    string   `json:"init_sha256"`
	Applets       []string `json:"applets"`
	Wanted        []string `json:"wanted_modules"`
	Modules       []string `json:"modules"` // "group path"
	Compression   int      `json:"compression"`
	Built         string   `json:"built"`
}

// Ensure returns the guest image for opts, building it if it is not cached.
// Concurrent callers, in one process or several, are safe: each builds into
// a temporary directory and renames it into place; a loser of the race uses
// the winner's image.
func Ensure(ctx context.Context, opts Options) (*Image, error) {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	cacheRoot := opts.CacheRoot
	if cacheRoot == "" {
		cacheRoot = filenames.CacheRoot()
	}
	level, err := compressionLevel(opts.Compression)
	if err != nil {
		return nil, fmt.Errorf("ensure guest image: %w", err)
	}
	wanted := opts.Modules
	if wanted == nil {
		wanted = DefaultModules
	}

	// Kernel.
	var pkg *kernelPkg
	if opts.KernelDeb != "" {
		var sum string
		sum, err = fsutil.FileSHA256(opts.KernelDeb)
		if err != nil {
			return nil, err
		}
		out, err := run(ctx, "", "dpkg-deb", "-f", opts.KernelDeb, "Package", "Version")
		if err != nil {
			return nil, fmt.Errorf("read kernel package %s: %w", opts.KernelDeb, err)
		}
		f := parseControl(out)
		pkg = &kernelPkg{Name: f["Package"], Version: f["Version"], SHA256: sum}
		if pkg.Name == "" || pkg.Version == "" {
			return nil, fmt.Errorf("read kernel package %s: no Package/Version", opts.KernelDeb)
		}
	} else {
		var err error
		meta := opts.KernelPackage
		if meta == "" {
			meta = "linux-image-cloud-amd64"
		}
		if pkg, err = resolveKernel(ctx, cacheRoot, meta); err != nil {
			return nil, err
		}
	}
	uk, err := fetchKernel(ctx, cacheRoot, pkg, opts.KernelDeb)
	if err != nil {
		return nil, err
	}
	idx, err := loadModuleIndex(uk.ModDir)
	if err != nil {
		return nil, err
	}
	mods, err := idx.ResolveGroups(wanted)
	if err != nil {
		return nil, err
	}

	// Busybox and init.
	busybox := opts.Busybox
	if busybox == "" {
		busybox = "/bin/busybox"
	}
	initBin, err := findInit(ctx, cacheRoot, opts, log)
	if err != nil {
		return nil, err
	}
	bbSum, err := fsutil.FileSHA256(busybox)
	if err != nil {
		return nil, fmt.Errorf("read busybox (apt package busybox-static): %w", err)
	}
	initSum, err := fsutil.FileSHA256(initBin)
	if err != nil {
		return nil, err
	}

	m := manifest{
		Builder: builderVersion, KernelPackage: pkg.Name, KernelVersion: pkg.Version,
		KernelRelease: uk.Release, KernelSHA256: pkg.SHA256, BusyboxSHA256: bbSum,
		InitSHA256: initSum, Applets: Applets, Wanted: wanted, Compression: level,
	}
	for _, e := range mods {
		m.Modules = append(m.Modules, e.Group+" "+e.Path)
	}
	key := cacheKey(m)
	img := &Image{Key: key, KernelRelease: uk.Release, Modules: mods}
	dir := filenames.GuestImage(cacheRoot, key)
	img.Kernel = filepath.Join(dir, filenames.GuestKernel)
	initrdName := filenames.GuestInitramfs
	if level != -1 {
		initrdName += ".gz"
	}
	img.Initramfs = filepath.Join(dir, initrdName)
	if _, err := os.Stat(filepath.Join(dir, filenames.GuestManifest)); err == nil {
		return img, nil
	}

	start := time.Now()
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, filenames.DirMode); err != nil {
		return nil, fmt.Errorf("create guest image cache: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, ".tmp-image-")
	if err != nil {
		return nil, fmt.Errorf("create guest image temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, filenames.DirMode); err != nil {
		return nil, fmt.Errorf("chmod guest image temp dir: %w", err)
	}
	if err := linkOrCopy(uk.Vmlinuz, filepath.Join(tmp, filenames.GuestKernel)); err != nil {
		return nil, err
	}
	if cfgs, _ := filepath.Glob(filepath.Join(uk.Dir, "boot", "config-*")); len(cfgs) == 1 {
		if err := copyFile(cfgs[0], filepath.Join(tmp, filenames.GuestKernelConfig)); err != nil {
			return nil, err
		}
	}
	in := buildInputs{Release: uk.Release, ModDir: uk.ModDir, Modules: mods}
	if in.Init, err = os.ReadFile(initBin); err != nil {
		return nil, fmt.Errorf("read init binary: %w", err)
	}
	if in.Busybox, err = os.ReadFile(busybox); err != nil {
		return nil, fmt.Errorf("read busybox: %w", err)
	}
	recs, err := buildRecords(in)
	if err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(tmp, initrdName), os.O_WRONLY|os.O_CREATE|os.O_EXCL, filenames.FileMode)
	if err != nil {
		return nil, fmt.Errorf("create initramfs: %w", err)
	}
	if err := writeArchive(f, recs, level); err != nil {
		f.Close()
		return nil, err
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("write initramfs: %w", err)
	}
	m.Built = time.Now().UTC().Format(time.RFC3339)
	// The manifest is written last: its presence marks a complete image.
	if err := os.WriteFile(filepath.Join(tmp, filenames.GuestManifest), mustJSON(m), filenames.FileMode); err != nil {
		return nil, fmt.Errorf("write guest image manifest: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, err2 := os.Stat(filepath.Join(dir, filenames.GuestManifest)); err2 == nil {
			return img, nil // another builder won the race
		}
		return nil, fmt.Errorf("move guest image into cache: %w", err)
	}
	log.Info("built guest image", "dir", dir, "kernel", uk.Release, "modules", len(mods), "took", time.Since(start).Round(time.Millisecond))
	return img, nil
}

// cacheKey hashes everything that determines the image's bytes.
func cacheKey(m manifest) string {
	m.Built = ""
	h := sha256.Sum256(mustJSON(m))
	return hex.EncodeToString(h[:])[:24]
}

// findInit locates the stack-init binary (see Options.InitBinary).
func findInit(ctx context.Context, cacheRoot string, opts Options, log *slog.Logger) (string, error) {
	if opts.InitBinary != "" {
		return opts.InitBinary, nil
	}
	if p := os.Getenv("STACK_INIT_BINARY"); p != "" {
		return p, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "stack-init")
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p, nil
		}
	}
	src := opts.SourceDir
	if src == "" {
		src = sourceDir()
	}
	if src == "" {
		return "", errors.New("find stack-init: no InitBinary, no $STACK_INIT_BINARY, no stack-init next to the executable, and no source tree to build it from")
	}
	outDir := filepath.Join(cacheRoot, "guest", filenames.GuestInitBuild)
	if err := os.MkdirAll(outDir, filenames.DirMode); err != nil {
		return "", fmt.Errorf("create init build dir: %w", err)
	}
	// Build to a unique name, then rename: concurrent builders each get a
	// whole binary, and the last rename wins with identical bytes.
	f, err := os.CreateTemp(outDir, ".tmp-stack-init-")
	if err != nil {
		return "", fmt.Errorf("create init build temp: %w", err)
	}
	tmpName := f.Name()
	f.Close()
	defer os.Remove(tmpName)
	goBin := filepath.Join(runtime.GOROOT(), "bin", "go")
	if _, err := os.Stat(goBin); err != nil {
		goBin = "go"
	}
	cmd := execCommand(ctx, src, goBin, "build", "-trimpath", "-buildvcs=false", "-ldflags=-s", "-o", tmpName, "./cmd/stack-init")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build stack-init in %s: %w: %s", src, err, strings.TrimSpace(string(out)))
	}
	dst := filepath.Join(outDir, "stack-init")
	if err := os.Rename(tmpName, dst); err != nil {
		return "", fmt.Errorf("move stack-init into cache: %w", err)
	}
	log.Debug("built stack-init from source", "src", src, "out", dst)
	return dst, nil
}

// sourceDir is the module root this package was compiled from, when the
// source tree is still there (go test, go run); "" otherwise.
func sourceDir() string {
	_, file, _, ok := runtime.Caller(0)
	if !ok || !filepath.IsAbs(file) {
		return ""
	}
	root := filepath.Dir(filepath.Dir(file))
	b, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil || !strings.Contains(string(b), "module github.com/stackvm/stack\n") {
		return ""
	}
	return root
}

// linkOrCopy hard-links src to dst (images share the cached kernel; every
// rebuild of the init would otherwise copy 14 MB), copying across
// filesystems.
func linkOrCopy(src, dst string) error {
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	return copyFile(src, dst)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy %s: %w", src, err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, filenames.FileMode)
	if err != nil {
		return fmt.Errorf("copy to %s: %w", dst, err)
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return fmt.Errorf("copy %s to %s: %w", src, dst, err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("copy to %s: %w", dst, err)
	}
	return nil
}
