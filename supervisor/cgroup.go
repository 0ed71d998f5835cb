package supervisor

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/stackvm/stack/internal/cgroup"
	"github.com/stackvm/stack/internal/filenames"
)

// cpuGroup is the cgroup of v's VMM: stack/<namespace>/<vm>.
func (s *Supervisor) cpuGroup(v *vmRun) (cgroup.Group, error) {
	l, err := cgroup.Detect()
	if err != nil {
		return cgroup.Group{}, err
	}
	return l.Group(s.opts.Namespace, v.spec.Name), nil
}

// limitCPU puts v's VMM, process pid, into its cgroup with the VM's
// cpu_limit; a VM without one is left where the supervisor runs. It runs
// before the guest's CPUs start (BeforeBoot, claim), so the guest never
// runs unlimited.
func (s *Supervisor) limitCPU(v *vmRun, pid int) error {
	v.mu.Lock()
	limit := v.spec.CPULimit
	v.mu.Unlock()
	if limit <= 0 {
		return nil
	}
	g, err := s.cpuGroup(v)
	if err == nil {
		err = g.Create(limit)
	}
	if err == nil {
		err = g.Add(pid)
	}
	if err != nil {
		return fmt.Errorf("limit the CPU of %s: %w", v.spec.Address, err)
	}
	return nil
}

// setCPULimit changes a running VM's limit in place (update-vm): a VM
// limited for the first time has its VMM moved into its group; 0 lifts
// the limit and keeps the group until the VM stops.
func (s *Supervisor) setCPULimit(v *vmRun, limit float64) error {
	v.mu.Lock()
	old, pid, halted := v.spec.CPULimit, v.st.PID, v.st.Halted
	v.mu.Unlock()
	if old == limit {
		return nil
	}
	g, err := s.cpuGroup(v)
	switch {
	case err != nil:
	case halted || pid == 0:
		// No VMM: the next boot applies the spec's limit.
	case limit == 0:
		err = g.SetCPULimit(0)
	default:
		if err = g.Create(limit); err == nil {
			err = g.Add(pid)
		}
	}
	if err != nil {
		return fmt.Errorf("update the CPU limit of %s: %w", v.spec.Address, err)
	}
	return nil
}

// removeCPUGroup removes v's cgroup once its VMM is gone, if it ever had
// one.
func (s *Supervisor) removeCPUGroup(v *vmRun) {
	g, err := s.cpuGroup(v)
	if err != nil {
		return
	}
	for _, d := range g.Dirs() {
		if _, err := os.Stat(d); err != nil {
			continue
		}
		if err := g.Remove(); err != nil {
			s.log.Warn("remove cgroup", "vm", v.spec.Address, "err", err)
		}
		return
	}
}

// runDirPID reads the pid file the driver writes in a VMM's run
// directory before BeforeBoot.
func runDirPID(runDir string) (int, error) {
	b, err := os.ReadFile(filepath.Join(runDir, filenames.PIDFile))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
