package image

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/stackvm/stack/internal/filenames"
)

// The root file system image is ext4 without a journal (see
// docs/images.md for the measurements behind the choice). mkfs.ext4 -d
// copies the staged tree, which the builder owns and can always read; a
// debugfs script run on the image afterwards gives every inode the
// ownership, mode (setuid and the like), xattrs and device numbers of the
// image. Neither step needs root, and nothing of a foreign image (a setuid
// file, a device node, a security xattr) ever exists on the host.
const (
	// FSType is the type of RootFS, as mount(8) and the kernel name it.
	FSType = "ext4"

	blockSize = 4096
	inodeSize = 256
)

// mkfsFeatures: no journal (the image is only ever mounted read-only), no
// blocks reserved for online growth. inline_data would save space on small
// files but mke2fs 1.47.0 truncates some files with it (seen on a 69 KiB
// sparse file, cut to 64 KiB), so it stays off.
const mkfsFeatures = "^has_journal,^resize_inode,^inline_data"

// buildExt4 writes the file system image of the tree, whose data is staged
// under stageDir, to out. scratch is a private directory for the debugfs
// script and xattr values. uuid makes the image's identity a function of
// the image (a hex string of 32 digits).
func buildExt4(ctx context.Context, t *tree, stageDir, out, scratch, uuid string) error {
	if err := t.restoreDirTimes(); err != nil {
		return err
	}
	if stagedHook != nil {
		if err := stagedHook(stageDir); err != nil {
			return err
		}
	}
	script, err := t.fixups(scratch)
	if err != nil {
		return err
	}
	blocks, inodes := t.estimate()
	for attempt := 0; ; attempt++ {
		err := mkfs(ctx, stageDir, out, blocks, inodes, uuid)
		if err == nil {
			break
		}
		// The estimate is generous, but a tree it misjudges gets more
		// room rather than an error.
		if attempt < 3 && errors.Is(err, errNoSpace) {
			blocks, inodes = blocks*2, inodes*2
			os.Remove(out)
			continue
		}
		return err
	}
	scriptPath := filepath.Join(scratch, "fixups.debugfs")
	if err := os.WriteFile(scriptPath, script, filenames.FileMode); err != nil {
		return fmt.Errorf("write debugfs script: %w", err)
	}
	return debugfs(ctx, out, scriptPath)
}

// stagedHook, when set (by tests), is called on the staged tree before the
// file system is written.
var stagedHook func(stageDir string) error

var errNoSpace = errors.New("file system image too small")

func mkfs(ctx context.Context, stageDir, out string, blocks, inodes int64, uuid string) error {
	argv := []string{"mkfs.ext4", "-q", "-F", "-t", "ext4", "-T", "default",
		"-b", strconv.Itoa(blockSize), "-I", strconv.Itoa(inodeSize), "-m", "0",
		"-N", strconv.FormatInt(inodes, 10), "-O", mkfsFeatures,
		"-U", uuid, "-E", "nodiscard,hash_seed=" + uuid,
		"-d", stageDir, out, strconv.FormatInt(blocks, 10)}
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		msg := strings.TrimSpace(stderr.String())
		if strings.Contains(msg, "Could not allocate") || strings.Contains(msg, "No space left") {
			return fmt.Errorf("%w: %s", errNoSpace, msg)
		}
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("run mkfs.ext4 (Debian package e2fsprogs): %w", err)
		}
		return fmt.Errorf("run %s: %w: %s", strings.Join(argv, " "), err, msg)
	}
	return nil
}

// debugfs runs the fix-up script on the image. debugfs exits 0 whatever
// its commands do, so any line on stderr but its banner is the error.
func debugfs(ctx context.Context, img, script string) error {
	cmd := exec.CommandContext(ctx, "debugfs", "-w", "-f", script, img)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, exec.ErrNotFound) {
		return fmt.Errorf("run debugfs (Debian package e2fsprogs): %w", err)
	}
	var problems []string
	for _, l := range strings.Split(stderr.String(), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "debugfs ") {
			problems = append(problems, l)
		}
	}
	if err != nil || len(problems) > 0 {
		if len(problems) > 5 {
			problems = append(problems[:5], fmt.Sprintf("and %d more", len(problems)-5))
		}
		return fmt.Errorf("set ownership and modes in the file system image with debugfs: %v: %s", err, strings.Join(problems, "; "))
	}
	return nil
}

// restoreDirTimes sets the staged directories' modification times to the
// image's: adding their entries changed them.
func (t *tree) restoreDirTimes() error {
	return t.walk(func(p string, n *node) error {
		if n.ino.typ != tar.TypeDir || n.ino.mtime.IsZero() {
			return nil
		}
		name := p
		if name == "" {
			name = "."
		}
		if err := t.root.Chtimes(name, n.ino.mtime, n.ino.mtime); err != nil {
			return fmt.Errorf("set times of %s: %w", name, err)
		}
		return nil
	})
}

// fixups returns the debugfs script that turns the copy of the staged tree
// into the image's tree: for each inode whose staged owner or mode differs
// from the image's, a set_inode_field; devices and FIFOs made with mknod;
// xattrs set from files in scratch. Hard links share an inode, fixed once
// (but for devices and FIFOs, made once per name).
func (t *tree) fixups(scratch string) ([]byte, error) {
	var b bytes.Buffer
	done := map[*inode]bool{}
	nx := 0
	err := t.walk(func(p string, n *node) error {
		ino := n.ino
		// A hard link to a device or FIFO becomes a node of its own: there
		// is no staged file to link to.
		if done[ino] && staged(ino.typ) {
			return nil
		}
		done[ino] = true
		abs := "/" + p
		if strings.ContainsAny(p, "\n\r") {
			// debugfs reads its script line by line.
			return &errLayer{p, "file names with a line break are not supported"}
		}
		q := quote(abs)
		switch ino.typ {
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			// mknod makes a name in the current directory.
			fmt.Fprintf(&b, "cd %s\n", quote(path.Join("/", path.Dir(p))))
			switch ino.typ {
			case tar.TypeFifo:
				fmt.Fprintf(&b, "mknod %s p\n", quote(path.Base(p)))
			case tar.TypeChar:
				fmt.Fprintf(&b, "mknod %s c %d %d\n", quote(path.Base(p)), ino.major, ino.minor)
			default:
				fmt.Fprintf(&b, "mknod %s b %d %d\n", quote(path.Base(p)), ino.major, ino.minor)
			}
			fmt.Fprintf(&b, "sif %s mode 0%o\n", q, typeBits(ino.typ)|ino.mode)
			fmt.Fprintf(&b, "sif %s uid %d\nsif %s gid %d\n", q, ino.uid, q, ino.gid)
			if !ino.mtime.IsZero() {
				fmt.Fprintf(&b, "sif %s mtime @%d\n", q, ino.mtime.Unix())
			}
		default:
			name := p
			if name == "" {
				name = "."
			}
			fi, err := t.root.Lstat(name)
			if err != nil {
				return fmt.Errorf("stat staged %s: %w", name, err)
			}
			st := fi.Sys().(*syscall.Stat_t)
			if int(st.Uid) != ino.uid {
				fmt.Fprintf(&b, "sif %s uid %d\n", q, ino.uid)
			}
			if int(st.Gid) != ino.gid {
				fmt.Fprintf(&b, "sif %s gid %d\n", q, ino.gid)
			}
			if ino.typ != tar.TypeSymlink && int64(st.Mode&0o7777) != ino.mode {
				fmt.Fprintf(&b, "sif %s mode 0%o\n", q, int64(st.Mode)&^0o7777|ino.mode)
			}
			// Symlinks are staged with the time of staging: os.Root
			// cannot set a symlink's own times.
			if ino.typ == tar.TypeSymlink && !ino.mtime.IsZero() {
				fmt.Fprintf(&b, "sif %s mtime @%d\n", q, ino.mtime.Unix())
			}
		}
		for _, k := range slices.Sorted(maps.Keys(ino.xattrs)) {
			nx++
			vf := filepath.Join(scratch, "xattr-"+strconv.Itoa(nx))
			if err := os.WriteFile(vf, []byte(ino.xattrs[k]), filenames.FileMode); err != nil {
				return fmt.Errorf("write xattr value: %w", err)
			}
			fmt.Fprintf(&b, "ea_set -f %s %s %s\n", quote(vf), q, quote(k))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// mkfs.ext4 always makes lost+found; an image that has none gets none.
	// (debugfs's rmdir takes "/lost+found" as lost+found in the current
	// directory.)
	if _, ok := t.top.children["lost+found"]; !ok {
		b.WriteString("cd /\nrmdir lost+found\n")
	}
	// mkfs.ext4 and the rmdir set the root's time.
	if mt := t.top.ino.mtime; !mt.IsZero() {
		fmt.Fprintf(&b, "sif / mtime @%d\n", mt.Unix())
	}
	return b.Bytes(), nil
}

// quote makes s one argument of a debugfs command: inside double quotes,
// a double quote is written twice (libss's parser).
func quote(s string) string {
	return `"` + strings.ReplaceAll(s, `"`, `""`) + `"`
}

func typeBits(typ byte) int64 {
	switch typ {
	case tar.TypeChar:
		return syscall.S_IFCHR
	case tar.TypeBlock:
		return syscall.S_IFBLK
	case tar.TypeFifo:
		return syscall.S_IFIFO
	}
	return 0
}

// estimate sizes the file system: blocks for the data, directories, long
// symlinks and xattrs of every inode, the inode tables, per-group metadata,
// and slack, so that mkfs.ext4 -d rarely needs a second try.
func (t *tree) estimate() (blocks, inodes int64) {
	seen := map[*inode]bool{}
	var data int64
	var count int64
	_ = t.walk(func(p string, n *node) error {
		count++
		if seen[n.ino] {
			return nil
		}
		seen[n.ino] = true
		switch n.ino.typ {
		case tar.TypeReg:
			data += (n.ino.size + blockSize - 1) / blockSize
			// An extent covers at most 128 MiB; four fit in the inode.
			data += n.ino.size / (128 << 20)
		case tar.TypeSymlink:
			data++ // targets of 60 bytes and more take a block; count all
		case tar.TypeDir:
			var bytes int64 = 24
			for name := range n.children {
				bytes += 8 + (int64(len(name))+3)&^3
			}
			// Indexed directories spend about a third more on the index.
			data += (bytes*4/3 + blockSize - 1) / blockSize
		}
		var xb int64
		for k, v := range n.ino.xattrs {
			xb += int64(len(k)+len(v)) + 16
		}
		if xb > 96 { // what the 256-byte inode holds in itself
			data += (xb + blockSize - 1) / blockSize
		}
		return nil
	})
	inodes = count + 64 // the reserved inodes and lost+found, with room
	inodeBlocks := (inodes*inodeSize + blockSize - 1) / blockSize
	groups := (data+inodeBlocks)/(8*blockSize) + 1
	blocks = data + inodeBlocks + groups*8 + 64
	blocks += blocks/20 + 256
	return blocks, inodes
}
