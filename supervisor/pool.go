package supervisor

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"time"

	"github.com/stackvm/stack/guestproto"
	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/hypervisor/console"
	"github.com/stackvm/stack/hypervisor/proc"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
	"github.com/stackvm/stack/internal/netaddr"
	"github.com/stackvm/stack/supervisor/api"
)

// Warm pools. A pool keeps Size VMMs of one shape restored from its boot
// template and paused, each with its own runtime directory and switch
// ports, so that a VM of that shape starts by taking one: its config disk
// gets the VM's config, its CPUs run, the guest unparks and comes up as
// that VM (see claim). The taken member is replaced in the background. A
// member that dies while it waits is dropped and replaced, never handed
// out. Members are not VMs of the namespace: no record of theirs is
// re-adopted; a supervisor that finds members left by a dead one ends them.

// pool is one warm pool; its fields are guarded by the supervisor's mu.
type pool struct {
	spec    api.PoolSpec
	members []*member // paused, ready to be taken
	filling int       // members being started
	err     string    // why the last fill failed, until one succeeds
	gone    bool      // drained: fills under way end their member
}

// member is one paused VMM of a pool.
type member struct {
	id     string
	inst   hypervisor.Instance
	runDir string
	ports  []string         // its switch ports, one per network
	nics   []hypervisor.NIC // the VMM's ends of them
}

// poolRetry bounds the wait between failed fills (no template yet: the
// first VM of the shape makes it while it boots).
const poolRetry = 2 * time.Second

// setPools makes the pools those of specs: new ones start filling, changed
// ones are drained and refilled, and the others drained.
func (s *Supervisor) setPools(specs []api.PoolSpec) {
	want := map[string]api.PoolSpec{}
	for _, sp := range specs {
		if sp.Size > 0 {
			want[sp.Name] = sp
		}
	}
	var drain []*member
	var fill []*pool
	s.mu.Lock()
	for name, p := range s.pools {
		if sp, ok := want[name]; !ok || !reflect.DeepEqual(sp, p.spec) {
			p.gone = true
			drain = append(drain, p.members...)
			p.members = nil
			delete(s.pools, name)
		}
	}
	for name, sp := range want {
		if s.pools[name] == nil {
			s.pools[name] = &pool{spec: sp}
		}
		fill = append(fill, s.pools[name])
	}
	s.mu.Unlock()
	for _, m := range drain {
		s.endMember(m)
	}
	for _, p := range fill {
		s.fill(p)
	}
}

// fill starts as many members as p lacks.
func (s *Supervisor) fill(p *pool) {
	s.mu.Lock()
	n := p.spec.Size - len(p.members) - p.filling
	if p.gone || n <= 0 {
		s.mu.Unlock()
		return
	}
	p.filling += n
	s.mu.Unlock()
	for range n {
		go s.fillOne(p)
	}
}

// fillOne starts one member of p; on failure it retries after poolRetry
// while the pool lives.
func (s *Supervisor) fillOne(p *pool) {
	m, err := s.startMember(p.spec)
	s.mu.Lock()
	p.filling--
	switch {
	case err != nil:
		p.err = err.Error()
	case p.gone:
	default:
		p.err = ""
		p.members = append(p.members, m)
	}
	gone := p.gone
	s.mu.Unlock()
	switch {
	case err != nil:
		if !errors.Is(err, hypervisor.ErrNoTemplate) {
			s.log.Warn("fill pool", "pool", p.spec.Name, "err", err)
		}
		time.AfterFunc(poolRetry, func() { s.fill(p) })
	case gone:
		s.endMember(m)
	default:
		go s.watchMember(p, m)
	}
}

// startMember starts a paused VMM of spec's shape, wired to switch ports
// of its own.
func (s *Supervisor) startMember(spec api.PoolSpec) (*member, error) {
	var id [6]byte
	rand.Read(id[:])
	m := &member{id: hex.EncodeToString(id[:])}
	m.runDir = filenames.PoolRuntime(s.opts.RuntimeRoot, s.opts.Namespace, m.id)
	if err := os.MkdirAll(m.runDir, filenames.DirMode); err != nil {
		return nil, fmt.Errorf("start pool member: %w", err)
	}
	fail := func(err error) (*member, error) {
		s.unwireMember(spec, m)
		os.RemoveAll(m.runDir)
		return nil, fmt.Errorf("start pool member: %w", err)
	}
	for i, name := range spec.Networks {
		n := s.network(name)
		if n == nil {
			return fail(fmt.Errorf("network %q is not running", name))
		}
		port := "pool-" + m.id + "-" + fmt.Sprint(i)
		vmmPath := filepath.Join(m.runDir, filenames.NICSocket(i))
		swPath, err := n.sw.AddDgramPort(port, vmmPath)
		if err != nil {
			return fail(err)
		}
		m.ports = append(m.ports, port)
		// The migrated device state holds the template's MAC; the guest
		// takes the claiming VM's at unpark. This one is never seen.
		mac := netaddr.MAC{0x52, 0x54, 0, id[0], id[1], byte(i)}
		m.nics = append(m.nics, hypervisor.NIC{MAC: mac, DgramLocal: vmmPath, DgramRemote: swPath})
	}
	mc := spec.Machine
	placeholder, _ := json.Marshal(guestproto.Config{Version: guestproto.Version})
	cfg := hypervisor.Config{
		Name: "pool-" + m.id, RunDir: m.runDir, CPUs: mc.CPUs, MemoryMB: mc.MemoryMB,
		Kernel: mc.Kernel, Initramfs: mc.Initramfs, Cmdline: mc.Cmdline, Machine: mc.Machine, Accel: mc.Accel,
		NICs: m.nics, GuestAgent: true, GuestConfig: placeholder, Template: true, Paused: true,
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	inst, err := s.opts.Driver.Start(ctx, &cfg)
	if err != nil {
		return fail(err)
	}
	m.inst = inst
	id2 := inst.Identity()
	b, _ := json.Marshal(process(id2))
	path := filenames.PoolRecord(s.opts.StateRoot, s.opts.Namespace, m.id)
	if err := os.MkdirAll(filepath.Dir(path), filenames.DirMode); err == nil {
		err = fsutil.WriteFileAtomic(path, b)
	}
	if err != nil {
		inst.Kill()
		inst.Close()
		return fail(err)
	}
	return m, nil
}

// watchMember drops a member whose VMM ends while it waits, and refills.
func (s *Supervisor) watchMember(p *pool, m *member) {
	m.inst.Wait(context.Background())
	s.mu.Lock()
	waiting := false
	for i, x := range p.members {
		if x == m {
			p.members = append(p.members[:i], p.members[i+1:]...)
			waiting = true
			break
		}
	}
	s.mu.Unlock()
	if !waiting {
		return // taken, or drained (its VMM killed on purpose)
	}
	s.log.Warn("a pool member ended while it waited; it is replaced", "pool", p.spec.Name, "member", m.id)
	s.endMember(m)
	s.fill(p)
}

// take hands out a member of spec's pool when spec has the pool's shape,
// or nil.
func (s *Supervisor) take(spec api.VMSpec) (*pool, *member) {
	if spec.Pool == "" || spec.Root != nil || len(spec.Disks) > 0 || len(spec.Shares) > 0 || len(spec.GuestConfig) == 0 {
		return nil, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.pools[spec.Pool]
	if p == nil || len(p.members) == 0 || p.spec.Machine != spec.Machine || len(p.spec.Networks) != len(spec.NICs) {
		return nil, nil
	}
	for i, n := range spec.NICs {
		if p.spec.Networks[i] != n.Network {
			return nil, nil
		}
	}
	m := p.members[0]
	p.members = p.members[1:]
	return p, m
}

// claim starts the VM of spec from member m of pool p: its VMM, runtime
// directory and switch ports become the VM's, its guest gets the VM's
// config, and it runs. The pool refills. On failure the member is ended
// and the caller starts the VM the usual way.
func (s *Supervisor) claim(ctx context.Context, spec api.VMSpec, p *pool, m *member) (*api.Started, error) {
	defer s.fill(p)
	os.Remove(filenames.PoolRecord(s.opts.StateRoot, s.opts.Namespace, m.id))
	v := &vmRun{s: s, spec: spec, runDir: m.runDir, ports: m.ports,
		st: api.VMStatus{Address: spec.Address, Name: spec.Name, State: api.StateCreating}}
	if err := os.MkdirAll(spec.StateDir, filenames.DirMode); err != nil {
		s.endMember(m)
		return nil, fmt.Errorf("start %s: %w", spec.Address, err)
	}
	if err := s.pinMember(spec, m); err != nil {
		s.endMember(m)
		return nil, fmt.Errorf("start %s: %w", spec.Address, err)
	}
	if err := s.register(v, m.nics); err != nil {
		s.unregister(v)
		s.endMember(m)
		return nil, fmt.Errorf("start %s: %w", spec.Address, err)
	}
	s.mu.Lock()
	s.vms[spec.Address] = v
	s.mu.Unlock()
	loopCtx, cancel := context.WithCancel(context.Background())
	v.mu.Lock()
	v.loopCtx, v.cancel = loopCtx, cancel
	if fi, err := os.Stat(consoleLogPath(&v.spec)); err == nil {
		v.logStart = fi.Size()
	}
	v.mu.Unlock()
	undo := func(err error) (*api.Started, error) {
		cancel()
		s.mu.Lock()
		delete(s.vms, spec.Address)
		s.mu.Unlock()
		s.unregister(v)
		s.endMember(m)
		os.Remove(recordPath(&v.spec))
		s.emitVM(v, api.PhaseFailed, err.Error())
		return nil, fmt.Errorf("start %s: %w", spec.Address, err)
	}
	// The relay connects before the CPUs run, so that the log has the
	// guest's first line; a VMM without a console socket (there should be
	// none) gets one connected in the background by adopt.
	var relay *console.Relay
	if _, err := os.Stat(filepath.Join(v.runDir, filenames.ConsoleVMMSocket)); err == nil {
		if relay, err = s.startRelay(loopCtx, v); err != nil {
			return undo(err)
		}
		v.mu.Lock()
		v.relay = relay
		v.mu.Unlock()
	}
	if err := s.limitCPU(v, m.inst.Identity().PID); err != nil {
		if relay != nil {
			relay.Close()
		}
		return undo(err)
	}
	cfg := v.config()
	if err := m.inst.Claim(ctx, &cfg); err != nil {
		if relay != nil {
			relay.Close()
		}
		return undo(err)
	}
	s.adopt(v, m.inst, adoptStarted)
	return started(m.inst)
}

// pinMember gives a member's switch ports the pins of the VM that takes
// it: a member's guest is nobody until it is claimed, so its ports are
// added unpinned, and pins are fixed when a port is added. The new port
// has the old one's name, hence its socket path, which the VMM sends to;
// the VMM is paused meanwhile, so no frame is lost.
func (s *Supervisor) pinMember(spec api.VMSpec, m *member) error {
	for i, port := range m.ports {
		n := s.network(spec.NICs[i].Network)
		if n == nil {
			return fmt.Errorf("network %q is not running", spec.NICs[i].Network)
		}
		if err := n.sw.RemovePort(port); err != nil {
			return err
		}
		if _, err := addNICPort(n, port, m.nics[i].DgramLocal, spec.NICs[i]); err != nil {
			return err
		}
	}
	return nil
}

// endMember kills a member's VMM and removes what it had.
func (s *Supervisor) endMember(m *member) {
	if m.inst != nil {
		m.inst.Kill()
		m.inst.Wait(context.Background())
		m.inst.Close()
	}
	for _, port := range m.ports {
		s.removePort(port)
	}
	os.RemoveAll(m.runDir)
	os.Remove(filenames.PoolRecord(s.opts.StateRoot, s.opts.Namespace, m.id))
}

// unwireMember removes the ports of a member that did not start.
func (s *Supervisor) unwireMember(spec api.PoolSpec, m *member) {
	for _, port := range m.ports {
		s.removePort(port)
	}
}

// removePort removes a switch port from whichever network has it.
func (s *Supervisor) removePort(port string) {
	for _, n := range s.networks() {
		n.sw.RemovePort(port)
	}
}

// drainPools ends every pool member (supervisor exit).
func (s *Supervisor) drainPools() {
	s.setPools(nil)
}

// endLeftMembers ends the members a dead supervisor left (their records
// name their VMMs; a pid that now belongs to another process is left
// alone), and removes their records and runtime directories.
func (s *Supervisor) endLeftMembers() {
	dir := filepath.Join(filenames.NamespaceState(s.opts.StateRoot, s.opts.Namespace), filenames.PoolDir)
	recs, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	for _, path := range recs {
		var p api.Process
		if b, err := os.ReadFile(path); err == nil && json.Unmarshal(b, &p) == nil && proc.Alive(p.PID, p.StartTime) {
			if inst, err := s.opts.Driver.Attach(context.Background(), hypervisor.Identity{Driver: p.Driver, PID: p.PID, StartTime: p.StartTime, RunDir: p.RunDir}); err == nil {
				inst.Kill()
				inst.Wait(context.Background())
				inst.Close()
			}
			if p.RunDir != "" {
				os.RemoveAll(p.RunDir)
			}
		}
		os.Remove(path)
	}
}

// poolStatus is status's list of pools.
func (s *Supervisor) poolStatus() []api.PoolStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]api.PoolStatus, 0, len(s.pools))
	for _, p := range s.pools {
		out = append(out, api.PoolStatus{Name: p.spec.Name, Size: p.spec.Size, Ready: len(p.members), Error: p.err})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}
