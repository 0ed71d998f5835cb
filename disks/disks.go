// Package disks owns the block devices of VMs on the host: copy-on-write
// qcow2 overlays of a read-only base image (cloud-init mode's root disks),
// persistent volumes and scratch disks. Volumes and scratch disks are sparse
// raw files, formatted ext4 on the host when they are created (mkfs.ext4 on
// the regular file: no root, no loop device), so both boot modes mount the
// same thing; a "raw" volume is left unformatted for the guest.
//
// Base images are only ever opened read-only: qemu-img reads the base's
// format and size, and every write of a VM goes to its overlay.
//
// Files are created private (0600) and appear atomically: each is built
// under a temporary name in the destination directory and renamed into
// place, so a crash never leaves a half-formatted volume under its real
// name.
package disks

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/stackvm/stack/internal/filenames"
)

// Volume and image formats.
const (
	FormatRaw   = "raw"   // image format, and a volume left unformatted
	FormatQCOW2 = "qcow2" // image format
	FormatExt4  = "ext4"  // a raw volume holding an ext4 file system
)

// ErrShrink is returned by GrowVolume when the requested size is smaller
// than the volume: shrinking would destroy data, so it is never done.
var ErrShrink = errors.New("volume is larger than the requested size; shrinking is not supported")

// Tools used, looked up on PATH (Debian: qemu-utils, e2fsprogs).
var (
	qemuImg  = "qemu-img"
	qemuIO   = "qemu-io"
	mkfsExt4 = "mkfs.ext4"
	e2fsck   = "e2fsck"
	resize2f = "resize2fs"
)

// ImageInfo is the part of `qemu-img info --output=json` stack uses.
type ImageInfo struct {
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	BackingFilename string `json:"backing-filename,omitempty"`
	// BackingFormat is set when the image records its backing file's format.
	BackingFormat string `json:"backing-filename-format,omitempty"`
}

// Info runs `qemu-img info --output=json` on path. The format is probed by
// qemu-img; --force-share lets it read an image a running VM has open.
func Info(ctx context.Context, path string) (ImageInfo, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return ImageInfo{}, fmt.Errorf("resolve %s: %w", path, err)
	}
	out, err := run(ctx, qemuImg, "info", "--force-share", "--output=json", abs)
	if err != nil {
		return ImageInfo{}, err
	}
	var info ImageInfo
	if err := json.Unmarshal(out, &info); err != nil {
		return ImageInfo{}, fmt.Errorf("parse qemu-img info of %s: %w", abs, err)
	}
	if info.Format == "" {
		return ImageInfo{}, fmt.Errorf("parse qemu-img info of %s: no format", abs)
	}
	return info, nil
}

// CreateOverlay creates overlay as a qcow2 image backed by base, replacing
// any file already there. The base's format (raw or qcow2) is detected and
// recorded in the overlay (-F), so QEMU never probes it at boot; the base
// path is recorded absolute, since qemu-img resolves a relative backing
// path against the overlay's directory. The overlay has the base's size.
// base is the user's image: one that points at other files is refused
// (see CheckBase).
func CreateOverlay(ctx context.Context, base, overlay string) error {
	absBase, err := filepath.Abs(base)
	if err != nil {
		return fmt.Errorf("resolve base image %s: %w", base, err)
	}
	st, err := os.Stat(absBase)
	if err != nil {
		return fmt.Errorf("check base image: %w", err)
	}
	if !st.Mode().IsRegular() {
		return fmt.Errorf("check base image %s: not a regular file", absBase)
	}
	// Before qemu-img opens it, which would follow what it names.
	if err := CheckBase(absBase); err != nil {
		return err
	}
	info, err := Info(ctx, absBase)
	if err != nil {
		return err
	}
	if info.Format != FormatRaw && info.Format != FormatQCOW2 {
		return fmt.Errorf("check base image %s: format %q is not supported (want raw or qcow2)", absBase, info.Format)
	}
	return createAtomic(overlay, func(tmp string) error {
		_, err := run(ctx, qemuImg, "create", "-q", "-f", FormatQCOW2, "-b", absBase, "-F", info.Format, tmp)
		return err
	})
}

// EnsureOverlay keeps an existing overlay when it is a qcow2 image backed by
// base, and otherwise (re)creates it; created reports which.
func EnsureOverlay(ctx context.Context, base, overlay string) (created bool, err error) {
	absBase, err := filepath.Abs(base)
	if err != nil {
		return false, fmt.Errorf("resolve base image %s: %w", base, err)
	}
	if _, err := os.Stat(overlay); err == nil {
		info, err := Info(ctx, overlay)
		if err == nil && info.Format == FormatQCOW2 && info.BackingFilename == absBase {
			return false, nil
		}
		slog.Info("recreating overlay with another backing file", "overlay", overlay, "base", absBase)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("check overlay: %w", err)
	}
	if err := CreateOverlay(ctx, absBase, overlay); err != nil {
		return false, err
	}
	return true, nil
}

// EnsureVolume creates the volume at path when it does not exist: a sparse
// file of sizeBytes (rounded up to a whole 512-byte sector), formatted ext4
// for FormatExt4 and left as is for FormatRaw. An existing volume is left
// untouched (created is false); resizing is GrowVolume's job. Scratch disks
// are volumes that the caller removes with their VM.
func EnsureVolume(ctx context.Context, path string, sizeBytes int64, format string) (created bool, err error) {
	if format != FormatExt4 && format != FormatRaw {
		return false, fmt.Errorf("create volume %s: format %q is not supported (want ext4 or raw)", path, format)
	}
	if sizeBytes <= 0 {
		return false, fmt.Errorf("create volume %s: size %d is not positive", path, sizeBytes)
	}
	if st, err := os.Stat(path); err == nil {
		if !st.Mode().IsRegular() {
			return false, fmt.Errorf("check volume %s: not a regular file", path)
		}
		return false, nil
	} else if !errors.Is(err, fs.ErrNotExist) {
		return false, fmt.Errorf("check volume: %w", err)
	}
	size := alignSize(sizeBytes)
	err = createAtomic(path, func(tmp string) error {
		if err := os.Truncate(tmp, size); err != nil {
			return fmt.Errorf("size volume: %w", err)
		}
		if format == FormatExt4 {
			// root_owner: the file system's root belongs to root in the
			// guest, not to whoever ran stack on the host.
			if _, err := run(ctx, mkfsExt4, "-q", "-F", "-E", "root_owner=0:0", tmp); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return false, err
	}
	slog.Debug("created volume", "path", path, "size", size, "format", format)
	return true, nil
}

// GrowVolume enlarges the volume at path to sizeBytes (rounded up to a
// whole sector) and, for ext4, its file system (e2fsck -f, then resize2fs,
// offline). grown is false when the volume already has that size; a smaller
// size is refused with ErrShrink. The volume must not be in use: a VM that
// has it open holds QEMU's write lock on the file, and GrowVolume refuses.
func GrowVolume(ctx context.Context, path string, sizeBytes int64, format string) (grown bool, err error) {
	if format != FormatExt4 && format != FormatRaw {
		return false, fmt.Errorf("grow volume %s: format %q is not supported (want ext4 or raw)", path, format)
	}
	st, err := os.Stat(path)
	if err != nil {
		return false, fmt.Errorf("grow volume: %w", err)
	}
	size := alignSize(sizeBytes)
	switch {
	case size < st.Size():
		return false, fmt.Errorf("grow volume %s from %d to %d bytes: %w", path, st.Size(), size, ErrShrink)
	case size == st.Size():
		return false, nil
	}
	if format == FormatExt4 {
		// qemu-io opens the file read-write, taking QEMU's write lock, and
		// fails when a running VM has it open: e2fsck must not touch a
		// mounted file system.
		if _, err := run(ctx, qemuIO, "-f", FormatRaw, "-c", "length", path); err != nil {
			return false, fmt.Errorf("grow volume %s: in use? %w", path, err)
		}
		// resize2fs refuses a file system that was not checked since it
		// was last mounted.
		if err := fsck(ctx, path); err != nil {
			return false, err
		}
	}
	// qemu-img resize takes the same lock, so it refuses an open volume.
	if _, err := run(ctx, qemuImg, "resize", "-q", "-f", FormatRaw, path, strconv.FormatInt(size, 10)); err != nil {
		return false, err
	}
	if format == FormatExt4 {
		if _, err := runOnVolume(ctx, path, resize2f); err != nil {
			return false, err
		}
	}
	slog.Info("grew volume", "path", path, "from", st.Size(), "to", size)
	return true, nil
}

// fsck runs e2fsck -f -p: exit status 1 (errors corrected) is success.
func fsck(ctx context.Context, path string) error {
	_, err := runOnVolume(ctx, path, e2fsck, "-f", "-p")
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 1 {
		return nil
	}
	return err
}

// Remove deletes a disk file (an overlay, a scratch disk, a volume being
// deleted). A file that does not exist is not an error.
func Remove(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove disk: %w", err)
	}
	return nil
}

func alignSize(n int64) int64 { return (n + 511) &^ 511 }

// createAtomic creates path by letting build fill a fresh temporary file
// (0600) in the same directory and renaming it into place.
func createAtomic(path string, build func(tmp string) error) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, filenames.DirMode); err != nil {
		return fmt.Errorf("create directory %s: %w", dir, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("create %s: %w", path, err)
	}
	tmp := f.Name()
	defer func() {
		if err != nil {
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(filenames.FileMode); err != nil {
		f.Close()
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("close %s: %w", tmp, err)
	}
	if err := build(tmp); err != nil {
		return err
	}
	// qemu-img create replaces the file, so set the mode again.
	if err := os.Chmod(tmp, filenames.FileMode); err != nil {
		return fmt.Errorf("chmod %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", path, err)
	}
	return nil
}

// run runs one command (argv, no shell) and returns its stdout; a failure
// carries the command's stderr.
func run(ctx context.Context, name string, args ...string) ([]byte, error) {
	if _, err := exec.LookPath(name); err != nil {
		return nil, fmt.Errorf("find %s: %w (Debian packages: qemu-utils, e2fsprogs)", name, err)
	}
	cmd := exec.CommandContext(ctx, name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	slog.Debug("run", "argv", cmd.Args)
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return nil, fmt.Errorf("run %s %s: %w: %s", name, strings.Join(args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}
