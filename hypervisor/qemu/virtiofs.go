package qemu

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/internal/filenames"
)

// NoVirtiofsd as Options.Virtiofsd turns virtio-fs off: shared
// directories then use 9p.
const NoVirtiofsd = "none"

// virtiofsdPaths are where distributions install a virtiofsd: Debian's
// qemu-system-common ships QEMU's C daemon in /usr/lib/qemu; Fedora's
// (Rust) virtiofsd lives in /usr/libexec. Both take the options Start
// passes.
var virtiofsdPaths = []string{"/usr/lib/qemu/virtiofsd", "/usr/libexec/virtiofsd"}

// FindVirtiofsd returns the virtiofsd to use: one on $PATH, else one in a
// distribution's place, else "".
func FindVirtiofsd() string {
	if p, err := exec.LookPath("virtiofsd"); err == nil {
		return p
	}
	for _, p := range virtiofsdPaths {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0 {
			return p
		}
	}
	return ""
}

// startVirtiofsd starts one virtiofsd per shared directory of cfg. Each
// gets its socket already listening (--fd), so that QEMU, which connects
// at start and does not retry, can never come too early. A virtiofsd
// serves one connection and exits when QEMU closes it, so the daemons live
// exactly as long as their VMM. Each daemon's undo, pushed on undo, kills
// it, for when the VMM never starts.
func startVirtiofsd(cfg *hypervisor.Config, host HostInfo, undo *cleanups) error {
	if host.Virtiofsd == "" {
		return nil
	}
	for i, s := range cfg.SharedDirs {
		cmd, err := virtiofsd(host.Virtiofsd, cfg.RunDir, i, s)
		if err != nil {
			return fmt.Errorf("start virtiofsd for shared dir %q: %w", s.Tag, err)
		}
		exited := make(chan struct{})
		go func() {
			cmd.Wait()
			close(exited)
		}()
		undo.push(func() {
			cmd.Process.Kill()
			<-exited
		})
	}
	return nil
}

// virtiofsd starts the daemon of the i-th shared directory on a socket it
// listens on for it.
func virtiofsd(bin, runDir string, i int, s hypervisor.SharedDir) (*exec.Cmd, error) {
	sock := virtiofsPath(runDir, i)
	if err := os.Remove(sock); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ln.SetUnlinkOnClose(false) // the socket is the daemon's now
	defer ln.Close()
	if err := os.Chmod(sock, filenames.FileMode); err != nil {
		return nil, err
	}
	lf, err := ln.File()
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	logf, err := os.OpenFile(filepath.Join(runDir, filenames.VirtiofsdLog(i)), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, filenames.FileMode)
	if err != nil {
		return nil, fmt.Errorf("open log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command("/bin/sh", append([]string{"-c", shareMount(s), s.HostPath, bin}, virtiofsdArgs(s)...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{lf} // fd 3
	// Own session, like the VMM: Ctrl-C on `stack up` must not end it.
	// Own mount namespace (made private by Go), for shareMount's.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Unshareflags: syscall.CLONE_NEWNS}
	if err := cmd.Start(); err != nil {
		os.Remove(sock)
		return nil, err
	}
	return cmd, nil
}

// virtiofsdArgs are the daemon's options for share s. QEMU's C virtiofsd
// (7.2) runs as root; it keeps the capabilities it needs to act as the
// guest's users, but not CAP_MKNOD: a guest's root cannot make device
// nodes in the host directory. Extended attributes stay off (its
// default), so a guest cannot set file capabilities either.
func virtiofsdArgs(s hypervisor.SharedDir) []string {
	return []string{"--fd=3", "-o", "source=" + s.HostPath, "-o", "cache=auto", "-o", "modcaps=-mknod"}
}

// shareMount is the shell script that starts virtiofsd ("$@") serving the
// shared directory ("$0") from a bind mount of it, made in the daemon's
// own mount namespace, nosuid and nodev, and read-only for a read-only
// share. The host then enforces read_only, which was only the guest's
// mount option (C virtiofsd 7.2 has no read-only mode), and a device node
// in the directory opens nothing through the share. The bind is not
// recursive: a file system mounted below the directory is not shared.
func shareMount(s hypervisor.SharedDir) string {
	flags := "nosuid,nodev"
	if s.ReadOnly {
		flags = "ro," + flags
	}
	return `mount --bind "$0" "$0" && mount -o remount,bind,` + flags + ` "$0" && exec "$@"`
}

// virtiofsdTails is the end of each virtiofsd's log, for a failed start.
func virtiofsdTails(cfg *hypervisor.Config, host HostInfo) string {
	if host.Virtiofsd == "" {
		return ""
	}
	var out string
	for i, s := range cfg.SharedDirs {
		out += logTail(filepath.Join(cfg.RunDir, filenames.VirtiofsdLog(i)), "virtiofsd of shared dir "+s.Tag)
	}
	return out
}
