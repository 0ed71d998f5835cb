package stack

import (
	"context"
	"errors"
	"path/filepath"
	"sort"

	"github.com/stackvm/stack/engine"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/planner"
	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor"
)

// VMStatus is one VM as `ps` shows it.
type VMStatus = supervisor.VMStatus

// Status reports every VM of the namespace: live from the supervisor when
// it runs, else from the records it left (a VM whose process is gone shows
// as failed).
func (p *Project) Status(ctx context.Context) ([]VMStatus, error) {
	st, err := p.Store().Read()
	if err != nil {
		return nil, err
	}
	live := map[string]VMStatus{}
	if c, err := supervisor.Dial(ctx, filenames.RuntimeRoot(), p.StateDir, p.Stack.Namespace); err == nil {
		resp, err := c.Call(ctx, &supervisor.Request{Op: supervisor.OpStatus})
		if err != nil {
			return nil, err
		}
		for _, v := range resp.VMs {
			live[v.Address] = v
		}
	} else if !errors.Is(err, supervisor.ErrNotRunning) {
		return nil, err
	}
	out := make([]VMStatus, 0, len(st.VMs))
	for _, addr := range st.VMAddresses() {
		rec := st.VMs[addr]
		if v, ok := live[addr]; ok {
			out = append(out, v)
			continue
		}
		v := VMStatus{Address: addr, Name: rec.Name, State: rec.Status, ExitCode: rec.ExitCode, Reason: rec.Reason,
			Addresses: map[string]string{}, Ports: []supervisor.PublishSpec{}, StartedAt: rec.StartedAt}
		if rec.Process != nil {
			v.PID = rec.Process.PID
		}
		if r, proc, err := supervisor.ReadRecord(filenames.VMState(p.StateDir, p.Stack.Namespace, rec.Name)); err == nil {
			v.State, v.ExitCode, v.Reason, v.Ports, v.StartedAt = r.State, r.ExitCode, r.Reason, r.Ports, r.StartedAt
			if proc != nil {
				v.PID = proc.PID
			}
		}
		for _, n := range rec.NICs {
			v.Addresses[n.Network] = n.IP.String()
		}
		if l := engine.ObserveVM(p.StateDir, p.Stack.Namespace, rec); !l.Alive && (v.State == state.StatusReady || v.State == state.StatusBooting || v.State == state.StatusCreating) {
			v.State, v.Reason = state.StatusFailed, l.Detail
		}
		if v.Ports == nil {
			v.Ports = []supervisor.PublishSpec{}
		}
		out = append(out, v)
	}
	sort.Slice(out, func(i, j int) bool { return planner.CompareAddress(out[i].Address, out[j].Address) < 0 })
	return out, nil
}

// ConsoleLog is the path of a VM's console log.
func (p *Project) ConsoleLog(vm string) string {
	return filepath.Join(filenames.VMState(p.StateDir, p.Stack.Namespace, vm), filenames.ConsoleLog)
}

// ConsoleSocket is the socket `stack console` attaches to.
func (p *Project) ConsoleSocket(vm string) string {
	return filepath.Join(filenames.VMRuntime(filenames.RuntimeRoot(), p.Stack.Namespace, vm), filenames.ConsoleSocket)
}

// VMNames lists the namespace's VM instance names in address order.
func (p *Project) VMNames() ([]string, error) {
	st, err := p.Store().Read()
	if err != nil {
		return nil, err
	}
	addrs := st.VMAddresses()
	sort.Slice(addrs, func(i, j int) bool { return planner.CompareAddress(addrs[i], addrs[j]) < 0 })
	names := make([]string, 0, len(addrs))
	for _, a := range addrs {
		names = append(names, st.VMs[a].Name)
	}
	return names, nil
}
