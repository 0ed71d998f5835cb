package supervisor

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/stackvm/stack/hypervisor/proc"
	"github.com/stackvm/stack/internal/filenames"
)

// killOrphanVMMs ends the VMMs that run in this namespace's runtime
// directory without a record: a supervisor killed between starting a VMM
// and recording it (a window of a few milliseconds) left such a VMM
// running, which no later supervisor re-adopted and no down could find,
// while the next up started the VM a second time. It runs after readopt,
// so every VMM that a record names is known; a VMM is recognised by the
// pid file the driver writes into its run directory at once, and by its
// command line naming that directory (a pid reused by another process is
// left alone).
func (s *Supervisor) killOrphanVMMs() {
	adopted := map[int]bool{}
	s.mu.Lock()
	for _, v := range s.vms {
		v.mu.Lock()
		adopted[v.st.PID] = true
		v.mu.Unlock()
	}
	s.mu.Unlock()
	dirs, _ := filepath.Glob(filepath.Join(filenames.NamespaceRuntime(s.opts.RuntimeRoot, s.opts.Namespace), "*", filenames.PIDFile))
	for _, pidFile := range dirs {
		runDir := filepath.Dir(pidFile)
		b, err := os.ReadFile(pidFile)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 1 || adopted[pid] || !runsIn(pid, runDir) {
			continue
		}
		s.log.Warn("killing a VMM that runs without a record (its supervisor was killed while it started)", "pid", pid, "run_dir", runDir)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			s.log.Warn("kill orphan VMM", "pid", pid, "err", err)
			continue
		}
		os.Remove(pidFile)
	}
}

// runsIn reports whether the live process pid has runDir in its command
// line.
func runsIn(pid int, runDir string) bool {
	st, err := proc.StartTime(pid)
	if err != nil || !proc.Alive(pid, st) {
		return false
	}
	cmdline, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cmdline")
	return err == nil && bytes.Contains(cmdline, []byte(runDir+"/"))
}
