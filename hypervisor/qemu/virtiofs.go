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
	cmd := exec.Command(bin, "--fd=3", "-o", "source="+s.HostPath, "-o", "cache=auto")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.ExtraFiles = []*os.File{lf} // fd 3
	// Own session, like the VMM: Ctrl-C on `stack up` must not end it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		os.Remove(sock)
		return nil, err
	}
	return cmd, nil
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
