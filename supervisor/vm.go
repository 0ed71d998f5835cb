package supervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/console"
	"github.com/stackvm/stack/hypervisor/proc"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
	"github.com/stackvm/stack/netswitch"
	"github.com/stackvm/stack/supervisor/api"
)

// vmRun is one supervised VM. Its own mu guards its fields, so that one
// VM's work (a slow probe, a stop, an exec) never waits for another's.
// s, runDir and spec are fixed at start, except the parts of spec that
// change in place: Publish, Restart and Ready (update-vm) and Instance
// (boot-vm), which mu guards too.
//
// Lock order: Supervisor.mu may be taken before a vmRun's mu, never the
// other way round, and no two vmRuns' mu are held at once. Neither is
// held across a blocking call (the driver, QMP, the guest channel, a
// gateway, a relay's Close, a channel send that can block): the code
// copies what it needs under the lock and calls after unlocking. emitVM
// takes both in turn, so it is never called with either held.
type vmRun struct {
	s      *Supervisor
	runDir string

	mu   sync.Mutex
	spec api.VMSpec
	// nics are the VMM's ends of the VM's switch ports, made by wire.
	nics []hypervisor.NIC
	// ports are the names of its NICs' switch ports when they are not
	// derived from its name (a VM taken from a pool keeps its member's).
	ports []string

	inst  hypervisor.Instance
	relay *console.Relay
	st    api.VMStatus

	stopping   bool
	released   bool   // release-vm was asked for (Hold)
	guestExit  *int   // the workload's exit code, as the guest reported it
	guestReady bool   // the guest init reported ready
	guestErr   string // the guest init reported a bring-up failure
	// guestMem is the guest's memory as its last report gave it (total
	// and available bytes); guestMemSeq counts such reports.
	guestMem    [2]uint64
	guestMemSeq int
	// unparking: the guest reported that it waits at its park point, and
	// the unpark is under way (or done) for this incarnation.
	unparking bool
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
	// pauseNews is closed (and replaced) when st.Paused changes.
	pauseNews chan struct{}
	// unhealthyKill: the health check killed the current VMM to restart it.
	unhealthyKill bool
}

// vm is the VM at address, or nil.
func (s *Supervisor) vm(address string) *vmRun {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.vms[address]
}

// allVMs is every VM, in no order.
func (s *Supervisor) allVMs() []*vmRun {
	s.mu.Lock()
	defer s.mu.Unlock()
	vms := make([]*vmRun, 0, len(s.vms))
	for _, v := range s.vms {
		vms = append(vms, v)
	}
	return vms
}

func recordPath(spec *api.VMSpec) string { return filepath.Join(spec.StateDir, filenames.VMRecord) }

// consoleLogPath is the VM's console log, which its relays write and the
// console-line readiness check reads.
func consoleLogPath(spec *api.VMSpec) string {
	return filepath.Join(spec.StateDir, filenames.ConsoleLog)
}

// writeRecordLocked writes v's record (api.Record), which a later
// supervisor re-adopts it from and `ps` reads when none runs. v.mu is held.
func (v *vmRun) writeRecordLocked() {
	r := api.Record{Version: api.Version, Spec: v.spec, Status: v.st, Ports: v.ports}
	if v.ports != nil {
		r.RunDir = v.runDir
	}
	if v.inst != nil {
		p := process(v.inst.Identity())
		r.Process = &p
	}
	if v.spec.SensitiveConfig && len(v.spec.GuestConfig) > 0 {
		sealed, err := v.s.sealConfig(v.spec.GuestConfig)
		if err != nil {
			// Never in clear: a later supervisor cannot re-boot this VM,
			// but it still re-adopts it while it runs.
			v.s.log.Error("seal vm record's guest config", "vm", v.spec.Address, "err", err)
		}
		r.Spec.GuestConfig, r.SealedGuestConfig = nil, sealed
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err == nil {
		err = fsutil.WriteFileAtomic(recordPath(&v.spec), data)
	}
	if err != nil {
		v.s.log.Error("write vm record", "vm", v.spec.Address, "err", err)
	}
}

// snapshot is v's status as status reports it.
func (v *vmRun) snapshot() api.VMStatus {
	v.mu.Lock()
	defer v.mu.Unlock()
	st := v.st
	st.Instance = v.spec.Instance
	st.Addresses = map[string]string{}
	for _, n := range v.spec.NICs {
		st.Addresses[n.Network] = n.IP.String()
	}
	st.Ports = append([]api.Port{}, v.spec.Publish...)
	return st
}

func (s *Supervisor) setState(v *vmRun, stateName api.VMState, reason string, exit *int) {
	v.mu.Lock()
	v.st.State, v.st.Reason, v.st.ExitCode = stateName, reason, exit
	v.writeRecordLocked()
	v.mu.Unlock()
	if stateName.Ended() || stateName == api.StateBooting || stateName == api.StateCreating {
		v.setPaused(false) // a VMM that ended, or a new one, is not paused
		v.mu.Lock()
		v.st.Health = "" // nor checked
		v.mu.Unlock()
	}
}

// instance is v's current VMM (nil before the first one started).
func (v *vmRun) instance() hypervisor.Instance {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.inst
}

// publish is v's published ports. update-vm replaces the slice, never
// changes it in place, so it may be read after v.mu is let go.
func (v *vmRun) publish() []api.Port {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.spec.Publish
}

// started is what start-vm and boot-vm answer: the new VMM's identity and
// its accelerator.
func started(inst hypervisor.Instance) (*api.Started, error) {
	a, b := inst.Accel(), inst.Boot()
	return &api.Started{Process: process(inst.Identity()), Accel: a.Name, AccelFallback: a.Fallback,
		Boot: string(b.Kind), BootNote: b.Note}, nil
}

// process is a VMM's identity as the protocol and the records carry it.
func process(id hypervisor.Identity) api.Process {
	return api.Process{Driver: id.Driver, PID: id.PID, StartTime: id.StartTime, RunDir: id.RunDir}
}

// config is the driver's configuration of v's next VMM.
func (v *vmRun) config() hypervisor.Config {
	v.mu.Lock()
	defer v.mu.Unlock()
	m := v.spec.Machine
	cfg := hypervisor.Config{
		Name: v.spec.Name, RunDir: v.runDir, CPUs: m.CPUs, MemoryMB: m.MemoryMB,
		Kernel: m.Kernel, Initramfs: m.Initramfs, Cmdline: m.Cmdline, Machine: m.Machine, Accel: m.Accel,
		NICs: v.nics, GuestAgent: len(v.spec.GuestConfig) > 0, GuestConfig: v.spec.GuestConfig,
		Template: m.Template, Snapshot: v.spec.Snapshot,
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
	var nics []hypervisor.NIC
	for i, nic := range v.spec.NICs {
		n := s.network(nic.Network)
		if n == nil {
			return fmt.Errorf("network %q is not running", nic.Network)
		}
		vmmPath := filepath.Join(v.runDir, filenames.NICSocket(i))
		swPath, err := addNICPort(n, v.port(i), vmmPath, nic)
		if err != nil {
			return err
		}
		nics = append(nics, hypervisor.NIC{DgramLocal: vmmPath, DgramRemote: swPath})
	}
	return s.register(v, nics)
}

// addNICPort adds the switch port of a VM's NIC, with its MAC and address
// pinned to it: the guest can send as no other machine, nor draw another's
// traffic (see netswitch.PinMACs).
func addNICPort(n *network, port, vmmPath string, nic api.NIC) (string, error) {
	pins := []netswitch.PortOption{netswitch.PinMACs(nic.MAC)}
	if nic.IP.IsValid() {
		pins = append(pins, netswitch.PinIPs(nic.IP))
	}
	return n.sw.AddDgramPort(port, vmmPath, pins...)
}

// register makes nics (the VMM's ends of v's switch ports, in NIC order)
// v's, with the MACs of its spec, and registers v with the gateways: its
// DHCP leases, DNS name and published ports.
func (s *Supervisor) register(v *vmRun, nics []hypervisor.NIC) error {
	v.mu.Lock()
	v.nics = make([]hypervisor.NIC, len(nics))
	for i, n := range nics {
		n.MAC = v.spec.NICs[i].MAC
		v.nics[i] = n
	}
	publish := v.spec.Publish
	v.mu.Unlock()
	for i, nic := range v.spec.NICs {
		n := s.network(nic.Network)
		if n == nil {
			return fmt.Errorf("network %q is not running", nic.Network)
		}
		if gw := n.gateway(); gw != nil {
			if err := gw.AddHost(v.spec.Name, nic.IP, nic.MAC); err != nil {
				return err
			}
			if i == 0 {
				for _, p := range publish {
					if err := gw.Publish(p, nic.IP); err != nil {
						return err
					}
				}
			}
		}
	}
	return nil
}

// unregister undoes wire or register: v's switch ports and gateway
// entries go.
func (s *Supervisor) unregister(v *vmRun) { s.unwire(v) }

func (s *Supervisor) unwire(v *vmRun) {
	publish := v.publish()
	for i, nic := range v.spec.NICs {
		n := s.network(nic.Network)
		if n == nil {
			continue
		}
		n.sw.RemovePort(v.port(i))
		if gw := n.gateway(); gw != nil {
			gw.RemoveHost(v.spec.Name)
			if i == 0 {
				for _, p := range publish {
					gw.Unpublish(p)
				}
			}
		}
	}
}

func portName(vm string, i int) string { return vm + "-" + strconv.Itoa(i) }

// port is the name of the switch port of v's NIC i.
func (v *vmRun) port(i int) string {
	if i < len(v.ports) {
		return v.ports[i]
	}
	return portName(v.spec.Name, i)
}

// updateVM applies the attributes that change in place: publish, restart,
// ready and cpu_limit.
func (s *Supervisor) updateVM(spec api.Update) error {
	v := s.vm(spec.Address)
	if v == nil {
		return fmt.Errorf("update %s: not running", spec.Address)
	}
	if err := s.setCPULimit(v, spec.CPULimit); err != nil {
		return err
	}
	v.mu.Lock()
	halted := v.st.Halted // unwired: boot-vm publishes its ports again
	publish := v.spec.Publish
	v.mu.Unlock()
	if len(v.spec.NICs) > 0 && !halted {
		var gw Gateway
		if n := s.network(v.spec.NICs[0].Network); n != nil {
			gw = n.gateway()
		}
		if gw != nil {
			for _, p := range publish {
				gw.Unpublish(p)
			}
			for _, p := range spec.Publish {
				if err := gw.Publish(p, v.spec.NICs[0].IP); err != nil {
					return fmt.Errorf("update %s: %w", spec.Address, err)
				}
			}
		}
	}
	v.mu.Lock()
	v.spec.Publish, v.spec.Restart, v.spec.Ready, v.spec.CPULimit = spec.Publish, spec.Restart, spec.Ready, spec.CPULimit
	v.writeRecordLocked()
	v.mu.Unlock()
	return nil
}

// release lets go of the VM without stopping it.
func (v *vmRun) release() {
	v.mu.Lock()
	cancel, relay, inst := v.cancel, v.relay, v.inst
	v.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	if relay != nil {
		relay.Close()
	}
	if inst != nil {
		inst.Close()
	}
}

func processAlive(pid int, start uint64) bool {
	if start == 0 {
		return syscall.Kill(pid, 0) == nil
	}
	return proc.Alive(pid, start)
}
