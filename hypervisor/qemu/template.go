package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/qemu/qmp"
	"github.com/stackvm/stack/hypervisor/qemu/templates"
	"github.com/stackvm/stack/internal/fsutil"
)

// Boot templates (see package templates for the files). A VM that may use
// one boots with guestproto.ParkArg, so its guest init stops before it
// reads anything of its own; the driver then either
//   - restores it from the template of its shape: QEMU starts with the
//     template's memory mapped copy-on-write (memory-backend-file,
//     share=off) and -incoming, and loads the device state (with
//     x-ignore-shared the migration stream carries no RAM: the memory
//     file is it). The memory file is never written, so one template
//     serves any number of VMs at once, and they share its unmodified
//     pages through the page cache;
//   - or, when there is none yet, boots it cold with its memory in a
//     shared file (memory-backend-file, share=on, in /dev/shm) and makes
//     the template when the guest parks (Parked): the VM is paused, its
//     device state saved and its memory file copied (holes stay holes),
//     and it goes on;
//   - or boots it cold without making one, when another process is making
//     that template now.
// The guest then gets its own config, clock, entropy and MACs (see
// guestproto.Unpark); the VM generation ID device makes its kernel reseed
// its random generator on a restore.

// templateFormat changes with the way keys are made or VMs restored.
const templateFormat = "2"

// configDiskTemplateSize is the config disk's size for template VMs: the
// guest learns a disk's size at boot, so every VM of a shape must have one
// of the same size (the config itself ends at its first NUL).
const configDiskTemplateSize = 1 << 20

// templatePlan is what a template-capable start does.
type templatePlan struct {
	key string
	// restore is the template to restore from, or nil.
	restore *templates.Template
	// making, when set, is the template this VM's boot makes.
	making *templates.Making
	mem    *os.File // the shared memory file of a making (unlinked once QEMU maps it)
	shape  templates.Shape
	note   string // why a template was not used (a failed restore)
	// snapshot, when set, is the VM save this start loads (snapshot.go);
	// ignoreShared, when its RAM is a memory file rather than in the stream.
	snapshot     string
	ignoreShared bool
}

// templateEligible reports whether a VM of cfg can be restored from a
// template: initramfs mode (the guest init parks), without shared
// directories (vhost-user needs the guest's memory shared, which a
// copy-on-write mapping of a template is not), and without a root disk.
func templateEligible(cfg *hypervisor.Config) bool {
	return cfg.Template && cfg.GuestAgent && len(cfg.SharedDirs) == 0 && cfg.Root == nil &&
		len(cfg.GuestConfig) <= configDiskTemplateSize
}

// templateConfig is cfg as a template VM boots: parked, with the VM
// generation ID device.
func templateConfig(cfg *hypervisor.Config) *hypervisor.Config {
	c := *cfg
	c.Cmdline = strings.TrimSpace(guestproto.ParkArg + " " + c.Cmdline)
	return &c
}

// templateKey is the key of the shape of the VM that args start (see
// shapeArgs), with its config disk at the size a template VM's has (the
// file is written later), and the format of the scheme.
func templateKey(args []string, cfg *hypervisor.Config, binary string) (string, error) {
	cfgDisk := configDiskPath(cfg.RunDir)
	shape, err := shapeArgs(args, cfg.RunDir, binary, func(path string) (int64, error) {
		if path == cfgDisk {
			return configDiskTemplateSize, nil
		}
		return diskSize(path)
	})
	if err != nil {
		return "", fmt.Errorf("template key: %w", err)
	}
	h := sha256.New()
	fmt.Fprintf(h, "stack-template %s\x00", templateFormat)
	for _, a := range shape {
		fmt.Fprintf(h, "%s\x00", a)
	}
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
}

// shapeArgs is the shape of the VM that args start, as an argv: what a
// saved guest (a boot template, a snapshot) depends on, with what differs
// between two VMs of one shape taken out. Kept: the machine, accelerator,
// CPUs, memory size, command line and every device in order, the identity
// of the QEMU binary, kernel and initramfs (path, size, modification
// time: any rebuild or upgrade changes it) and each disk's size (the
// guest learns it at boot; sizeOf tells it). Taken out: the VM's name, its
// runtime directory, its disks' paths, its NICs' MACs (a guest restored
// from a template is given its own after its park point) and host-side
// backends, the kind of memory backend, and -S/-incoming.
func shapeArgs(args []string, runDir, binary string, sizeOf func(path string) (int64, error)) ([]string, error) {
	id, err := fileID(binary)
	if err != nil {
		return nil, err
	}
	out := []string{id}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch a {
		case "-name", "-incoming":
			i++
			continue
		case "-S":
			continue
		case "-netdev":
			// A NIC's backend is the host's, not the guest's (only the
			// device migrates).
			i++
			n, _, _ := strings.Cut(args[i], ",")
			out = append(out, a, n)
			continue
		case "-kernel", "-initrd":
			id, err := fileID(args[i+1])
			if err != nil {
				return nil, err
			}
			out = append(out, a, id)
			i++
			continue
		}
		if i > 0 && args[i-1] == "-object" && strings.Contains(a, ",id=mem,") {
			_, rest, _ := strings.Cut(a, ",id=mem,size=")
			size, _, _ := strings.Cut(rest, ",")
			out = append(out, "memory-backend,id=mem,size="+size)
			continue
		}
		if path, ok := driveFile(a); ok {
			n, err := sizeOf(unesc(path))
			if err != nil {
				return nil, err
			}
			a = strings.Replace(a, "file="+path+",", "size="+strconv.FormatInt(n, 10)+",", 1)
		}
		a = strings.ReplaceAll(a, esc(runDir), "<run>")
		if i := strings.Index(a, ",mac="); i >= 0 {
			a = a[:i]
		}
		out = append(out, a)
	}
	return out, nil
}

// driveFile is the (escaped) file= of a -drive value.
func driveFile(a string) (string, bool) {
	if !strings.HasPrefix(a, "if=none,") {
		return "", false
	}
	_, rest, ok := strings.Cut(a, ",file=")
	if !ok {
		return "", false
	}
	// Commas in a value are doubled (esc); the first single comma ends it.
	for i := 0; i < len(rest); i++ {
		if rest[i] != ',' {
			continue
		}
		if i+1 < len(rest) && rest[i+1] == ',' {
			i++
			continue
		}
		return rest[:i], true
	}
	return rest, true
}

func unesc(s string) string { return strings.ReplaceAll(s, ",,", ",") }

func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// diskSize is the size of the disk the guest sees in the image at path:
// a qcow2 image's virtual size (its file grows as the guest writes), else
// the file's size.
func diskSize(path string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	var h [32]byte
	if n, _ := io.ReadFull(f, h[:]); n == len(h) && string(h[:4]) == "QFI\xfb" {
		return int64(binary.BigEndian.Uint64(h[24:32])), nil
	}
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// fileID names a file by path, size and modification time, which any
// rebuild or upgrade changes.
func fileID(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("%s@%d@%d", path, fi.Size(), fi.ModTime().UnixNano()), nil
}

// shapeOf describes cfg for people (`stack cache ls`).
func shapeOf(cfg *hypervisor.Config, machine, accel string) templates.Shape {
	s := templates.Shape{Machine: machine, Accel: accel, CPUs: cfg.CPUs, MemoryMB: cfg.MemoryMB,
		Kernel: cfg.Kernel, Initramfs: cfg.Initramfs}
	for range cfg.NICs {
		s.Devices = append(s.Devices, "nic")
	}
	for _, d := range disks(cfg) {
		size := ""
		if fi, err := os.Stat(d.Path); err == nil {
			size = fmt.Sprintf(" %dMiB", fi.Size()>>20)
		}
		s.Devices = append(s.Devices, "disk "+d.Format+size)
	}
	return s
}

// planTemplate decides how a template-capable VM starts (see templatePlan)
// and adds what that takes to args.
func (d *Driver) planTemplate(ctx context.Context, cfg *hypervisor.Config, args []string, machine, accel string, restore bool) (*templatePlan, []string, error) {
	key, err := templateKey(args, cfg, d.opts.Binary)
	if err != nil {
		return nil, nil, err
	}
	p := &templatePlan{key: key, shape: shapeOf(cfg, machine, accel)}
	store := d.templates()
	t, err := store.Get(key)
	switch {
	case err == nil && !restore:
	case err == nil:
		p.restore = t
		return p, d.restoreArgs(args, cfg, t), nil
	case cfg.Paused:
		return nil, nil, fmt.Errorf("%w (%v)", hypervisor.ErrNoTemplate, err)
	case !errors.Is(err, fs.ErrNotExist):
		d.log.Warn("template not used", "key", key, "err", err)
		p.note = fmt.Sprintf("the boot template of its shape was not valid (%v); booted cold and made a new one", err)
	}
	m, ok, err := store.Begin(ctx, key)
	if err != nil {
		d.log.Warn("make template", "key", key, "err", err)
		return p, args, nil
	}
	if !ok {
		return p, args, nil // another process makes it: boot without
	}
	mem, err := d.sharedMemory(cfg)
	if err != nil {
		m.Abort()
		d.log.Warn("make template", "key", key, "err", err)
		return p, args, nil
	}
	p.making, p.mem = m, mem
	return p, withMemory(args, "mem-path="+esc(mem.Name())+",share=on"), nil
}

// restoreArgs start QEMU to restore t: its memory mapped copy-on-write,
// waiting for the device state.
func (d *Driver) restoreArgs(args []string, cfg *hypervisor.Config, t *templates.Template) []string {
	return append(withMemory(args, "mem-path="+esc(t.Mem())+",share=off"), "-incoming", "defer")
}

// withMemory puts the guest's RAM in another backend than the plain one
// BuildArgs gives it (memory-backend-ram), with the same id and size.
func withMemory(args []string, backend string) []string {
	out := make([]string, len(args))
	for i, a := range args {
		if i > 0 && args[i-1] == "-object" && strings.HasPrefix(a, memBackendRAM) {
			a = strings.Replace(a, "memory-backend-ram,", "memory-backend-file,", 1) + "," + backend
		}
		out[i] = a
	}
	return out
}

// sharedMemory makes the file a template-making VM's RAM lives in: on
// /dev/shm when it is there (the guest writes it as it runs), else in the
// VM's run directory.
func (d *Driver) sharedMemory(cfg *hypervisor.Config) (*os.File, error) {
	dir := d.opts.TemplateShm
	if dir == "" {
		dir = "/dev/shm"
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		dir = cfg.RunDir
	}
	f, err := os.CreateTemp(dir, "stack-vm-*.mem")
	if err != nil {
		return nil, fmt.Errorf("make guest memory file: %w", err)
	}
	if err := f.Truncate(int64(cfg.MemoryMB) << 20); err != nil {
		f.Close()
		os.Remove(f.Name())
		return nil, fmt.Errorf("make guest memory file: %w", err)
	}
	return f, nil
}

// templates is the driver's template store.
func (d *Driver) templates() *templates.Store {
	return &templates.Store{Root: d.opts.Templates, Limit: d.opts.TemplateLimit}
}

// restore loads the template's device state into a QEMU started with
// restoreArgs, and returns once the VM is paused and whole. With
// x-ignore-shared the stream carries no RAM: the memory file is it.
func restore(ctx context.Context, c *qmp.Client, t *templates.Template) error {
	if err := setCapability(ctx, c, "x-ignore-shared", true); err != nil {
		return err
	}
	if err := migrateFrom(ctx, c, t.State()); err != nil {
		return fmt.Errorf("restore from template: %w", err)
	}
	return nil
}

// saveTimeout bounds the pause while a template is made.
const saveTimeout = 30 * time.Second

// makeTemplate makes the template of the parked guest: it pauses the VM,
// saves its device state and copies its memory, and lets it go on; the
// template is committed after that, off the VM's clock.
func (in *instance) makeTemplate(ctx context.Context, p *templatePlan) error {
	defer p.mem.Close()
	ctx, cancel := context.WithTimeout(ctx, saveTimeout)
	defer cancel()
	in.migrating.Lock()
	defer in.migrating.Unlock()
	t0 := time.Now()
	if err := in.qmp.Stop(ctx); err != nil {
		p.making.Abort()
		return err
	}
	err := in.saveTo(ctx, p)
	// The VM goes on whatever became of its template.
	if cerr := in.qmp.Cont(context.WithoutCancel(ctx)); cerr != nil && err == nil {
		err = cerr
	}
	took := time.Since(t0)
	if err != nil {
		p.making.Abort()
		return err
	}
	v := in.qmp.Greeting().Version.QEMU
	p.shape.QEMU = fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro)
	t, err := p.making.Commit(templates.Meta{Shape: p.shape, Created: time.Now().UTC(), SaveTook: took})
	if err != nil {
		return err
	}
	in.log.Info("made a boot template", "key", p.key, "paused", took, "disk", t.Disk)
	if removed, err := in.d.templates().Prune(p.key); err != nil {
		in.log.Warn("prune templates", "err", err)
	} else {
		for _, r := range removed {
			in.log.Info("pruned a boot template", "key", r.Meta.Key)
		}
	}
	return nil
}

// saveTo writes the paused VM's device state and memory into the making.
func (in *instance) saveTo(ctx context.Context, p *templatePlan) error {
	if err := setCapability(ctx, in.qmp, "x-ignore-shared", true); err != nil {
		return err
	}
	if err := migrateTo(ctx, in.qmp, filepath.Join(p.making.Dir(), templates.StateFile)); err != nil {
		return fmt.Errorf("save device state: %w", err)
	}
	return fsutil.CopySparse(filepath.Join(p.making.Dir(), templates.MemFile), p.mem)
}
