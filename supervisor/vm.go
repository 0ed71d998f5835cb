package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/console"
	"github.com/stackvm/stack/hypervisor/proc"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
	"github.com/stackvm/stack/supervisor/api"
)

// vmRun is one supervised VM. Its fields are guarded by the supervisor's mu,
// except spec, which is fixed at start (update-vm replaces the parts that
// may change in place under mu).
type vmRun struct {
	s      *Supervisor
	spec   api.VMSpec
	runDir string
	// nics are the VMM's ends of the VM's switch ports, made by wire.
	nics []hypervisor.NIC

	inst  hypervisor.Instance
	relay *console.Relay
	st    api.VMStatus

	stopping   bool
	released   bool   // release-vm was asked for (Hold)
	guestExit  *int   // the workload's exit code, as the guest reported it
	guestReady bool   // the guest init reported ready
	guestErr   string // the guest init reported a bring-up failure
	// guestNews is closed (and replaced) when guestReady or guestErr
	// changes, so that waiters wake at once instead of at a poll tick.
	guestNews chan struct{}
	execs     map[string]*execQueue // open exec sessions by ID
	loopDone  chan struct{}         // closed when the supervising loop ends
	loopCtx   context.Context
	// logStart is the console log's size when the current VMM started: a
	// replaced VM keeps its log, and the ready line of the VMM before must
	// not count for this one.
	logStart int64
	cancel   context.CancelFunc
	// wake is closed by quiesce: it cuts a pending restart delay short.
	wake chan struct{}
}

func recordPath(spec *api.VMSpec) string { return filepath.Join(spec.StateDir, filenames.VMRecord) }

// writeRecordLocked writes v's record (api.Record), which a later
// supervisor re-adopts it from and `ps` reads when none runs.
func (v *vmRun) writeRecordLocked() {
	r := api.Record{Version: api.Version, Spec: v.spec, Status: v.st}
	if v.inst != nil {
		p := process(v.inst.Identity())
		r.Process = &p
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err == nil {
		err = fsutil.WriteFileAtomic(recordPath(&v.spec), data)
	}
	if err != nil {
		v.s.log.Error("write vm record", "vm", v.spec.Address, "err", err)
	}
}

func (v *vmRun) snapshot() api.VMStatus {
	st := v.st
	st.Addresses = map[string]string{}
	for _, n := range v.spec.NICs {
		st.Addresses[n.Network] = n.IP.String()
	}
	st.Ports = append([]api.Port{}, v.spec.Publish...)
	return st
}

func (s *Supervisor) setState(v *vmRun, stateName api.VMState, reason string, exit *int) {
	s.mu.Lock()
	v.st.State, v.st.Reason, v.st.ExitCode = stateName, reason, exit
	v.writeRecordLocked()
	s.mu.Unlock()
}

// started is what start-vm and boot-vm answer: the new VMM's identity and
// its accelerator.
func started(inst hypervisor.Instance) (*api.Started, error) {
	a := inst.Accel()
	return &api.Started{Process: process(inst.Identity()), Accel: a.Name, AccelFallback: a.Fallback}, nil
}

// process is a VMM's identity as the protocol and the records carry it.
func process(id hypervisor.Identity) api.Process {
	return api.Process{Driver: id.Driver, PID: id.PID, StartTime: id.StartTime, RunDir: id.RunDir}
}

// config is the driver's configuration of v's next VMM.
func (v *vmRun) config() hypervisor.Config {
	m := v.spec.Machine
	cfg := hypervisor.Config{
		Name: v.spec.Name, RunDir: v.runDir, CPUs: m.CPUs, MemoryMB: m.MemoryMB,
		Kernel: m.Kernel, Initramfs: m.Initramfs, Cmdline: m.Cmdline, Machine: m.Machine, Accel: m.Accel,
		NICs: v.nics, GuestAgent: len(v.spec.GuestConfig) > 0, GuestConfig: v.spec.GuestConfig,
	}
	if r := v.spec.Root; r != nil {
		cfg.Root = &hypervisor.Disk{Path: r.Path, Format: r.Format, ReadOnly: r.ReadOnly, Serial: r.Serial}
	}
	for _, d := range v.spec.Disks {
		cfg.Disks = append(cfg.Disks, hypervisor.Disk{Path: d.Path, Format: d.Format, ReadOnly: d.ReadOnly, Serial: d.Serial})
	}
	for _, sh := range v.spec.Shares {
		cfg.SharedDirs = append(cfg.SharedDirs, hypervisor.SharedDir{Tag: sh.Tag, HostPath: sh.HostPath, ReadOnly: sh.ReadOnly})
	}
	return cfg
}

// wire connects the VM's NICs to their switches and registers it with the
// gateways (DHCP lease, DNS name, published ports).
func (s *Supervisor) wire(v *vmRun) error {
	v.nics = nil
	for i, nic := range v.spec.NICs {
		s.mu.Lock()
		n := s.nets[nic.Network]
		s.mu.Unlock()
		if n == nil {
			return fmt.Errorf("network %q is not running", nic.Network)
		}
		vmmPath := filepath.Join(v.runDir, filenames.NICSocket(i))
		swPath, err := n.sw.AddDgramPort(portName(v.spec.Name, i), vmmPath)
		if err != nil {
			return err
		}
		v.nics = append(v.nics, hypervisor.NIC{MAC: nic.MAC.String(), DgramLocal: vmmPath, DgramRemote: swPath})
		if n.gw != nil {
			if err := n.gw.AddHost(v.spec.Name, nic.IP, nic.MAC); err != nil {
				return err
			}
			if i == 0 {
				for _, p := range v.spec.Publish {
					if err := n.gw.Publish(p, nic.IP); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

func (s *Supervisor) unwire(v *vmRun) {
	for i, nic := range v.spec.NICs {
		s.mu.Lock()
		n := s.nets[nic.Network]
		s.mu.Unlock()
		if n == nil {
			continue
		}
		n.sw.RemovePort(portName(v.spec.Name, i))
		if n.gw != nil {
			n.gw.RemoveHost(v.spec.Name)
			if i == 0 {
				for _, p := range v.spec.Publish {
					n.gw.Unpublish(p)
				}
			}
		}
	}
}

func portName(vm string, i int) string { return vm + "-" + strconv.Itoa(i) }

// updateVM applies the attributes that change in place: publish, restart
// and ready.
func (s *Supervisor) updateVM(spec api.Update) error {
	s.mu.Lock()
	v := s.vms[spec.Address]
	s.mu.Unlock()
	if v == nil {
		return fmt.Errorf("update %s: not running", spec.Address)
	}
	s.mu.Lock()
	halted := v.st.Halted // unwired: boot-vm publishes its ports again
	s.mu.Unlock()
	if len(v.spec.NICs) > 0 && !halted {
		s.mu.Lock()
		n := s.nets[v.spec.NICs[0].Network]
		s.mu.Unlock()
		if n != nil && n.gw != nil {
			for _, p := range v.spec.Publish {
				n.gw.Unpublish(p)
			}
			for _, p := range spec.Publish {
				if err := n.gw.Publish(p, v.spec.NICs[0].IP); err != nil {
					return fmt.Errorf("update %s: %w", spec.Address, err)
				}
			}
		}
	}
	s.mu.Lock()
	v.spec.Publish, v.spec.Restart, v.spec.Ready = spec.Publish, spec.Restart, spec.Ready
	v.writeRecordLocked()
	s.mu.Unlock()
	return nil
}

// release lets go of the VM without stopping it.
func (v *vmRun) release() {
	if v.cancel != nil {
		v.cancel()
	}
	if v.relay != nil {
		v.relay.Close()
	}
	if v.inst != nil {
		v.inst.Close()
	}
}

func processAlive(pid int, start uint64) bool {
	if start == 0 {
		return syscall.Kill(pid, 0) == nil
	}
	return proc.Alive(pid, start)
}
