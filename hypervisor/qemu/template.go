package qemu

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
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
const templateFormat = "1"

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

// templateKey is the key of the shape of the VM that args start: the argv
// with what differs between two VMs of one shape taken out (its name, its
// runtime directory, its disks' paths and its MACs: the guest is given its
// own after the park point), the identity of the kernel, initramfs, disks
// (by size) and QEMU binary, and the format of the scheme.
func templateKey(args []string, cfg *hypervisor.Config, binary string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "stack-template %s\x00", templateFormat)
	id, err := fileID(binary)
	if err != nil {
		return "", err
	}
	fmt.Fprintf(h, "%s\x00", id)
	sizes := map[string]string{} // escaped path → size
	for _, d := range disks(cfg) {
		fi, err := os.Stat(d.Path)
		if err != nil {
			return "", fmt.Errorf("template key: %w", err)
		}
		sizes[esc(d.Path)] = strconv.FormatInt(fi.Size(), 10)
	}
	sizes[esc(configDiskPath(cfg.RunDir))] = strconv.Itoa(configDiskTemplateSize)
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-name" || a == "-netdev":
			// The name is the VM's; a NIC's backend is the host's, not
			// the guest's (only the device migrates).
			i++
			if a == "-netdev" {
				n, _, _ := strings.Cut(args[i], ",")
				fmt.Fprintf(h, "-netdev %s\x00", n)
			}
			continue
		case a == "-kernel" || a == "-initrd":
			id, err := fileID(args[i+1])
			if err != nil {
				return "", fmt.Errorf("template key: %w", err)
			}
			fmt.Fprintf(h, "%s %s\x00", a, id)
			i++
			continue
		}
		a = strings.ReplaceAll(a, esc(cfg.RunDir), "<run>")
		if strings.HasPrefix(a, "if=none,") {
			for p, size := range sizes {
				a = strings.Replace(a, "file="+strings.ReplaceAll(p, esc(cfg.RunDir), "<run>")+",", "size="+size+",", 1)
			}
		}
		if i := strings.Index(a, ",mac="); i >= 0 {
			a = a[:i]
		}
		fmt.Fprintf(h, "%s\x00", a)
	}
	return hex.EncodeToString(h.Sum(nil)[:16]), nil
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

// withMemory puts the guest's RAM in a file-backed memory backend.
func withMemory(args []string, backend string) []string {
	out := make([]string, 0, len(args)+4)
	var size string
	for i := 0; i < len(args); i++ {
		out = append(out, args[i])
		switch args[i] {
		case "-machine":
			i++
			out = append(out, args[i]+",memory-backend=mem")
		case "-m":
			i++
			out = append(out, args[i])
			size = args[i]
		}
	}
	return append(out, "-object", "memory-backend-file,id=mem,size="+size+"M,"+backend)
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

// ignoreShared tells QEMU that the guest's RAM is a file that the other
// side maps itself: the migration stream then holds the device state only.
func ignoreShared(ctx context.Context, c *qmp.Client) error {
	_, err := c.Execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": "x-ignore-shared", "state": true}},
	})
	return err
}

// restore loads the template's device state into a QEMU started with
// restoreArgs, and returns once the VM is paused and whole.
func restore(ctx context.Context, c *qmp.Client, t *templates.Template) error {
	if err := ignoreShared(ctx, c); err != nil {
		return err
	}
	f, err := os.Open(t.State())
	if err != nil {
		return err
	}
	err = c.GetFD(ctx, "template", f)
	f.Close()
	if err != nil {
		return err
	}
	if _, err := c.Execute(ctx, "migrate-incoming", map[string]string{"uri": "fd:template"}); err != nil {
		return err
	}
	for {
		st, err := c.QueryStatus(ctx)
		if err != nil {
			return err
		}
		switch st.Status {
		case "inmigrate":
		case "paused", "prelaunch", "running":
			return nil
		default:
			return fmt.Errorf("restore from template: the VM is %s", st.Status)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("restore from template: %w", ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
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
	if err := ignoreShared(ctx, in.qmp); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(p.making.Dir(), templates.StateFile), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	err = in.qmp.GetFD(ctx, "template", f)
	f.Close()
	if err != nil {
		return err
	}
	if _, err := in.qmp.Execute(ctx, "migrate", map[string]string{"uri": "fd:template"}); err != nil {
		return err
	}
	for {
		raw, err := in.qmp.Execute(ctx, "query-migrate", nil)
		if err != nil {
			return err
		}
		var st struct {
			Status    string `json:"status"`
			ErrorDesc string `json:"error-desc"`
		}
		if err := json.Unmarshal(raw, &st); err != nil {
			return err
		}
		switch st.Status {
		case "completed":
			return templates.CopySparse(filepath.Join(p.making.Dir(), templates.MemFile), p.mem)
		case "failed", "cancelled":
			return fmt.Errorf("save device state: migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("save device state: %w", ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
	}
}
