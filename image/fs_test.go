package image

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// mountRO loop-mounts an ext4 image read-only and returns the mount point;
// the test is skipped when not root.
func mountRO(t *testing.T, img string) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("not root: cannot loop-mount the file system image to check its contents (the conversion itself needs no root)")
	}
	mnt := t.TempDir()
	out, err := exec.Command("mount", "-t", FSType, "-o", "loop,ro,nodev,nosuid,noexec", img, mnt).CombinedOutput()
	if err != nil {
		t.Fatalf("mount %s: %v: %s", img, err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

// fsck checks the file system image's consistency (no root needed).
func fsck(t *testing.T, img string) {
	t.Helper()
	out, err := exec.Command("e2fsck", "-fn", img).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", img, err, out)
	}
}

// listing describes every file under dir, one line each, sorted: type
// and mode, owner, size or device, content digest or link target, xattrs,
// and hard link groups. Times are left out.
func listing(t *testing.T, dir string) string {
	t.Helper()
	var lines []string
	inodes := map[uint64]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		st := fi.Sys().(*syscall.Stat_t)
		l := fmt.Sprintf("%s %s %d:%d", rel, modeString(st.Mode), st.Uid, st.Gid)
		switch st.Mode & syscall.S_IFMT {
		case syscall.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			sum := sha256.Sum256(b)
			l += fmt.Sprintf(" size=%d sha256=%s", len(b), hex.EncodeToString(sum[:6]))
			if st.Nlink > 1 {
				if first, ok := inodes[st.Ino]; ok {
					l += " link=" + first
				} else {
					inodes[st.Ino] = rel
				}
				l += fmt.Sprintf(" nlink=%d", st.Nlink)
			}
		case syscall.S_IFLNK:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			l += " -> " + target
		case syscall.S_IFCHR, syscall.S_IFBLK:
			l += fmt.Sprintf(" dev=%d,%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		if x := xattrs(t, p); x != "" {
			l += " xattrs=" + x
		}
		lines = append(lines, l)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}

func modeString(m uint32) string {
	typ := map[uint32]string{syscall.S_IFDIR: "d", syscall.S_IFREG: "-", syscall.S_IFLNK: "l",
		syscall.S_IFCHR: "c", syscall.S_IFBLK: "b", syscall.S_IFIFO: "p"}[m&syscall.S_IFMT]
	return fmt.Sprintf("%s%04o", typ, m&0o7777)
}

// xattrs lists p's xattrs as name=hex(value), sorted.
func xattrs(t *testing.T, p string) string {
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil || n == 0 {
		return ""
	}
	var out []string
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		v := make([]byte, 4096)
		m, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			t.Fatalf("getxattr %s %s: %v", p, name, err)
		}
		out = append(out, name+"="+hex.EncodeToString(v[:m]))
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}
