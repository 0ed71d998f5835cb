package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sort"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/state"
)

// readopt restores what an earlier supervisor of this namespace left: its
// networks (switches come back on the same socket paths, so the VMMs' dgram
// NICs keep working) and its VMs, re-adopted by pid and start time. A VM
// whose process died while nobody watched is kept as failed, so that `ps`
// shows it and the next `up` re-creates it.
func (s *Supervisor) readopt(ctx context.Context) {
	nsDir := filenames.NamespaceState(s.opts.StateRoot, s.opts.Namespace)
	nets, _ := filepath.Glob(filepath.Join(nsDir, filenames.NetworkDir, "*.json"))
	sort.Strings(nets)
	for _, path := range nets {
		var spec NetworkSpec
		data, err := os.ReadFile(path)
		if err == nil {
			err = json.Unmarshal(data, &spec)
		}
		if err == nil {
			err = s.ensureNetwork(spec)
		}
		if err != nil {
			s.log.Error("re-adopt network", "record", path, "err", err)
		}
	}
	vms, _ := filepath.Glob(filepath.Join(nsDir, filenames.VMDir, "*", filenames.VMRecord))
	sort.Strings(vms)
	for _, path := range vms {
		var r record
		data, err := os.ReadFile(path)
		if err == nil {
			err = json.Unmarshal(data, &r)
		}
		if err != nil {
			s.log.Error("re-adopt vm", "record", path, "err", err)
			continue
		}
		s.readoptVM(ctx, &r)
	}
}

func (s *Supervisor) readoptVM(ctx context.Context, r *record) {
	v := &vmRun{s: s, spec: r.Spec, st: r.Status,
		runDir: filenames.VMRuntime(s.opts.RuntimeRoot, s.opts.Namespace, r.Spec.Name)}
	s.mu.Lock()
	s.vms[v.spec.Address] = v
	s.mu.Unlock()
	if r.Process == nil || v.st.State == state.StatusStopped || v.st.State == state.StatusFailed {
		return // nothing runs; the record stays for ps and the planner
	}
	inst, err := s.opts.Driver.Attach(ctx, hypervisor.Identity{
		Driver: r.Process.Driver, PID: r.Process.PID, StartTime: r.Process.StartTime, RunDir: r.Process.RunDir,
	})
	if err != nil {
		reason := "its VMM died while no supervisor was watching"
		if !errors.Is(err, hypervisor.ErrGone) {
			reason = "re-adopting its VMM failed: " + err.Error()
		}
		s.mu.Lock()
		v.st.State, v.st.Reason = state.StatusFailed, reason
		v.writeRecordLocked()
		s.mu.Unlock()
		s.emitVM(v, PhaseFailed, reason)
		return
	}
	if err := s.wire(v); err != nil {
		s.log.Error("re-wire vm", "vm", v.spec.Address, "err", err)
	}
	s.adopt(v, inst, true)
	s.log.Info("re-adopted vm", "vm", v.spec.Address, "pid", r.Process.PID)
}
