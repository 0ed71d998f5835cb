//go:build linux

package guestinit

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/moby/sys/user"
	"golang.org/x/sys/unix"

	"github.com/stackvm/stack/guestproto"
)

// Where the init mounts an image VM's root (guestproto.Root).
const (
	imageMount = "/stack/image" // the image's file system, read-only
	upperMount = "/stack/rw"    // the VM's writable layer: upper/ and work/
	rootMount  = "/stack/root"  // the overlay the workload runs in
)

// imageRoot is an image VM's root as the init runs processes in it.
type imageRoot struct {
	dir     string // the overlay's mount point, in the init's view
	cred    *syscall.Credential
	home    string // the user's home directory, inside the root
	workDir string // inside the root
}

// mountRoot mounts an image VM's root: the image's disk read-only, the
// VM's writable layer, the overlay of both, and /proc, /sys and /dev in
// it. mounted is called with each mount point, in order, as it is
// mounted, so that power-off unmounts what a failed bring-up left.
func mountRoot(r *guestproto.Root, mounted func(string)) (*imageRoot, error) {
	find := func(serial string) (string, error) {
		dev, err := waitFor(deviceWait, func() (string, error) { return FindDiskBySerial("/sys/block", serial) })
		if err != nil {
			return "", fmt.Errorf("mount the image's root: %w", err)
		}
		return dev, nil
	}
	lower, err := find(r.Image)
	if err != nil {
		return nil, err
	}
	upper, err := find(r.Upper)
	if err != nil {
		return nil, err
	}
	mount := func(src, target, fstype string, flags uintptr, data string) error {
		if err := os.MkdirAll(target, 0o755); err != nil {
			return fmt.Errorf("create mount point %s: %w", target, err)
		}
		if err := unix.Mount(src, target, fstype, flags, data); err != nil {
			return fmt.Errorf("mount %s on %s: %w", src, target, err)
		}
		mounted(target)
		return nil
	}
	if err := mount(lower, imageMount, "ext4", unix.MS_RDONLY, ""); err != nil {
		return nil, err
	}
	if err := mount(upper, upperMount, "ext4", 0, ""); err != nil {
		return nil, err
	}
	for _, d := range []string{"upper", "work"} {
		if err := os.MkdirAll(filepath.Join(upperMount, d), 0o755); err != nil {
			return nil, fmt.Errorf("create the writable layer's %s: %w", d, err)
		}
	}
	opts := fmt.Sprintf("lowerdir=%s,upperdir=%s/upper,workdir=%s/work", imageMount, upperMount, upperMount)
	if err := mount("overlay", rootMount, "overlay", 0, opts); err != nil {
		return nil, err
	}
	for _, m := range []struct {
		src, target, fstype string
		flags               uintptr
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC},
		// /dev with its submounts (pts, shm): the image's processes
		// see the VM's devices, as a container sees its own.
		{"/dev", "/dev", "", unix.MS_BIND | unix.MS_REC},
	} {
		target, err := resolveInRoot(rootMount, m.target, true)
		if err != nil {
			return nil, err
		}
		if err := mount(m.src, target, m.fstype, m.flags, ""); err != nil {
			return nil, err
		}
	}
	root := &imageRoot{dir: rootMount, workDir: r.WorkingDir}
	if root.workDir == "" {
		root.workDir = "/"
	}
	// The working directory is created when the image lacks it, as
	// Docker does.
	if _, err := resolveInRoot(rootMount, root.workDir, true); err != nil {
		return nil, fmt.Errorf("working directory: %w", err)
	}
	eu, err := lookupUser(rootMount, r.User)
	if err != nil {
		return nil, err
	}
	root.home = eu.Home
	root.cred = &syscall.Credential{Uid: uint32(eu.Uid), Gid: uint32(eu.Gid)}
	for _, g := range eu.Sgids {
		root.cred.Groups = append(root.cred.Groups, uint32(g))
	}
	return root, nil
}

// lookupUser resolves spec (NAME, UID, NAME:GROUP, UID:GID; "": root) in
// the root's /etc/passwd and /etc/group, as Docker and runc do: a numeric
// UID need not be listed, a name must be.
func lookupUser(root, spec string) (*user.ExecUser, error) {
	open := func(p string) (io.Reader, func()) {
		real, err := resolveInRoot(root, p, false)
		if err != nil {
			return nil, func() {}
		}
		f, err := os.Open(real)
		if err != nil {
			return nil, func() {}
		}
		return f, func() { f.Close() }
	}
	passwd, closePasswd := open("/etc/passwd")
	defer closePasswd()
	group, closeGroup := open("/etc/group")
	defer closeGroup()
	if spec == "" {
		spec = "0"
	}
	eu, err := user.GetExecUser(spec, &user.ExecUser{Home: "/"}, passwd, group)
	if err != nil {
		return nil, fmt.Errorf("image user %q: %w", spec, err)
	}
	return eu, nil
}

// setHome sets HOME to the user's home directory unless vars has one.
func (r *imageRoot) setHome(vars map[string]string) {
	if _, ok := vars["HOME"]; !ok {
		vars["HOME"] = r.home
	}
}

// enter makes cmd run in the root, as its user, in dir ("": the image's
// working directory).
func (r *imageRoot) enter(cmd *exec.Cmd, dir string) {
	if dir == "" {
		dir = r.workDir
	}
	cmd.Dir = dir
	cmd.SysProcAttr.Chroot = r.dir
	cmd.SysProcAttr.Credential = r.cred
}

// writeEtc writes the VM's /etc/hosts, /etc/resolv.conf and /etc/hostname
// into the root, replacing the image's (a symbolic link there, say to
// systemd-resolved's file, is replaced, not followed).
func (r *imageRoot) writeEtc(files map[string][]byte) error {
	etc, err := resolveInRoot(r.dir, "/etc", true)
	if err != nil {
		return err
	}
	for name, data := range files {
		p := filepath.Join(etc, name)
		if fi, err := os.Lstat(p); err == nil && !fi.Mode().IsRegular() {
			if err := os.Remove(p); err != nil {
				return fmt.Errorf("replace /etc/%s in the image's root: %w", name, err)
			}
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			return fmt.Errorf("write /etc/%s in the image's root: %w", name, err)
		}
	}
	return nil
}

// resolveInRoot resolves p as if root were / (symbolic links and ".."
// stay inside it) and returns the result in the init's view. With mkdir,
// missing directories on the way are created (0755, root's).
func resolveInRoot(root, p string, mkdir bool) (string, error) {
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", fmt.Errorf("open the image's root: %w", err)
	}
	defer unix.Close(rfd)
	fd, err := openInRoot(rfd, p, 0)
	if errors.Is(err, unix.ENOENT) && mkdir {
		if err = mkdirInRoot(rfd, p); err == nil {
			fd, err = openInRoot(rfd, p, 0)
		}
	}
	if err != nil {
		return "", fmt.Errorf("resolve %s in the image's root: %w", p, err)
	}
	defer unix.Close(fd)
	real, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
	if err != nil {
		return "", fmt.Errorf("resolve %s in the image's root: %w", p, err)
	}
	return real, nil
}

func openInRoot(rfd int, p string, flags uint64) (int, error) {
	return unix.Openat2(rfd, p, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_CLOEXEC | flags,
		Resolve: unix.RESOLVE_IN_ROOT | unix.RESOLVE_NO_MAGICLINKS,
	})
}

// maxLinks bounds the dangling links mkdirInRoot follows, as the kernel
// bounds a path's links (ELOOP).
const maxLinks = 40

// mkdirInRoot creates p's missing directories one by one, each resolved
// in the root. A dangling symbolic link on the way is followed, its target
// created, as mkdir -p does.
func mkdirInRoot(rfd int, p string) error { return mkdirInRootLinks(rfd, p, 0) }

func mkdirInRootLinks(rfd int, p string, links int) error {
	cur := "/"
	for _, part := range strings.Split(strings.Trim(path.Clean("/"+p), "/"), "/") {
		if part == "" {
			continue
		}
		next := path.Join(cur, part)
		if fd, err := openInRoot(rfd, next, unix.O_DIRECTORY); err == nil {
			unix.Close(fd)
			cur = next
			continue
		} else if !errors.Is(err, unix.ENOENT) {
			return err
		}
		pfd, err := openInRoot(rfd, cur, unix.O_DIRECTORY)
		if err != nil {
			return err
		}
		err = unix.Mkdirat(pfd, part, 0o755)
		var target string
		if errors.Is(err, unix.EEXIST) {
			target, err = readlinkat(pfd, part)
		}
		unix.Close(pfd)
		if err != nil {
			return fmt.Errorf("create %s: %w", next, err)
		}
		if target != "" {
			if links >= maxLinks {
				return fmt.Errorf("create %s: %w", next, unix.ELOOP)
			}
			if !path.IsAbs(target) {
				target = path.Join(cur, target)
			}
			if err := mkdirInRootLinks(rfd, target, links+1); err != nil {
				return err
			}
		}
		cur = next
	}
	return nil
}

// readlinkat reads the symbolic link name in dir; an entry that is not a
// link is an error (EINVAL).
func readlinkat(dir int, name string) (string, error) {
	buf := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(dir, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// lookPath finds file in the directories of pathList, in root (""
// for the init's own root), and returns its path as seen from that root.
func lookPath(root, file, pathList string) (string, error) {
	for _, dir := range filepath.SplitList(pathList) {
		if dir == "" {
			dir = "."
		}
		p := filepath.Join(dir, file)
		real := p
		if root != "" {
			var err error
			if real, err = resolveInRoot(root, p, false); err != nil {
				continue
			}
		}
		if st, err := os.Stat(real); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", exec.ErrNotFound
}
