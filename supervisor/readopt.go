package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"syscall"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/proc"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/supervisor/api"
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
		var spec api.NetworkSpec
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
		r, err := api.ReadRecord(filepath.Dir(path))
		if err != nil {
			s.log.Error("re-adopt vm", "record", path, "err", err)
			continue
		}
		if r.Version != api.Version {
			s.retire(r)
			continue
		}
		s.readoptVM(ctx, r)
	}
}

// retire deals with the record of a VM that another version of stack
// started: its spec is in a form this supervisor does not read, so the VM
// cannot be supervised or restarted. Its VMM (when the recorded process
// still runs) is stopped, and the VM is kept as failed, so that `ps` shows
// why and the next `up` re-creates it.
func (s *Supervisor) retire(r *api.Record) {
	reason := fmt.Sprintf("it was started by another version of stack (record version %d, this one reads %d); the next up re-creates it", r.Version, api.Version)
	if p := r.Process; p != nil && proc.Alive(p.PID, p.StartTime) {
		if err := syscall.Kill(p.PID, syscall.SIGKILL); err != nil {
			s.log.Error("stop a VMM of another version", "pid", p.PID, "err", err)
		}
	}
	st := r.Status
	st.State, st.Reason, st.PID, st.Halted, st.Held = api.StateFailed, reason, 0, false, false
	v := &vmRun{s: s, spec: r.Spec, st: st, runDir: filenames.VMRuntime(s.opts.RuntimeRoot, s.opts.Namespace, r.Spec.Name)}
	s.mu.Lock()
	s.vms[v.spec.Address] = v
	v.mu.Lock()
	v.writeRecordLocked()
	v.mu.Unlock()
	s.mu.Unlock()
	os.RemoveAll(v.runDir)
	s.log.Warn("retired a VM of another stack version", "vm", v.spec.Address, "reason", reason)
}

func (s *Supervisor) readoptVM(ctx context.Context, r *api.Record) {
	if len(r.SealedGuestConfig) > 0 {
		cfg, err := s.openConfig(r.SealedGuestConfig)
		if err != nil {
			// The VM is still re-adopted while it runs; booting it again
			// needs `stack up` to re-create it.
			s.log.Warn("open the sealed guest config; the VM cannot be booted again from its record", "vm", r.Spec.Address, "err", err)
		}
		r.Spec.GuestConfig = cfg
	}
	v := &vmRun{s: s, spec: r.Spec, st: r.Status, ports: r.Ports,
		runDir: filenames.VMRuntime(s.opts.RuntimeRoot, s.opts.Namespace, r.Spec.Name)}
	if r.RunDir != "" {
		v.runDir = r.RunDir // taken from a pool
	}
	s.mu.Lock()
	s.vms[v.spec.Address] = v
	s.mu.Unlock()
	if r.Process == nil || r.Status.State == api.StateStopped || r.Status.State == api.StateFailed {
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
		v.mu.Lock()
		v.st.State, v.st.Reason = api.StateFailed, reason
		v.writeRecordLocked()
		v.mu.Unlock()
		s.emitVM(v, api.PhaseFailed, reason)
		return
	}
	if err := s.wire(v); err != nil {
		s.log.Error("re-wire vm", "vm", v.spec.Address, "err", err)
	}
	s.adopt(v, inst, adoptReadopted)
	s.log.Info("re-adopted vm", "vm", v.spec.Address, "pid", r.Process.PID)
}
