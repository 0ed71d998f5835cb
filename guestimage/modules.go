package guestimage

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// DefaultModules are the top-level kernel modules the built-in guest needs,
// as "group:name". Their dependencies are resolved through the kernel's
// modules.dep; a module built into the kernel (modules.builtin) is skipped.
// Names ending in "?" are optional: absent from the kernel, they are left
// out (9p exists only in Debian's generic kernel, not in the cloud one).
//
// Groups let the init load only what a boot needs, since every module load
// costs tens of milliseconds under TCG: "boot" at once, "pci" when the
// machine has a PCI bus (q35; microvm has none), "fs-<type>" before the
// first mount of that type, "late" in the background once the VM is ready.
// The group names are the contract with package guestinit.
var DefaultModules = []string{
	"boot:virtio_mmio",    // -M microvm transport
	"boot:virtio_blk",     // config disk, volumes
	"boot:virtio_net",     // NICs
	"boot:virtio_console", // agent port
	"boot:ext4",           // volumes (built into the cloud kernel)
	"pci:virtio_pci",      // q35 transport
	"fs-iso9660:isofs",    // ISO images handed in as disks
	"fs-virtiofs:virtiofs?",
	"fs-9p:9p?", // generic kernel only
	"fs-9p:9pnet_virtio?",
	"fs-overlay:overlay?", // an OCI image VM's root
	"late:virtio_rng",
	"late:overlay?",
}

// ModuleEntry is one module file to load as part of a group.
type ModuleEntry struct {
	Group string
	Path  string // relative to /lib/modules/<release>
}

// ResolveGroups resolves "group:name" specs (group defaults to "boot"):
// for each group, in order of first mention, the group's modules with all
// their dependencies, dependencies first. A module needed by two groups is
// listed in both; the init skips what it has loaded already.
func (idx *ModuleIndex) ResolveGroups(specs []string) ([]ModuleEntry, error) {
	var order []string
	byGroup := map[string][]string{}
	for _, s := range specs {
		g, name, ok := strings.Cut(s, ":")
		if !ok {
			g, name = "boot", s
		}
		if g == "" || strings.ContainsAny(g, " \t\n") {
			return nil, fmt.Errorf("resolve modules: bad group in %q", s)
		}
		if _, seen := byGroup[g]; !seen {
			order = append(order, g)
		}
		byGroup[g] = append(byGroup[g], name)
	}
	var out []ModuleEntry
	for _, g := range order {
		paths, err := idx.Resolve(byGroup[g])
		if err != nil {
			return nil, err
		}
		for _, p := range paths {
			out = append(out, ModuleEntry{Group: g, Path: p})
		}
	}
	return out, nil
}

// ModuleIndex is a kernel's modules.dep and modules.builtin, keyed by
// normalised module name (dashes as underscores).
type ModuleIndex struct {
	// Path is the module's file relative to /lib/modules/<version>.
	Path map[string]string
	// Deps are the module's direct and indirect dependencies as depmod
	// lists them (names, not paths).
	Deps    map[string][]string
	Builtin map[string]bool
}

// normModName turns "kernel/drivers/virtio/virtio-rng.ko.xz" or
// "virtio-rng" into "virtio_rng".
func normModName(s string) string {
	s = filepath.Base(s)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		s = strings.TrimSuffix(s, ext)
	}
	s = strings.TrimSuffix(s, ".ko")
	return strings.ReplaceAll(s, "-", "_")
}

// ParseModulesDep reads modules.dep ("path: dep-path dep-path ...") and,
// when builtin is non-nil, modules.builtin (one path per line).
func ParseModulesDep(dep io.Reader, builtin io.Reader) (*ModuleIndex, error) {
	idx := &ModuleIndex{Path: map[string]string{}, Deps: map[string][]string{}, Builtin: map[string]bool{}}
	sc := bufio.NewScanner(dep)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	line := 0
	for sc.Scan() {
		line++
		text := strings.TrimSpace(sc.Text())
		if text == "" || strings.HasPrefix(text, "#") {
			continue
		}
		path, rest, ok := strings.Cut(text, ":")
		path = strings.TrimSpace(path)
		if !ok || path == "" || !strings.Contains(path, ".ko") {
			return nil, fmt.Errorf("parse modules.dep line %d: want \"path.ko: deps\", got %q", line, text)
		}
		if filepath.IsAbs(path) || strings.Contains(path, "..") {
			return nil, fmt.Errorf("parse modules.dep line %d: module path %q escapes the module tree", line, path)
		}
		name := normModName(path)
		idx.Path[name] = path
		var deps []string
		for _, d := range strings.Fields(rest) {
			deps = append(deps, normModName(d))
		}
		idx.Deps[name] = deps
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	if builtin != nil {
		sc := bufio.NewScanner(builtin)
		for sc.Scan() {
			if t := strings.TrimSpace(sc.Text()); t != "" {
				idx.Builtin[normModName(t)] = true
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("read modules.builtin: %w", err)
		}
	}
	return idx, nil
}

// Resolve returns the module files (relative paths) to load for the wanted
// top-level modules, every module after all of its dependencies, each once.
// Wanted names ending in "?" are optional. A wanted module that is neither a
// module nor built in is an error.
func (idx *ModuleIndex) Resolve(wanted []string) ([]string, error) {
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(name string, chain []string) error
	visit = func(name string, chain []string) error {
		switch state[name] {
		case 2:
			return nil
		case 1:
			return fmt.Errorf("resolve module %s: dependency cycle %s", name, strings.Join(append(chain, name), " -> "))
		}
		path, ok := idx.Path[name]
		if !ok {
			if idx.Builtin[name] {
				state[name] = 2
				return nil
			}
			return fmt.Errorf("resolve module %s: not in modules.dep (needed by %s)", name, strings.Join(chain, " -> "))
		}
		state[name] = 1
		// depmod lists indirect dependencies too; visiting each keeps the
		// order right whatever order they are listed in.
		deps := append([]string(nil), idx.Deps[name]...)
		sort.Strings(deps)
		for _, d := range deps {
			if err := visit(d, append(chain, name)); err != nil {
				return err
			}
		}
		state[name] = 2
		order = append(order, path)
		return nil
	}
	for _, w := range wanted {
		name, optional := strings.CutSuffix(w, "?")
		name = normModName(name)
		if _, ok := idx.Path[name]; !ok {
			if idx.Builtin[name] || optional {
				continue
			}
			return nil, fmt.Errorf("resolve module %s: neither a module nor built into this kernel", name)
		}
		if err := visit(name, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// GenerateModulesDep writes a modules.dep for the module tree under dir
// (/lib/modules/<version>) from each module's .modinfo "depends=" field,
// which modpost derives from the module's symbol references. It stands in
// for depmod, which Debian packages in kmod and which is often absent from
// build hosts and containers. Dependencies are listed transitively, as
// depmod does.
func GenerateModulesDep(dir string) ([]byte, error) {
	direct := map[string][]string{}
	paths := map[string]string{}
	err := filepath.WalkDir(filepath.Join(dir, "kernel"), func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || !strings.HasSuffix(p, ".ko") {
			return nil
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		deps, err := modinfoDepends(p)
		if err != nil {
			return err
		}
		name := normModName(rel)
		paths[name] = rel
		direct[name] = deps
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("scan modules in %s: %w", dir, err)
	}
	names := make([]string, 0, len(paths))
	for n := range paths {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	for _, n := range names {
		seen := map[string]bool{}
		var all []string
		var walk func(string)
		walk = func(m string) {
			for _, d := range direct[m] {
				if !seen[d] && d != n {
					seen[d] = true
					all = append(all, d)
					walk(d)
				}
			}
		}
		walk(n)
		fmt.Fprintf(&buf, "%s:", paths[n])
		for _, d := range all {
			p, ok := paths[d]
			if !ok {
				return nil, fmt.Errorf("generate modules.dep: %s depends on %s, which is not in the tree", n, d)
			}
			fmt.Fprintf(&buf, " %s", p)
		}
		buf.WriteByte('\n')
	}
	return buf.Bytes(), nil
}

// modinfoDepends reads the "depends=" entry of a module's .modinfo section.
func modinfoDepends(path string) ([]string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open module %s: %w", path, err)
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, nil
	}
	data, err := sec.Data()
	if err != nil {
		return nil, fmt.Errorf("read .modinfo of %s: %w", path, err)
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				if d = strings.TrimSpace(d); d != "" {
					deps = append(deps, normModName(d))
				}
			}
			return deps, nil
		}
	}
	return nil, nil
}

// loadModuleIndex reads the modules.dep and modules.builtin of an unpacked
// kernel's module tree (the fetch step makes sure modules.dep exists).
func loadModuleIndex(modDir string) (*ModuleIndex, error) {
	dep, err := os.ReadFile(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	var builtin io.Reader
	if b, err := os.ReadFile(filepath.Join(modDir, "modules.builtin")); err == nil {
		builtin = bytes.NewReader(b)
	}
	return ParseModulesDep(bytes.NewReader(dep), builtin)
}
