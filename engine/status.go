package engine

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/stackvm/stack/state"
	"github.com/stackvm/stack/supervisor/api"
	"github.com/stackvm/stack/supervisor/client"
)

// VMStatus is one VM as `ps` shows it.
type VMStatus struct {
	Address   string            `json:"address"`
	Name      string            `json:"name"`
	State     string            `json:"state"` // see state.Status*
	ExitCode  *int              `json:"exit_code"`
	Reason    string            `json:"reason,omitempty"`
	Addresses map[string]string `json:"addresses"`
	Ports     []Port            `json:"ports"`
	StartedAt time.Time         `json:"started_at,omitzero"`
	Restarts  int               `json:"restarts,omitempty"`
	// Held: booted, its workload waiting for its dependencies.
	Held bool `json:"held,omitempty"`
	PID  int  `json:"pid,omitempty"`
	// Halted: stopped on request (`stack stop`), kept to be started again.
	Halted bool `json:"halted,omitempty"`
	// Health is its health check's verdict: starting, healthy or unhealthy
	// ("" without one, or before it is ready).
	Health string `json:"health,omitempty"`
	// Accel is the accelerator of its VMM: kvm or tcg.
	Accel string `json:"accel,omitempty"`
	// Boot is how its VMM came up: cold, or template (restored from the
	// boot template of its shape).
	Boot string `json:"boot,omitempty"`
	// Warnings are what is wrong with a ready VM: each cloud-init module
	// that failed in this boot, with its error.
	Warnings []string `json:"warnings,omitempty"`
	// Stale, when set, says why this status is the records' and not the
	// supervisor's: none runs, or it did not answer. A VMM may run, but
	// nothing forwards its published ports or restarts it.
	Stale string `json:"stale,omitempty"`
}

// Port is a published port: HostIP:HostPort on the host forwards to
// GuestPort.
type Port struct {
	HostPort  int    `json:"host_port"`
	GuestPort int    `json:"guest_port"`
	Protocol  string `json:"protocol"`
	// HostIP is the host address it listens on; zero: 127.0.0.1 (see
	// Host).
	HostIP netip.Addr `json:"host_ip,omitzero"`
}

// Host is the host address the port listens on.
func (p Port) Host() netip.Addr {
	if p.HostIP.IsValid() {
		return p.HostIP
	}
	return netip.AddrFrom4([4]byte{127, 0, 0, 1})
}

// OpenToOtherHosts reports whether other hosts can reach the port: it
// listens on an address other than a loopback one.
func (p Port) OpenToOtherHosts() bool { return !p.Host().IsLoopback() }

func statusOf(v api.VMStatus) VMStatus {
	s := VMStatus{
		Address: v.Address, Name: v.Name, State: string(v.State), ExitCode: v.ExitCode, Reason: v.Reason,
		Addresses: v.Addresses, Ports: []Port{}, StartedAt: v.StartedAt, Restarts: v.Restarts,
		Held: v.Held, PID: v.PID, Halted: v.Halted, Health: v.Health, Accel: v.Accel, Boot: v.Boot,
		Warnings: v.Warnings,
	}
	if v.Paused && !v.State.Ended() {
		s.State = state.StatusPaused
	}
	if s.Addresses == nil {
		s.Addresses = map[string]string{}
	}
	for _, p := range v.Ports {
		s.Ports = append(s.Ports, Port(p))
	}
	return s
}

// Status reports every VM of the namespace, in address order: live from
// the supervisor when it runs, else from the records it left (a VM whose
// process is gone shows as failed).
func (e *Engine) Status(ctx context.Context) ([]VMStatus, error) {
	st, err := e.store.Read()
	if err != nil {
		return nil, err
	}
	live := map[string]api.VMStatus{}
	stale := ""
	var na *client.NoAnswerError
	sup, err := e.dial(ctx)
	if err == nil {
		var vms []api.VMStatus
		vms, err = sup.Status(ctx)
		for _, v := range vms {
			live[v.Address] = v
		}
	}
	switch {
	case IsNoSupervisor(err):
		stale = "no supervisor runs for the namespace"
	case errors.As(err, &na):
		stale = na.Error()
	case err != nil:
		return nil, err
	}
	out := make([]VMStatus, 0, len(st.VMs))
	for _, addr := range SortedAddresses(st) {
		if v, ok := live[addr]; ok {
			out = append(out, statusOf(v))
			continue
		}
		v := e.recordedStatus(st.VMs[addr])
		v.Stale = stale
		out = append(out, v)
	}
	return out, nil
}

// recordedStatus is a VM's status from the state file and the
// supervisor's record, when no supervisor answers.
func (e *Engine) recordedStatus(rec *state.VM) VMStatus {
	r := e.readRecord(rec.Name)
	var v VMStatus
	if r != nil {
		v = statusOf(r.Status)
		v.Held, v.Halted, v.Restarts = false, false, 0
		if r.Process != nil {
			v.PID = r.Process.PID
		}
	} else {
		v = VMStatus{Address: rec.Address, Name: rec.Name, State: rec.Status, ExitCode: rec.ExitCode, Reason: rec.Reason,
			Ports: []Port{}, StartedAt: rec.StartedAt}
		if rec.Process != nil {
			v.PID = rec.Process.PID
		}
	}
	v.Address, v.Name, v.Addresses = rec.Address, rec.Name, map[string]string{}
	for _, n := range rec.NICs {
		v.Addresses[n.Network] = n.IP.String()
	}
	if l := observe(rec, r); !l.Alive && (v.State == state.StatusReady || v.State == state.StatusBooting || v.State == state.StatusCreating) {
		v.State, v.Reason = state.StatusFailed, l.Detail
	}
	return v
}

// PoolStatus is a warm pool as `ps` shows it.
type PoolStatus = api.PoolStatus

// Pools lists the namespace's warm pools (none when no supervisor runs or
// answers: Status marks the VMs stale then).
func (e *Engine) Pools(ctx context.Context) ([]PoolStatus, error) {
	sup, err := e.dial(ctx)
	var na *client.NoAnswerError
	if IsNoSupervisor(err) || errors.As(err, &na) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return sup.Pools(ctx)
}

// NotReadyError is what Wait returns for a VM that stopped or failed
// instead of becoming ready.
type NotReadyError struct {
	VM       string // instance name
	State    string // stopped or failed
	ExitCode *int   // when it exited
	Reason   string
}

func (e *NotReadyError) Error() string {
	msg := fmt.Sprintf("vm %s is %s", e.VM, e.State)
	if e.ExitCode != nil {
		msg += fmt.Sprintf(" (exit code %d)", *e.ExitCode)
	}
	if e.Reason != "" {
		msg += ": " + e.Reason
	}
	return msg
}

// waitInterval is how often Wait looks at the VMs' status.
const waitInterval = 100 * time.Millisecond

// Wait blocks until the VMs at the addresses in only (nil: all of the
// namespace) are ready. It returns a *NotReadyError (joined, one per VM) as
// soon as one is stopped or failed (a restart the policy may still make is
// not waited for), and ctx's error when ctx ends first.
func (e *Engine) Wait(ctx context.Context, only map[string]bool) error {
	return e.wait(ctx, only)
}

func (e *Engine) wait(ctx context.Context, only map[string]bool) error {
	t := time.NewTicker(waitInterval)
	defer t.Stop()
	for {
		list, err := e.Status(ctx)
		if err != nil {
			return fmt.Errorf("wait: %w", err)
		}
		var errs []error
		pending := 0
		for _, s := range list {
			if only != nil && !only[s.Address] {
				continue
			}
			switch s.State {
			case state.StatusReady:
			case state.StatusStopped, state.StatusFailed:
				errs = append(errs, &NotReadyError{VM: s.Name, State: s.State, ExitCode: s.ExitCode, Reason: s.Reason})
			default:
				pending++
			}
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
		if pending == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait: %w", ctx.Err())
		case <-t.C:
		}
	}
}
