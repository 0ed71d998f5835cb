package guestimage

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
)

// kernelPkg is a concrete Debian kernel package.
type kernelPkg struct {
	Meta    string `json:"meta"`    // the metapackage asked for, e.g. linux-image-cloud-amd64
	Name    string `json:"name"`    // e.g. linux-image-6.1.0-56-cloud-amd64
	Version string `json:"version"` // Debian version, e.g. 6.1.192-2
	SHA256  string `json:"sha256"`  // of the .deb, from the apt index
	// ListsStamp fingerprints the apt lists the resolution came from.
	ListsStamp string `json:"lists_stamp"`
}

// unpackedKernel is a kernel package unpacked in the cache.
type unpackedKernel struct {
	Dir     string // <cache>/kernels/<pkg>_<version>
	Release string // uname -r, e.g. 6.1.0-56-cloud-amd64
	Vmlinuz string
	ModDir  string // <Dir>/lib/modules/<Release>
}

const aptListsDir = "/var/lib/apt/lists"

// aptListsStamp fingerprints the apt package lists (names, sizes, mtimes),
// so that a resolution is redone only after `apt-get update` changed them.
// apt-cache takes seconds on some hosts; Ensure runs on every `stack up`.
func aptListsStamp() string {
	ents, err := os.ReadDir(aptListsDir)
	if err != nil {
		return ""
	}
	h := sha256.New()
	for _, e := range ents {
		info, err := e.Info()
		if err != nil || !info.Mode().IsRegular() {
			continue
		}
		fmt.Fprintf(h, "%s %d %d\n", e.Name(), info.Size(), info.ModTime().UnixNano())
	}
	return hex.EncodeToString(h.Sum(nil))
}

// resolveKernel finds the concrete kernel package the metapackage depends on,
// with its version and .deb hash, from the host's apt index.
func resolveKernel(ctx context.Context, cacheRoot, meta string) (*kernelPkg, error) {
	stamp := aptListsStamp()
	memo := filepath.Join(cacheRoot, "kernels", "resolved-"+meta+".json")
	if stamp != "" {
		if b, err := os.ReadFile(memo); err == nil {
			var k kernelPkg
			if json.Unmarshal(b, &k) == nil && k.ListsStamp == stamp && k.Meta == meta && k.Name != "" {
				return &k, nil
			}
		}
	}
	out, err := run(ctx, "", "apt-cache", "depends", "--no-recommends", "--no-suggests", meta)
	if err != nil {
		return nil, fmt.Errorf("resolve kernel package %s: %w", meta, err)
	}
	name, err := parseDependsKernel(out)
	if err != nil {
		return nil, fmt.Errorf("resolve kernel package %s: %w", meta, err)
	}
	out, err = run(ctx, "", "apt-cache", "show", "--no-all-versions", name)
	if err != nil {
		return nil, fmt.Errorf("show kernel package %s: %w", name, err)
	}
	fields := parseControl(out)
	k := &kernelPkg{Meta: meta, Name: name, Version: fields["Version"], SHA256: fields["SHA256"], ListsStamp: stamp}
	if k.Version == "" {
		return nil, fmt.Errorf("show kernel package %s: no Version field", name)
	}
	if stamp != "" {
		if err := writeFileAtomic(memo, mustJSON(k), filenames.FileMode); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// parseDependsKernel picks the linux-image-* dependency out of
// `apt-cache depends` output.
func parseDependsKernel(out []byte) (string, error) {
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		line = strings.TrimPrefix(line, "|")
		dep, ok := strings.CutPrefix(line, "Depends:")
		if !ok {
			continue
		}
		dep = strings.TrimSpace(dep)
		if strings.HasPrefix(dep, "linux-image-") && !strings.HasPrefix(dep, "<") {
			return dep, nil
		}
	}
	return "", errors.New("no linux-image-* dependency in apt-cache depends output")
}

// parseControl reads the first stanza of Debian control-file output.
func parseControl(out []byte) map[string]string {
	m := map[string]string{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			if len(m) > 0 {
				break
			}
			continue
		}
		if line[0] == ' ' || line[0] == '\t' {
			continue
		}
		if k, v, ok := strings.Cut(line, ":"); ok {
			m[k] = strings.TrimSpace(v)
		}
	}
	return m
}

// fetchKernel downloads and unpacks the kernel package into the cache unless
// it is there already. It never installs anything: apt-get download writes
// the .deb into a temporary directory, dpkg-deb -x unpacks it there, and the
// unpacked tree is renamed into place (so concurrent builders never see a
// half-unpacked kernel).
func fetchKernel(ctx context.Context, cacheRoot string, k *kernelPkg, deb string) (*unpackedKernel, error) {
	dir := filenames.KernelCache(cacheRoot, k.Name, k.Version)
	if uk, err := inspectKernel(dir); err == nil {
		return uk, nil
	}
	parent := filepath.Dir(dir)
	if err := os.MkdirAll(parent, filenames.DirMode); err != nil {
		return nil, fmt.Errorf("create kernel cache: %w", err)
	}
	tmp, err := os.MkdirTemp(parent, ".tmp-kernel-")
	if err != nil {
		return nil, fmt.Errorf("create kernel temp dir: %w", err)
	}
	defer os.RemoveAll(tmp)
	if deb == "" {
		dl := filepath.Join(tmp, "dl")
		if err := os.Mkdir(dl, 0o755); err != nil {
			return nil, fmt.Errorf("create download dir: %w", err)
		}
		// apt drops privileges to _apt for downloads; the directory must be
		// reachable for it, else it falls back to root and warns.
		_ = os.Chmod(tmp, 0o755)
		if _, err := run(ctx, dl, "apt-get", "download", "-q", k.Name+"="+k.Version); err != nil {
			return nil, fmt.Errorf("download kernel package %s=%s: %w", k.Name, k.Version, err)
		}
		debs, _ := filepath.Glob(filepath.Join(dl, "*.deb"))
		if len(debs) != 1 {
			return nil, fmt.Errorf("download kernel package %s: expected one .deb, found %d", k.Name, len(debs))
		}
		deb = debs[0]
		if k.SHA256 != "" {
			sum, err := fsutil.FileSHA256(deb)
			if err != nil {
				return nil, err
			}
			if sum != k.SHA256 {
				return nil, fmt.Errorf("verify kernel package %s: sha256 %s, apt index says %s", k.Name, sum, k.SHA256)
			}
		}
	}
	root := filepath.Join(tmp, "root")
	if _, err := run(ctx, "", "dpkg-deb", "-x", deb, root); err != nil {
		return nil, fmt.Errorf("unpack kernel package %s: %w", deb, err)
	}
	uk, err := inspectKernelTree(root)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(uk.ModDir, "modules.dep")); os.IsNotExist(err) {
		dep, err := GenerateModulesDep(uk.ModDir)
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(uk.ModDir, "modules.dep"), dep, 0o644); err != nil {
			return nil, fmt.Errorf("write modules.dep: %w", err)
		}
	}
	// Private like the rest of the cache; images hard-link the kernel.
	if err := os.Chmod(uk.Vmlinuz, filenames.FileMode); err != nil {
		return nil, fmt.Errorf("chmod kernel: %w", err)
	}
	if err := os.Rename(root, dir); err != nil {
		// Another builder may have won the race; its tree is as good.
		if uk, err2 := inspectKernel(dir); err2 == nil {
			return uk, nil
		}
		return nil, fmt.Errorf("move kernel into cache: %w", err)
	}
	return inspectKernel(dir)
}

func inspectKernel(dir string) (*unpackedKernel, error) {
	uk, err := inspectKernelTree(dir)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(filepath.Join(uk.ModDir, "modules.dep")); err != nil {
		return nil, fmt.Errorf("inspect kernel %s: %w", dir, err)
	}
	return uk, nil
}

// inspectKernelTree finds the single kernel release in an unpacked package.
func inspectKernelTree(root string) (*unpackedKernel, error) {
	vmlinuzes, _ := filepath.Glob(filepath.Join(root, "boot", "vmlinuz-*"))
	if len(vmlinuzes) != 1 {
		return nil, fmt.Errorf("inspect kernel %s: expected one boot/vmlinuz-*, found %d", root, len(vmlinuzes))
	}
	release := strings.TrimPrefix(filepath.Base(vmlinuzes[0]), "vmlinuz-")
	modDir := filepath.Join(root, "lib", "modules", release)
	if _, err := os.Stat(modDir); err != nil {
		// usrmerged packages ship modules under /usr/lib.
		alt := filepath.Join(root, "usr", "lib", "modules", release)
		if _, err2 := os.Stat(alt); err2 != nil {
			return nil, fmt.Errorf("inspect kernel %s: %w", root, err)
		}
		modDir = alt
	}
	return &unpackedKernel{Dir: root, Release: release, Vmlinuz: vmlinuzes[0], ModDir: modDir}, nil
}

// run executes an argv and returns its stdout; stderr goes into the error.
func run(ctx context.Context, dir string, argv ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		msg := strings.TrimSpace(stderr.String())
		if len(msg) > 2000 {
			msg = msg[len(msg)-2000:]
		}
		return nil, fmt.Errorf("run %s: %w: %s", strings.Join(argv, " "), err, msg)
	}
	return out, nil
}

func mustJSON(v any) []byte {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		panic(err) // only called on plain structs
	}
	return append(b, '\n')
}

// writeFileAtomic writes through a temporary file and a rename.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), filenames.DirMode); err != nil {
		return fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-")
	if err != nil {
		return fmt.Errorf("create temp for %s: %w", path, err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("chmod %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("rename into %s: %w", path, err)
	}
	return nil
}

func execCommand(ctx context.Context, dir string, argv ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	return cmd
}
