package qemu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/qemu/qmp"
	"github.com/stackvm/stack/internal/filenames"
)

// VM snapshots (hypervisor.Instance.Save, Config.Snapshot).
//
// Save, with the VM paused, writes its device state and RAM as one
// migration stream: its RAM may be anonymous or a template's private
// mapping, so unlike a template's it must travel in the stream. Loading
// RAM from a stream costs a restore about a second per GiB under load, so
// Flatten, run once the VMs go on, turns the save into a memory file and a
// stream of device state alone (an offline QEMU loads the stream into a
// shared file mapping and saves again with x-ignore-shared): a restore
// then maps the memory file copy-on-write, as a boot template's is, and
// VMs restored from one snapshot share its pages.
//
// Beside them, the saved VM's shape (shapeArgs of the argv it was started
// with) says what a restore must start: a restore builds the argv for the
// config it is given, and refuses it when its shape is not the saved one,
// naming the first difference. The restored QEMU stays paused, so that
// every VM of a namespace can be let go at one moment.

// snapshotFormat changes with the files a save writes.
const snapshotFormat = "1"

// savedVM is the driver's record of a save (filenames.SnapshotVMMeta).
type savedVM struct {
	Format string `json:"format"`
	// Shape is shapeArgs of the argv the VM was started with.
	Shape []string `json:"shape"`
	// Argv is the argv it was started with (program first), which
	// Flatten starts an offline QEMU from.
	Argv []string `json:"argv"`
	// MemFile: the RAM is in filenames.SnapshotVMMem and the stream holds
	// the device state alone (Flatten); else the stream holds both.
	MemFile bool `json:"mem_file"`
	// TemplateShaped: it was started as a template VM is (parked command
	// line, VM generation ID, a template-sized config disk).
	TemplateShaped bool      `json:"template_shaped"`
	Accel          string    `json:"accel"`
	QEMU           string    `json:"qemu"`
	Saved          time.Time `json:"saved"`
}

// maxBandwidth lifts QEMU's migration bandwidth cap (128 MiB/s by default,
// meant for live migration over a network) for saves to a local file.
const maxBandwidth = 1 << 40

// Pause implements hypervisor.Instance.
func (in *instance) Pause(ctx context.Context) error { return in.qmp.Stop(ctx) }

// DiskBytes implements hypervisor.Instance.
func (in *instance) DiskBytes(ctx context.Context) (uint64, uint64, error) {
	return in.qmp.BlockStats(ctx)
}

// Resume implements hypervisor.Instance. A VM whose save completed is in
// QEMU's postmigrate state, which cont leaves as well.
func (in *instance) Resume(ctx context.Context) error { return in.qmp.Cont(ctx) }

// Save implements hypervisor.Instance.
func (in *instance) Save(ctx context.Context, dir string) (hypervisor.Saved, error) {
	t0 := time.Now()
	in.migrating.Lock()
	defer in.migrating.Unlock()
	st, err := in.qmp.QueryStatus(ctx)
	if err != nil {
		return hypervisor.Saved{}, fmt.Errorf("save vm: %w", err)
	}
	if st.Status != "paused" {
		return hypervisor.Saved{}, fmt.Errorf("save vm: it is %s, not paused", st.Status)
	}
	argv, err := recordedArgv(in.runDir)
	if err != nil {
		return hypervisor.Saved{}, fmt.Errorf("save vm: %w", err)
	}
	shape, err := shapeArgs(argv[1:], in.runDir, argv[0], diskSize)
	if err != nil {
		return hypervisor.Saved{}, fmt.Errorf("save vm: %w", err)
	}
	v := in.qmp.Greeting().Version.QEMU
	meta := savedVM{
		Format: snapshotFormat, Shape: shape, Argv: argv,
		TemplateShaped: slices.Contains(argv, "vmgenid,guid=auto"),
		Accel:          argAfter(argv, "-accel"),
		QEMU:           fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro),
		Saved:          time.Now().UTC(),
	}
	if err := setCapability(ctx, in.qmp, "x-ignore-shared", false); err != nil {
		return hypervisor.Saved{}, fmt.Errorf("save vm: %w", err)
	}
	if _, err := in.qmp.Execute(ctx, "migrate-set-parameters", map[string]any{"max-bandwidth": maxBandwidth}); err != nil {
		return hypervisor.Saved{}, fmt.Errorf("save vm: %w", err)
	}
	statePath := filepath.Join(dir, filenames.SnapshotVMState)
	if err := migrateTo(ctx, in.qmp, statePath); err != nil {
		return hypervisor.Saved{}, fmt.Errorf("save vm: %w", err)
	}
	if err := writeSavedVM(dir, &meta); err != nil {
		return hypervisor.Saved{}, fmt.Errorf("save vm: %w", err)
	}
	size, _ := fileSize(statePath)
	return hypervisor.Saved{Bytes: size, Took: time.Since(t0)}, nil
}

// snapshotStart is what starting a VM from a save takes.
type snapshotStart struct {
	cfg        *hypervisor.Config // cfg as it starts: the saved accelerator, parked
	args       []string
	accel      hypervisor.Accel
	configSize int
	meta       *savedVM
}

// planSnapshot builds the argv that restores the save in cfg.Snapshot and
// checks that it starts the VM that was saved, changing nothing on disk.
func (d *Driver) planSnapshot(ctx context.Context, cfg *hypervisor.Config) (*snapshotStart, error) {
	meta, err := readSavedVM(cfg.Snapshot)
	if err != nil {
		return nil, err
	}
	host, err := d.Host()
	if err != nil {
		return nil, err
	}
	host.GuestMicrovm = ProbeKernel(cfg.Kernel)
	c := *cfg
	c.Accel = meta.Accel // CPU state saved under one accelerator loads under it alone
	p := &snapshotStart{cfg: &c, meta: meta}
	if p.accel, err = d.accel(ctx, p.cfg, &host); err != nil {
		return nil, err
	}
	if meta.TemplateShaped {
		p.cfg = templateConfig(p.cfg)
		p.configSize = configDiskTemplateSize
	}
	if p.args, err = BuildArgs(p.cfg, host); err != nil {
		return nil, err
	}
	if meta.TemplateShaped {
		p.args = append(p.args, "-device", "vmgenid,guid=auto")
	}
	if meta.MemFile {
		p.args = withMemory(p.args, "mem-path="+esc(filepath.Join(cfg.Snapshot, filenames.SnapshotVMMem))+",share=off")
	}
	p.args = append(p.args, "-S", "-incoming", "defer")
	// The config disk is written at start: its size is known from here.
	cfgDisk := configDiskPath(cfg.RunDir)
	shape, err := shapeArgs(p.args, cfg.RunDir, d.opts.Binary, func(path string) (int64, error) {
		if path == cfgDisk {
			return int64(max(p.configSize, len(ConfigDiskImage(cfg.GuestConfig)))), nil
		}
		return diskSize(path)
	})
	if err != nil {
		return nil, err
	}
	if diff := firstDifference(meta.Shape, shape); diff != "" {
		return nil, fmt.Errorf("%w: %s", hypervisor.ErrSnapshotShape, diff)
	}
	return p, nil
}

// CheckSnapshot reports whether cfg (with Snapshot set) would start from
// its save: the save is readable and cfg is the VM that was saved. It
// starts nothing.
func (d *Driver) CheckSnapshot(ctx context.Context, cfg *hypervisor.Config) error {
	if _, err := d.planSnapshot(ctx, cfg); err != nil {
		return fmt.Errorf("check vm %s: %w", cfg.Name, err)
	}
	return nil
}

// startSnapshot starts QEMU for cfg from the save in cfg.Snapshot, paused.
func (d *Driver) startSnapshot(ctx context.Context, cfg *hypervisor.Config) (*instance, error) {
	p, err := d.planSnapshot(ctx, cfg)
	if err != nil {
		return nil, err
	}
	var undo cleanups
	defer undo.unwind()
	if err := d.prepareRunDir(p.cfg, p.args, p.configSize); err != nil {
		return nil, err
	}
	t0 := time.Now()
	inst, err := d.spawn(p.cfg, p.args, p.accel, &undo)
	if err != nil {
		return nil, err
	}
	inst.boot = hypervisor.Boot{Kind: hypervisor.BootSnapshot}
	if err := d.bringUp(ctx, p.cfg, inst, &templatePlan{snapshot: cfg.Snapshot, ignoreShared: p.meta.MemFile}, &undo); err != nil {
		undo.unwind()
		return nil, fmt.Errorf("restore from snapshot: %w%s", err, stderrTail(stderrPath(cfg.RunDir)))
	}
	inst.boot.Took = time.Since(t0)
	undo.disarm()
	return inst, nil
}

func writeSavedVM(dir string, m *savedVM) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writePrivate(filepath.Join(dir, filenames.SnapshotVMMeta), append(b, '\n'))
}

func readSavedVM(dir string) (*savedVM, error) {
	b, err := os.ReadFile(filepath.Join(dir, filenames.SnapshotVMMeta))
	if err != nil {
		return nil, fmt.Errorf("read saved vm: %w", err)
	}
	var m savedVM
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("read saved vm %s: %w", dir, err)
	}
	if m.Format != snapshotFormat {
		return nil, fmt.Errorf("read saved vm %s: format %q, this stack reads %q", dir, m.Format, snapshotFormat)
	}
	return &m, nil
}

// firstDifference names the first argument where two shapes differ, or ""
// when they are the same.
func firstDifference(saved, now []string) string {
	for i := 0; i < len(saved) || i < len(now); i++ {
		switch {
		case i >= len(saved):
			return fmt.Sprintf("it now has %q, which it had not when saved", now[i])
		case i >= len(now):
			return fmt.Sprintf("it had %q when saved, which it has not now", saved[i])
		case saved[i] != now[i]:
			return fmt.Sprintf("%q when saved, %q now", saved[i], now[i])
		}
	}
	return ""
}

// argAfter is the value that follows flag in argv, or "".
func argAfter(argv []string, flag string) string {
	for i := 0; i+1 < len(argv); i++ {
		if argv[i] == flag {
			return argv[i+1]
		}
	}
	return ""
}

func setCapability(ctx context.Context, c *qmp.Client, name string, on bool) error {
	_, err := c.Execute(ctx, "migrate-set-capabilities", map[string]any{
		"capabilities": []map[string]any{{"capability": name, "state": on}},
	})
	return err
}

// migrateTo writes the paused VM's migration stream to a new file at path.
// A migration that does not end here (ctx ends, QMP fails) is cancelled
// before it returns: one left running would stop the VM when it completes,
// after the caller has resumed it.
func migrateTo(ctx context.Context, c *qmp.Client, path string) (err error) {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, filenames.FileMode)
	if err != nil {
		return err
	}
	err = c.GetFD(ctx, "migration", f)
	f.Close()
	if err != nil {
		return err
	}
	ended := false
	defer func() {
		if !ended {
			cancelMigration(context.WithoutCancel(ctx), c)
		}
	}()
	// Not cut short by ctx: a migrate whose reply was not waited for may
	// have started all the same.
	if _, err := c.Execute(context.WithoutCancel(ctx), "migrate", map[string]string{"uri": "fd:migration"}); err != nil {
		return err
	}
	for {
		raw, err := c.Execute(ctx, "query-migrate", nil)
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
			ended = true
			return nil
		case "failed", "cancelled":
			ended = true
			return fmt.Errorf("migration %s: %s", st.Status, st.ErrorDesc)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// cancelMigration cancels an outgoing migration and waits until QEMU has
// let go of it (the VM cannot be resumed while it is cancelling).
func cancelMigration(ctx context.Context, c *qmp.Client) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c.Execute(ctx, "migrate_cancel", nil)
	for ctx.Err() == nil {
		raw, err := c.Execute(ctx, "query-migrate", nil)
		if err != nil {
			return
		}
		var st struct {
			Status string `json:"status"`
		}
		json.Unmarshal(raw, &st)
		switch st.Status {
		case "", "none", "cancelled", "failed", "completed":
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// migrateFrom loads the migration stream at path into a QEMU started with
// -incoming defer, and returns once the VM is whole (paused).
func migrateFrom(ctx context.Context, c *qmp.Client, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = c.GetFD(ctx, "migration", f)
	f.Close()
	if err != nil {
		return err
	}
	if _, err := c.Execute(ctx, "migrate-incoming", map[string]string{"uri": "fd:migration"}); err != nil {
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
			return fmt.Errorf("the VM is %s", st.Status)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// recordedArgv is the argv (program first) that prepareRunDir recorded.
func recordedArgv(runDir string) ([]string, error) {
	b, err := os.ReadFile(filepath.Join(runDir, filenames.ArgsFile))
	if err != nil {
		return nil, err
	}
	var argv []string
	if err := json.Unmarshal(b, &argv); err != nil {
		return nil, fmt.Errorf("read %s: %w", filenames.ArgsFile, err)
	}
	if len(argv) == 0 {
		return nil, errors.New("empty recorded argv")
	}
	return argv, nil
}
