package supervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/stackvm/stack/guestproto"
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

// startVM starts (or restarts from scratch) one VM and says which VMM it
// started. Readiness is reported later through events.
func (s *Supervisor) startVM(ctx context.Context, spec api.VMSpec) (*api.Started, error) {
	s.mu.Lock()
	_, exists := s.vms[spec.Address]
	s.mu.Unlock()
	if exists {
		if err := s.stopVM(ctx, spec.Address, s.opts.StopTimeout); err != nil {
			return nil, err
		}
	}
	v := &vmRun{s: s, spec: spec, runDir: filenames.VMRuntime(s.opts.RuntimeRoot, s.opts.Namespace, spec.Name)}
	v.st = api.VMStatus{Address: spec.Address, Name: spec.Name, State: api.StateCreating}
	for _, dir := range []string{v.runDir, spec.StateDir} {
		if err := os.MkdirAll(dir, filenames.DirMode); err != nil {
			return nil, fmt.Errorf("start %s: %w", spec.Address, err)
		}
	}
	// A start that fails leaves nothing in the runtime directory: nothing
	// would remove it later (the VM is not kept), and the error quotes
	// QEMU's stderr.
	if err := s.wire(v); err != nil {
		s.unwire(v)
		os.RemoveAll(v.runDir)
		return nil, fmt.Errorf("start %s: %w", spec.Address, err)
	}
	s.mu.Lock()
	s.vms[spec.Address] = v
	s.mu.Unlock()
	if err := s.launch(ctx, v); err != nil {
		s.mu.Lock()
		delete(s.vms, spec.Address)
		s.mu.Unlock()
		s.unwire(v)
		os.Remove(recordPath(&v.spec))
		os.RemoveAll(v.runDir)
		return nil, err
	}
	return started(v.inst)
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
		v.nics = append(v.nics, hypervisor.NIC{MAC: nic.MAC, DgramLocal: vmmPath, DgramRemote: swPath})
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

// launch starts the VMM and the goroutine that supervises it.
func (s *Supervisor) launch(ctx context.Context, v *vmRun) error {
	cfg := v.config()
	loopCtx, cancel := context.WithCancel(context.Background())
	s.mu.Lock()
	if v.relay != nil {
		v.relay.Close() // the previous VMM's console (restart)
		v.relay = nil
	}
	v.loopCtx, v.cancel = loopCtx, cancel
	v.logStart = 0
	if fi, err := os.Stat(filepath.Join(v.spec.StateDir, filenames.ConsoleLog)); err == nil {
		v.logStart = fi.Size()
	}
	s.booting[v.runDir] = v
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.booting, v.runDir)
		s.mu.Unlock()
	}()
	s.emitVM(v, api.PhaseVMMStart, "starting the VMM")
	inst, err := s.opts.Driver.Start(ctx, &cfg)
	if err != nil {
		cancel()
		s.emitVM(v, api.PhaseFailed, err.Error())
		return fmt.Errorf("start %s: %w", v.spec.Address, err)
	}
	s.adopt(v, inst, false)
	return nil
}

// BeforeBoot is the driver hook that runs while the VMM is up but its CPUs
// have not started: the console relay connects here, so the log has the
// guest's first line. Wire it into the driver's options.
func (s *Supervisor) BeforeBoot(ctx context.Context, cfg *hypervisor.Config) error {
	s.mu.Lock()
	v := s.booting[cfg.RunDir]
	s.mu.Unlock()
	if v == nil {
		return nil
	}
	relay, err := s.startRelay(v)
	if err != nil {
		return err
	}
	s.mu.Lock()
	v.relay = relay
	s.mu.Unlock()
	return nil
}

func (s *Supervisor) startRelay(v *vmRun) (*console.Relay, error) {
	return console.Start(v.loopCtx, console.Options{
		VMMSocket: filepath.Join(v.runDir, filenames.ConsoleVMMSocket),
		Socket:    filepath.Join(v.runDir, filenames.ConsoleSocket),
		LogPath:   filepath.Join(v.spec.StateDir, filenames.ConsoleLog),
		Logger:    s.log,
	})
}

// adopt takes over a running VMM: console relay (unless BeforeBoot already
// started it), readiness, exit.
func (s *Supervisor) adopt(v *vmRun, inst hypervisor.Instance, readopted bool) {
	if readopted {
		v.loopCtx, v.cancel = context.WithCancel(context.Background())
	}
	s.mu.Lock()
	if v.relay == nil {
		// A re-adopted VM: connect the relay in the background (it retries
		// until the VMM's console socket answers or the VM goes away).
		go func(ctx context.Context) {
			r, err := s.startRelay(v)
			if err != nil {
				if ctx.Err() == nil {
					s.log.Warn("console relay", "vm", v.spec.Address, "err", err)
				}
				return
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			if v.relay != nil || ctx.Err() != nil {
				r.Close()
				return
			}
			v.relay = r
		}(v.loopCtx)
	}
	v.inst = inst
	v.loopDone = make(chan struct{})
	v.wake = make(chan struct{})
	if !readopted {
		v.st.State, v.st.Reason, v.st.ExitCode = api.StateBooting, "", nil
		v.st.Held = v.spec.Hold && !v.released
		v.st.StartedAt = time.Now().UTC()
		v.guestExit, v.guestReady, v.guestErr = nil, false, ""
	}
	v.st.PID = inst.Identity().PID
	if a := inst.Accel().Name; a != "" {
		v.st.Accel = a
	}
	v.writeRecordLocked()
	s.mu.Unlock()
	if !readopted {
		s.emitVM(v, api.PhaseBooting, fmt.Sprintf("VMM running (pid %d); booting", inst.Identity().PID))
	}
	s.mu.Lock()
	resend := v.spec.Hold && v.released
	s.mu.Unlock()
	if resend {
		s.sendStart(v, inst)
	}
	go s.superviseLoop(v.loopCtx, v, inst, readopted)
}

// superviseLoop waits for readiness and for the VMM's exit, and applies the
// restart policy.
func (s *Supervisor) superviseLoop(ctx context.Context, v *vmRun, inst hypervisor.Instance, readopted bool) {
	defer close(v.loopDone)
	s.mu.Lock()
	wake := v.wake
	s.mu.Unlock()
	go s.guestEvents(ctx, v, inst)
	if !readopted || v.st.State != api.StateReady {
		go s.awaitReady(ctx, v, inst)
	}
	status, err := inst.Wait(ctx)
	if ctx.Err() != nil {
		return // released: the VMM keeps running without us
	}
	s.mu.Lock()
	relay := v.relay
	s.mu.Unlock()
	if relay != nil {
		// Give the relay a moment to drain the last console lines.
		select {
		case <-relay.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
	s.mu.Lock()
	stopping := v.stopping
	guestExit := v.guestExit
	s.mu.Unlock()
	code, reason := exitOf(status, err, guestExit)
	switch {
	case stopping:
		s.setState(v, api.StateStopped, "stopped by request", &code)
		s.emitVM(v, api.PhaseStopped, "stopped")
		return
	case code == 0:
		s.setState(v, api.StateStopped, reason, &code)
		s.emitVM(v, api.PhaseExited, "exited: "+reason)
	default:
		s.setState(v, api.StateFailed, reason, &code)
		s.emitVM(v, api.PhaseFailed, reason)
	}
	if !v.spec.Restart.Applies(code) {
		return
	}
	s.mu.Lock()
	v.st.Restarts++
	n := v.st.Restarts
	s.mu.Unlock()
	delay := min(time.Duration(1<<min(n-1, 5))*time.Second, 30*time.Second)
	s.emitVM(v, api.PhaseRestart, fmt.Sprintf("restarting in %s (restart = %q, restart %d)", delay, v.spec.Restart, n))
	select {
	case <-time.After(delay):
	case <-ctx.Done():
		return
	case <-wake:
	}
	s.mu.Lock()
	stopping = v.stopping
	s.mu.Unlock()
	if stopping {
		return
	}
	if err := s.launch(context.Background(), v); err != nil {
		s.setState(v, api.StateFailed, "restart failed: "+err.Error(), &code)
	}
}

// exitOf turns a VMM exit into the exit code `ps` shows and its reason.
// The workload's own exit code, as the guest reported it, wins over the
// VMM's: the guest powers off after a one-shot workload, and QEMU exits 0.
func exitOf(st hypervisor.ExitStatus, err error, guestExit *int) (int, string) {
	switch {
	case err != nil:
		return -1, "lost track of the VMM: " + err.Error()
	case st.Signal != 0:
		return 128 + int(st.Signal), fmt.Sprintf("the VMM was killed by signal %d (%s)", int(st.Signal), st.Signal)
	case guestExit != nil:
		return *guestExit, fmt.Sprintf("the workload exited with status %d", *guestExit)
	case !st.Known:
		return -1, "the VMM exited while unwatched; its status is unknown"
	case st.Code != 0:
		return st.Code, fmt.Sprintf("the VMM exited with status %d", st.Code)
	case st.GuestShutdown:
		return 0, "the guest powered off"
	}
	return 0, "the VMM exited"
}

// guestEvents follows the guest agent channel: readiness, the workload's
// exit and bring-up errors.
func (s *Supervisor) guestEvents(ctx context.Context, v *vmRun, inst hypervisor.Instance) {
	g := inst.Guest()
	if g == nil {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case line, ok := <-g.Events():
			if !ok {
				return
			}
			var m guestproto.Message
			if json.Unmarshal(line, &m) != nil {
				continue
			}
			s.onGuestMessage(v, &m)
		}
	}
}

func (s *Supervisor) onGuestMessage(v *vmRun, m *guestproto.Message) {
	st := m.Status
	switch m.Type {
	case guestproto.TypeExecOutput, guestproto.TypeExecExit, guestproto.TypeExecInputAck:
		s.mu.Lock()
		q := v.execs[m.ID]
		s.mu.Unlock()
		if q != nil {
			q.push(*m) // the session drains it until exec-exit
		}
		return
	case guestproto.TypeExit:
		if st != nil {
			code := st.ExitCode
			s.mu.Lock()
			v.guestExit = &code
			s.mu.Unlock()
			s.emitVM(v, api.PhaseExited, fmt.Sprintf("the workload exited with status %d", code))
		}
	case guestproto.TypeError:
		s.mu.Lock()
		v.guestErr = m.Error
		v.guestNewsLocked()
		s.mu.Unlock()
	case guestproto.TypeReady:
		s.mu.Lock()
		v.guestReady = true
		v.guestNewsLocked()
		s.mu.Unlock()
	case guestproto.TypeListening:
		s.mu.Lock()
		v.guestNewsLocked() // a probe waiting for its next tick looks now
		s.mu.Unlock()
	case guestproto.TypeHello:
		s.mu.Lock()
		if st != nil && st.Ready {
			v.guestReady = true
			v.guestNewsLocked()
		}
		if st != nil && st.Exited {
			code := st.ExitCode
			v.guestExit = &code
		}
		s.mu.Unlock()
	}
	if st != nil && st.Error != "" {
		s.mu.Lock()
		v.st.Reason = st.Error
		s.mu.Unlock()
	}
}

// awaitReady decides when the VM is ready: the probe when one is set, else
// the guest's own report (guest init or cloud-init's console line). A VM
// that is not ready in time is marked failed but left running, so that its
// console can be inspected; the next `up` replaces it.
func (s *Supervisor) awaitReady(ctx context.Context, v *vmRun, inst hypervisor.Instance) {
	spec := v.spec.Ready
	timeout := time.Duration(spec.Timeout)
	if timeout <= 0 {
		timeout = 2 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var what string
	var err error
	switch {
	case spec.TCP != 0 || spec.HTTP != "":
		what, err = s.probe(ctx, v)
	case spec.ConsoleLine != "":
		what, err = s.waitConsoleLine(ctx, v, spec.ConsoleLine, spec.ConsoleFailLine)
	case spec.Guest:
		what, err = s.waitGuestReady(ctx, v, inst)
	default:
		what = "the VMM is running"
	}
	if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) && err != nil {
		return // released or stopped
	}
	s.mu.Lock()
	stopping := v.stopping
	exited := v.st.State == api.StateStopped || v.st.State == api.StateFailed
	s.mu.Unlock()
	if stopping || exited {
		return
	}
	if err != nil {
		reason := err.Error()
		if errors.Is(err, context.DeadlineExceeded) {
			reason = fmt.Sprintf("not ready after %s (%s)", timeout, readyWhat(spec))
		}
		s.setState(v, api.StateFailed, reason, nil)
		s.emitVM(v, api.PhaseFailed, reason)
		return
	}
	s.setState(v, api.StateReady, "", nil)
	s.emitVM(v, api.PhaseReady, "ready: "+what)
}

func readyWhat(r api.Ready) string {
	switch {
	case r.TCP != 0:
		return fmt.Sprintf("waiting for TCP port %d", r.TCP)
	case r.HTTP != "":
		return "waiting for " + r.HTTP
	case r.ConsoleLine != "":
		return "waiting for cloud-init to finish"
	}
	return "waiting for the guest init's ready report"
}

// guestNewsLocked wakes the waiters on the guest's ready report.
func (v *vmRun) guestNewsLocked() {
	if v.guestNews != nil {
		close(v.guestNews)
	}
	v.guestNews = make(chan struct{})
}

// guestNewsChan returns the channel closed at the guest's next report.
func (v *vmRun) guestNewsChan() <-chan struct{} {
	v.s.mu.Lock()
	defer v.s.mu.Unlock()
	if v.guestNews == nil {
		v.guestNews = make(chan struct{})
	}
	return v.guestNews
}

func (s *Supervisor) waitGuestReady(ctx context.Context, v *vmRun, inst hypervisor.Instance) (string, error) {
	// guestEvents consumes the channel and leaves what it saw in v.
	for {
		news := v.guestNewsChan()
		s.mu.Lock()
		ready, gerr := v.guestReady, v.guestErr
		s.mu.Unlock()
		switch {
		case gerr != "":
			return "", errors.New("guest init: " + gerr)
		case ready:
			return "the guest init reported ready", nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-news:
		}
	}
}

// probeInterval is the readiness probes' cadence (the spec asks for 100 to
// 250 ms).
const probeInterval = 100 * time.Millisecond

// pollUntil calls check at the probe cadence until it reports done, errs,
// the VM stops, or ctx ends; news from the guest (such as a watched port
// now listening, see guestproto.Config.WatchPorts) runs the check at once.
func (s *Supervisor) pollUntil(ctx context.Context, v *vmRun, check func() (string, bool, error)) (string, error) {
	t := time.NewTicker(probeInterval)
	defer t.Stop()
	for {
		news := v.guestNewsChan()
		what, done, err := check()
		if err != nil {
			return "", err
		}
		if done {
			return what, nil
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-t.C:
		case <-news:
		}
	}
}

func (s *Supervisor) waitConsoleLine(ctx context.Context, v *vmRun, marker, failMarker string) (string, error) {
	logPath := filepath.Join(v.spec.StateDir, filenames.ConsoleLog)
	var failed bool
	found := false
	s.mu.Lock()
	from := v.logStart
	s.mu.Unlock()
	err := console.Follow(ctx, logPath, from, func(line string) bool {
		switch {
		case strings.Contains(line, marker):
			found = true
		case failMarker != "" && strings.Contains(line, failMarker):
			failed = true
		}
		return !found && !failed
	})
	switch {
	case found:
		return "cloud-init finished", nil
	case failed:
		return "", errors.New("cloud-init finished with errors (see the console log)")
	}
	return "", err
}

// probe runs the VM's tcp or http readiness probe through the gateway of
// its first network.
func (s *Supervisor) probe(ctx context.Context, v *vmRun) (string, error) {
	if len(v.spec.NICs) == 0 {
		return "", errors.New("a tcp or http readiness probe needs a network")
	}
	nic := v.spec.NICs[0]
	s.mu.Lock()
	n := s.nets[nic.Network]
	s.mu.Unlock()
	if n == nil || n.gw == nil {
		return "", fmt.Errorf("network %q has no gateway to probe through", nic.Network)
	}
	spec := v.spec.Ready
	// A VM with a guest init starts its workload only after it reported
	// ready: probing before that finds nothing to connect to, and a dial
	// sent before the guest answers ARP stalls in the gateway's neighbour
	// resolution for about a second.
	s.mu.Lock()
	inst := v.inst
	s.mu.Unlock()
	if inst != nil && inst.Guest() != nil {
		if _, err := s.waitGuestReady(ctx, v, inst); err != nil {
			return "", err
		}
	}
	if spec.TCP != 0 {
		addr := nic.IP.String() + ":" + strconv.Itoa(spec.TCP)
		return s.pollUntil(ctx, v, func() (string, bool, error) {
			// Shorter than a TCP retransmission: a lost SYN is sent
			// again by the next probe instead.
			pctx, cancel := context.WithTimeout(ctx, 2*probeInterval)
			defer cancel()
			c, err := n.gw.DialContext(pctx, "tcp", addr)
			if err != nil {
				return "", false, nil
			}
			c.Close()
			return "TCP port " + strconv.Itoa(spec.TCP) + " accepts connections", true, nil
		})
	}
	client := &http.Client{
		Timeout:   time.Second,
		Transport: &http.Transport{DialContext: guestDialer(n.gw, nic.IP.String())},
	}
	return s.pollUntil(ctx, v, func() (string, bool, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, spec.HTTP, nil)
		if err != nil {
			return "", false, fmt.Errorf("ready probe %q: %w", spec.HTTP, err)
		}
		resp, err := client.Do(req)
		if err != nil {
			return "", false, nil
		}
		resp.Body.Close()
		if resp.StatusCode >= 200 && resp.StatusCode < 400 {
			return fmt.Sprintf("%s answered %d", spec.HTTP, resp.StatusCode), true, nil
		}
		return "", false, nil
	})
}

// guestDialer dials "localhost" in probe URLs as the guest itself.
func guestDialer(gw Gateway, guestIP string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, port, ok := strings.Cut(addr, ":")
		if ok && (host == "localhost" || host == "127.0.0.1") {
			addr = guestIP + ":" + port
		}
		return gw.DialContext(ctx, network, addr)
	}
}

// releaseVM starts a held VM's workload (see api.VMSpec.Hold).
func (s *Supervisor) releaseVM(ctx context.Context, address string) error {
	s.mu.Lock()
	v := s.vms[address]
	var inst hypervisor.Instance
	if v != nil {
		v.released, v.st.Held = true, false
		v.writeRecordLocked()
		inst = v.inst
	}
	s.mu.Unlock()
	if v == nil || inst == nil {
		return fmt.Errorf("release %s: not running", address)
	}
	return s.sendStart(v, inst)
}

func (s *Supervisor) sendStart(v *vmRun, inst hypervisor.Instance) error {
	g := inst.Guest()
	if g == nil {
		return nil
	}
	msg, _ := json.Marshal(guestproto.Message{Type: guestproto.TypeStart})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := g.Send(ctx, msg); err != nil {
		return fmt.Errorf("release %s: %w", v.spec.Address, err)
	}
	s.emitVM(v, api.PhaseBooting, "its dependencies are ready; starting the workload")
	return nil
}

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
