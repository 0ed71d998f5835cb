package engine

import (
	"fmt"

	"github.com/stackvm/stack/hypervisor/proc"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor/api"
)

// Observe reports whether each recorded VM is still running. A VM counts as
// alive only when its VMM process still exists with the same start time;
// anything else is drift that the planner re-creates. The supervisor's
// record of a VM, when there is one, is more recent than the state file (it
// restarts VMs by their restart policy), so it wins.
func (e *Engine) Observe(st *state.State) map[string]planner.Liveness {
	out := make(map[string]planner.Liveness, len(st.VMs))
	for addr, vm := range st.VMs {
		out[addr] = observe(vm, e.readRecord(vm.Name))
	}
	return out
}

// readRecord reads the supervisor's record of a VM, or nil.
func (e *Engine) readRecord(name string) *api.Record {
	r, err := api.ReadRecord(filenames.VMState(e.opts.StateRoot, e.opts.Namespace, name))
	if err != nil {
		return nil
	}
	return r
}

// observe says whether a recorded VM still runs, from the state file's
// record of it and the supervisor's (r, nil when there is none).
func observe(vm *state.VM, r *api.Record) planner.Liveness {
	if r != nil {
		if r.Status.Halted {
			// `stack stop`: kept with its disks, to be started again.
			return planner.Liveness{Stopped: true, Detail: "it was stopped (stack stop)"}
		}
		if r.Status.Held {
			// Booted early, but the up that was to release its workload
			// was interrupted: nothing would ever start it.
			return planner.Liveness{Detail: "its workload is still held for its dependencies (an interrupted up)"}
		}
		merged := *vm
		merged.Status, merged.ExitCode, merged.Reason = string(r.Status.State), r.Status.ExitCode, r.Status.Reason
		if p := r.Process; p != nil {
			merged.Process = &state.Process{Driver: p.Driver, PID: p.PID, StartTime: p.StartTime, RunDir: p.RunDir}
		}
		vm = &merged
	}
	switch {
	case vm.Status == state.StatusFailed:
		return planner.Liveness{Detail: "it failed" + exitDetail(vm)}
	case vm.Status == state.StatusStopped:
		return planner.Liveness{Detail: "it stopped" + exitDetail(vm)}
	case vm.Process == nil:
		return planner.Liveness{Detail: "it never started"}
	case !proc.Alive(vm.Process.PID, vm.Process.StartTime):
		return planner.Liveness{Detail: fmt.Sprintf("its process (pid %d) is gone", vm.Process.PID)}
	}
	return planner.Liveness{Alive: true}
}

func exitDetail(vm *state.VM) string {
	s := ""
	if vm.ExitCode != nil {
		s = fmt.Sprintf(" with exit code %d", *vm.ExitCode)
	}
	if vm.Reason != "" {
		s += ": " + vm.Reason
	}
	return s
}
