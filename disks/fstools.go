package disks

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
	"syscall"
)

// The file-system tools that read what a guest wrote (e2fsck and resize2fs
// on a volume that grows) parse data a guest controls: a crafted file
// system that finds a bug in them must not find root. Where stack runs as
// root they run as the unprivileged user nobody, on the volume handed to
// them as an open descriptor (/proc/self/fd/3); the volume's directory
// stays closed to them.

// fsToolUser is the user the tools run as when stack is root.
const fsToolUser = "nobody"

// runOnVolume runs the tool name on the volume at path, which it may read
// and write, with args before the volume's name; without root, as the
// caller.
func runOnVolume(ctx context.Context, path, name string, args ...string) ([]byte, error) {
	if os.Geteuid() != 0 {
		return run(ctx, name, append(args, path)...)
	}
	uid, gid, err := unprivileged()
	if err != nil {
		return nil, fmt.Errorf("run %s on %s: %w", name, path, err)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", name, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("run %s: %w", name, err)
	}
	// The tool reopens the descriptor through /proc, which checks the
	// file's permissions: it is the tool's user's for the run.
	sys := st.Sys().(*syscall.Stat_t)
	if err := f.Chown(uid, gid); err != nil {
		return nil, fmt.Errorf("run %s: hand %s to %s: %w", name, path, fsToolUser, err)
	}
	defer func() {
		f.Chown(int(sys.Uid), int(sys.Gid))
		f.Chmod(st.Mode().Perm())
	}()
	if _, err := exec.LookPath(name); err != nil {
		return nil, fmt.Errorf("find %s: %w (Debian package: e2fsprogs)", name, err)
	}
	cmd := exec.CommandContext(ctx, name, append(args, "/proc/self/fd/3")...)
	cmd.ExtraFiles = []*os.File{f}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return nil, fmt.Errorf("run %s %s %s as %s: %w: %s", name, strings.Join(args, " "), path, fsToolUser, err, msg)
	}
	return stdout.Bytes(), nil
}

// unprivileged is fsToolUser's uid and gid.
func unprivileged() (uid, gid int, err error) {
	u, err := user.Lookup(fsToolUser)
	if err != nil {
		return 0, 0, fmt.Errorf("look up user %s: %w", fsToolUser, err)
	}
	if uid, err = strconv.Atoi(u.Uid); err == nil {
		gid, err = strconv.Atoi(u.Gid)
	}
	if err != nil || uid == 0 {
		return 0, 0, fmt.Errorf("user %s: uid %s, gid %s", fsToolUser, u.Uid, u.Gid)
	}
	return uid, gid, nil
}
