package qemu

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"

	"github.com/stackvm/stack/internal/filenames"
)

// Flatten implements hypervisor.Driver: an offline QEMU, started from the
// saved argv with its disks and NICs replaced by null ones, loads the
// stream into a memory file it maps shared, and saves its device state
// again with x-ignore-shared. The files are replaced once whole: a
// flatten that fails or is killed leaves the save as it was.
func (d *Driver) Flatten(ctx context.Context, dir string) error {
	meta, err := readSavedVM(dir)
	if err != nil {
		return err
	}
	if meta.MemFile {
		return nil
	}
	if _, err := d.Host(); err != nil {
		return err
	}
	run, err := os.MkdirTemp("", "stack-flatten-")
	if err != nil {
		return fmt.Errorf("flatten save: %w", err)
	}
	defer os.RemoveAll(run)
	memTmp := filepath.Join(dir, "."+filenames.SnapshotVMMem)
	stateTmp := filepath.Join(dir, "."+filenames.SnapshotVMState)
	defer os.Remove(memTmp)
	defer os.Remove(stateTmp)
	args, err := flattenArgs(meta, run, memTmp)
	if err != nil {
		return fmt.Errorf("flatten save: %w", err)
	}
	mem, err := os.OpenFile(memTmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, filenames.FileMode)
	if err != nil {
		return fmt.Errorf("flatten save: %w", err)
	}
	mem.Close()
	stderr, err := os.Create(filepath.Join(run, filenames.StderrFile))
	if err != nil {
		return fmt.Errorf("flatten save: %w", err)
	}
	defer stderr.Close()
	cmd := exec.Command(d.opts.Binary, args...)
	cmd.Stdout, cmd.Stderr = stderr, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("flatten save: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	defer func() { cmd.Process.Kill(); <-exited }()
	if err := flattenWith(ctx, run, exited, dir, stateTmp); err != nil {
		return fmt.Errorf("flatten save: %w%s", err, stderrTail(stderr.Name()))
	}
	if err := os.Rename(memTmp, filepath.Join(dir, filenames.SnapshotVMMem)); err != nil {
		return fmt.Errorf("flatten save: %w", err)
	}
	if err := os.Rename(stateTmp, filepath.Join(dir, filenames.SnapshotVMState)); err != nil {
		return fmt.Errorf("flatten save: %w", err)
	}
	meta.MemFile = true
	return writeSavedVM(dir, meta)
}

// flattenWith drives the offline QEMU that serves QMP in run.
func flattenWith(ctx context.Context, run string, exited <-chan struct{}, dir, stateTmp string) error {
	c, err := dialQMP(ctx, filepath.Join(run, filenames.QMPSocket), exited)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := setCapability(ctx, c, "x-ignore-shared", false); err != nil {
		return err
	}
	if err := migrateFrom(ctx, c, filepath.Join(dir, filenames.SnapshotVMState)); err != nil {
		return err
	}
	if err := setCapability(ctx, c, "x-ignore-shared", true); err != nil {
		return err
	}
	if err := migrateTo(ctx, c, stateTmp); err != nil {
		return err
	}
	_, err = c.Execute(ctx, "quit", nil)
	return err
}

// flattenArgs turns a saved VM's argv into an offline QEMU's: its
// sockets in run, its disks null devices of the same size, its NICs
// unconnected, its RAM the memory file mem (shared), and waiting for a
// stream, paused.
func flattenArgs(meta *savedVM, run, mem string) ([]string, error) {
	argv := meta.Argv
	if len(argv) < 2 {
		return nil, errors.New("no saved argv")
	}
	sizes := map[string]string{} // drive id -> size, from the shape
	for _, a := range meta.Shape {
		if rest, ok := strings.CutPrefix(a, "if=none,id="); ok {
			id, rest, _ := strings.Cut(rest, ",")
			if size, ok := strings.CutPrefix(rest, "size="); ok {
				sizes[id], _, _ = strings.Cut(size, ",")
			}
		}
	}
	oldRun := ""
	for _, a := range argv {
		if p, ok := strings.CutPrefix(a, "socket,id=qmp,path="); ok {
			oldRun = filepath.Dir(unesc(strings.Split(p, ",server=")[0]))
		}
	}
	if oldRun == "" {
		return nil, errors.New("saved argv has no QMP socket")
	}
	var out []string
	nic := 0
	for i := 1; i < len(argv); i++ {
		a := argv[i]
		switch {
		case a == "-S" || a == "-incoming":
			if a == "-incoming" {
				i++
			}
			continue
		case i > 1 && argv[i-1] == "-netdev":
			id := strings.Split(strings.SplitN(a, ",id=", 2)[1], ",")[0]
			a = "hubport,id=" + id + ",hubid=" + strconv.Itoa(nic)
			nic++
		case i > 1 && argv[i-1] == "-object" && strings.Contains(a, ",id=mem,"):
			_, rest, _ := strings.Cut(a, ",id=mem,size=")
			size, _, _ := strings.Cut(rest, ",")
			a = "memory-backend-file,id=mem,size=" + size + ",mem-path=" + esc(mem) + ",share=on"
		default:
			if path, ok := driveFile(a); ok {
				// The drive's other options (read-only, discard) stay:
				// they set the features the guest negotiated.
				id := strings.Split(strings.SplitN(a, ",id=", 2)[1], ",")[0]
				if sizes[id] == "" {
					return nil, fmt.Errorf("saved shape has no size for drive %s", id)
				}
				a = strings.Replace(a, "file="+path+",", "driver=null-co,read-zeroes=on,size="+sizes[id]+",", 1)
				a = regexp.MustCompile(`,format=[a-z0-9]+`).ReplaceAllString(a, "")
			}
			a = strings.ReplaceAll(a, esc(oldRun), esc(run))
		}
		out = append(out, a)
	}
	return append(out, "-S", "-incoming", "defer"), nil
}
