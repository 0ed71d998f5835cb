package qemu

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/internal/filenames"
)

// Socket and file paths the driver uses inside a VM's runtime directory.
func qmpPath(runDir string) string        { return filepath.Join(runDir, filenames.QMPSocket) }
func consoleVMMPath(runDir string) string { return filepath.Join(runDir, filenames.ConsoleVMMSocket) }
func agentPath(runDir string) string      { return filepath.Join(runDir, filenames.AgentSocket) }
func configDiskPath(runDir string) string { return filepath.Join(runDir, filenames.RunConfigDisk) }
func stderrPath(runDir string) string     { return filepath.Join(runDir, filenames.StderrFile) }

func virtiofsPath(runDir string, i int) string {
	return filepath.Join(runDir, filenames.VirtiofsSocket(i))
}

// ConsoleVMMSocket is where QEMU serves the serial console of the VM whose
// run directory is runDir (the console relay connects to it).
func ConsoleVMMSocket(runDir string) string { return consoleVMMPath(runDir) }

// privateSockets makes the sockets QEMU serves, which it creates with the
// umask's mode, 0600 like every other socket of stack (their directory is
// 0700 too). QEMU has created them all once its monitor answers; a VM
// without a guest agent has no agent socket.
func (d *Driver) privateSockets(cfg *hypervisor.Config) {
	paths := vmmSockets(cfg.RunDir)
	for _, n := range cfg.NICs {
		if n.DgramLocal != "" {
			paths = append(paths, n.DgramLocal)
		}
	}
	for _, p := range paths {
		if err := os.Chmod(p, filenames.FileMode); err != nil && !errors.Is(err, fs.ErrNotExist) {
			d.log.Warn("make vmm socket private", "path", p, "err", err)
		}
	}
}

// prepareRunDir removes sockets left by an earlier VMM in the same run
// directory (QEMU refuses to bind over them), writes the config disk and
// records the argv.
// configSize, when larger, is the config disk's size (a sparse tail).
func (d *Driver) prepareRunDir(cfg *hypervisor.Config, args []string, configSize int) error {
	st, err := os.Stat(cfg.RunDir)
	if err != nil {
		return fmt.Errorf("check run dir: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("check run dir: %s is not a directory", cfg.RunDir)
	}
	removeSockets(cfg.RunDir)
	if len(cfg.GuestConfig) > 0 {
		img := ConfigDiskImage(cfg.GuestConfig)
		if err := writePrivate(configDiskPath(cfg.RunDir), img); err != nil {
			return fmt.Errorf("write config disk: %w", err)
		}
		if configSize > len(img) {
			if err := os.Truncate(configDiskPath(cfg.RunDir), int64(configSize)); err != nil {
				return fmt.Errorf("write config disk: %w", err)
			}
		}
	}
	b, err := json.MarshalIndent(append([]string{d.opts.Binary}, args...), "", "  ")
	if err != nil {
		return fmt.Errorf("encode argv: %w", err)
	}
	if err := writePrivate(filepath.Join(cfg.RunDir, filenames.ArgsFile), append(b, '\n')); err != nil {
		return fmt.Errorf("write argv file: %w", err)
	}
	return nil
}

// recordedAccel reads the accelerator from the argv that prepareRunDir
// recorded, or "".
func recordedAccel(runDir string) string {
	argv, err := recordedArgv(runDir)
	if err != nil {
		return ""
	}
	return argAfter(argv, "-accel")
}

func writePrivate(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, filenames.FileMode)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// removeSockets removes the sockets QEMU serves in runDir. QEMU unlinks
// them itself on a clean exit, not when killed.
func removeSockets(runDir string) {
	for _, p := range vmmSockets(runDir) {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			slog.Warn("remove vmm socket", "path", p, "err", err)
		}
	}
}

// vmmSockets are the sockets QEMU serves in runDir (the agent's only for
// a VM with a guest agent).
func vmmSockets(runDir string) []string {
	return []string{qmpPath(runDir), consoleVMMPath(runDir), agentPath(runDir)}
}
