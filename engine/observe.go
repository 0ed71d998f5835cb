// Package engine applies plans: it walks a plan's actions in parallel along
// their dependencies, drives the hypervisor, the switch and the seed
// builders, records state after every step and waits for readiness. It also
// observes what is running, which the planner needs to see drift.
package engine

import (
	"fmt"

	"github.com/stackvm/stack/hypervisor/proc"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor"
)

// Observe reports whether each recorded VM is still running. A VM counts as
// alive only when its VMM process still exists with the same start time;
// anything else is drift that the planner re-creates. The supervisor's
// record of a VM, when there is one, is more recent than the state file (it
// restarts VMs by their restart policy), so it wins.
func Observe(stateRoot string, st *state.State) map[string]planner.Liveness {
	out := make(map[string]planner.Liveness, len(st.VMs))
	for addr, vm := range st.VMs {
		out[addr] = ObserveVM(stateRoot, st.Namespace, vm)
	}
	return out
}

// ObserveVM reports whether one recorded VM is still running.
func ObserveVM(stateRoot, namespace string, vm *state.VM) planner.Liveness {
	if status, process, err := supervisor.ReadRecord(filenames.VMState(stateRoot, namespace, vm.Name)); err == nil {
		if status.Halted {
			// `stack stop`: kept with its disks, to be started again.
			return planner.Liveness{Stopped: true, Detail: "it was stopped (stack stop)"}
		}
		if status.Held {
			// Booted early, but the up that was to release its workload
			// was interrupted: nothing would ever start it.
			return planner.Liveness{Detail: "its workload is still held for its dependencies (an interrupted up)"}
		}
		merged := *vm
		merged.Status, merged.ExitCode, merged.Reason = status.State, status.ExitCode, status.Reason
		if process != nil {
			merged.Process = process
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
