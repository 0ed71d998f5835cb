package supervisor

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/stackvm/stack/hypervisor"
	"github.com/stackvm/stack/internal/filenames"
	"github.com/stackvm/stack/internal/fsutil"
	"github.com/stackvm/stack/netswitch"
	"github.com/stackvm/stack/supervisor/api"
)

// Gateway is what the supervisor needs of a network's gateway: DHCP leases
// and DNS names for VMs, published ports, and a dialer into the network for
// readiness probes.
type Gateway interface {
	AddHost(name string, ip netip.Addr, mac api.MAC) error
	RemoveHost(name string)
	Publish(p api.Port, guestIP netip.Addr) error
	Unpublish(p api.Port)
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	Close() error
}

// GatewayFactory attaches a gateway for spec to sw.
type GatewayFactory func(sw *netswitch.Switch, spec api.NetworkSpec, namespace string) (Gateway, error)

// Options configure a Supervisor.
type Options struct {
	Namespace   string
	StateRoot   string
	RuntimeRoot string
	Driver      hypervisor.Driver
	Gateway     GatewayFactory // nil: networks have no gateway
	Logger      *slog.Logger
	// OwnerPID, when set, is a process whose death brings the whole
	// namespace down (stacktest: VMs never outlive the test binary).
	OwnerPID       int
	OwnerStartTime uint64
	// StopTimeout bounds graceful stops triggered by the supervisor itself.
	StopTimeout time.Duration
	// Listening, when set, is called once the control socket accepts
	// connections (Ensure's spawner waits for it instead of polling).
	Listening func()
}

// Supervisor runs one namespace.
type Supervisor struct {
	opts Options
	log  *slog.Logger

	// mu guards the maps below and nothing else: a VM's own fields are
	// under its vmRun's mu (see vmRun for the lock order).
	mu      sync.Mutex
	nets    map[string]*network
	vms     map[string]*vmRun
	booting map[string]*vmRun // by run dir, while the driver starts them
	pools   map[string]*pool  // warm pools by name (see pool.go)
	subs    map[chan api.Event]struct{}

	idle     chan struct{} // signalled when nothing is left to supervise
	conns    atomic.Int32  // open client connections (an up holds a watch)
	shutdown chan struct{}
	once     sync.Once

	keyOnce sync.Once // the record key (recordkey.go)
	key     []byte
	keyErr  error
}

type network struct {
	sw *netswitch.Switch
	// mu guards spec and gw, which a dhcp/dns/egress change replaces
	// while VMs' probes, execs and wiring use the gateway.
	mu   sync.Mutex
	spec api.NetworkSpec
	gw   Gateway
}

// gateway is the network's current gateway, or nil.
func (n *network) gateway() Gateway {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.gw
}

// current is the spec the network runs with.
func (n *network) current() api.NetworkSpec {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.spec
}

// New creates a supervisor; Serve runs it.
func New(opts Options) *Supervisor {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.StopTimeout == 0 {
		opts.StopTimeout = 30 * time.Second
	}
	return &Supervisor{
		opts:     opts,
		log:      opts.Logger.With("namespace", opts.Namespace),
		nets:     map[string]*network{},
		vms:      map[string]*vmRun{},
		booting:  map[string]*vmRun{},
		pools:    map[string]*pool{},
		subs:     map[chan api.Event]struct{}{},
		idle:     make(chan struct{}, 1),
		shutdown: make(chan struct{}),
	}
}

// Serve re-adopts what earlier supervisors left running, listens on the
// control socket and serves until ctx ends, a shutdown is requested, the
// namespace has been empty for a grace period, or the owner process dies.
// On the way out it stops every VM only when asked to (shutdown or owner
// death); otherwise VMs keep running for the next supervisor to re-adopt.
func (s *Supervisor) Serve(ctx context.Context) error {
	dir := filenames.NamespaceRuntime(s.opts.RuntimeRoot, s.opts.Namespace)
	if err := fsutil.MkdirPrivate(s.opts.RuntimeRoot, dir); err != nil {
		return fmt.Errorf("create runtime dir: %w", err)
	}
	path := filenames.SupervisorSocketPath(s.opts.RuntimeRoot, s.opts.Namespace)
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("serve namespace %q: another supervisor is running", s.opts.Namespace)
	}
	os.Remove(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return fmt.Errorf("listen on control socket: %w", err)
	}
	if err := os.Chmod(path, filenames.FileMode); err != nil {
		ln.Close() // unlinks the socket: SetUnlinkOnClose(false) comes below
		return fmt.Errorf("listen on control socket: %w", err)
	}
	ours, err := os.Stat(path)
	if err != nil {
		ln.Close()
		return fmt.Errorf("listen on control socket: %w", err)
	}
	ln.SetUnlinkOnClose(false) // the socket is removed below, only while it is ours
	defer ln.Close()
	if s.opts.Listening != nil {
		s.opts.Listening()
	}

	s.endLeftMembers()
	s.readopt(ctx)
	s.killOrphanVMMs()

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.serveConn(ctx, c)
			}()
		}
	}()
	teardown, lost := false, false
	owner := s.ownerGone(ctx)
	socketGone := watchSocket(ctx, path, ours)
	idleGrace := time.NewTimer(time.Hour)
	idleGrace.Stop()
	s.checkIdle()
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case <-s.shutdown:
			teardown = true
			break loop
		case <-owner:
			s.log.Info("owner process is gone; bringing the namespace down", "pid", s.opts.OwnerPID)
			teardown = true
			break loop
		case <-socketGone:
			// Nobody can reach this supervisor any more (its runtime
			// directory was cleaned up, or another supervisor replaced
			// the socket): it leaves the VMs running, for the supervisor
			// of the next command to re-adopt, rather than manage them
			// beside that one (and restart them twice).
			s.log.Warn("the control socket was removed or replaced; supervisor exits and leaves its VMs to the next one", "socket", path)
			lost = true
			break loop
		case <-s.idle:
			idleGrace.Reset(2 * time.Second)
		case <-idleGrace.C:
			// A client still connected (an up preparing disks before
			// its first VM, with its watch open) is about to use it.
			if s.empty() && s.conns.Load() == 0 {
				s.log.Info("namespace is empty; supervisor exits")
				break loop
			}
		}
	}
	ln.Close()
	if teardown {
		s.teardown()
	} else {
		s.release()
	}
	cancel()
	wg.Wait()
	if lost {
		return nil // the path is not ours to remove
	}
	os.Remove(path)
	if s.empty() {
		// Nothing runs any more: the runtime directory goes with its last
		// socket (os.Remove leaves a directory that still holds anything).
		os.Remove(path)
		os.Remove(dir)
	}
	return nil
}

// socketCheckInterval is how often the supervisor checks that its control
// socket is still the one it listens on.
var socketCheckInterval = 5 * time.Second

// watchSocket closes its channel once path is no longer the socket ours
// describes: removed, or replaced by another.
func watchSocket(ctx context.Context, path string, ours os.FileInfo) <-chan struct{} {
	return pollUntil(ctx, socketCheckInterval, func() bool {
		fi, err := os.Stat(path)
		gone := errors.Is(err, fs.ErrNotExist)
		replaced := err == nil && !os.SameFile(fi, ours)
		return gone || replaced
	})
}

// pollUntil closes its channel once cond, checked every interval, holds.
func pollUntil(ctx context.Context, every time.Duration, cond func() bool) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if cond() {
					close(ch)
					return
				}
			}
		}
	}()
	return ch
}

func (s *Supervisor) empty() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.nets) == 0 && len(s.vms) == 0
}

func (s *Supervisor) checkIdle() {
	if s.empty() {
		select {
		case s.idle <- struct{}{}:
		default:
		}
	}
}

// ownerGone closes its channel when the owner process dies.
func (s *Supervisor) ownerGone(ctx context.Context) <-chan struct{} {
	if s.opts.OwnerPID == 0 {
		return make(chan struct{})
	}
	return pollUntil(ctx, 250*time.Millisecond, func() bool {
		return !processAlive(s.opts.OwnerPID, s.opts.OwnerStartTime)
	})
}

// teardown stops every VM and removes every network and record.
func (s *Supervisor) teardown() {
	s.mu.Lock()
	addrs := make([]string, 0, len(s.vms))
	for a := range s.vms {
		addrs = append(addrs, a)
	}
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, a := range addrs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.stopVM(context.Background(), a, s.opts.StopTimeout); err != nil {
				s.log.Error("stop vm", "vm", a, "err", err)
			}
		}()
	}
	wg.Wait()
	s.mu.Lock()
	names := make([]string, 0, len(s.nets))
	for n := range s.nets {
		names = append(names, n)
	}
	s.mu.Unlock()
	s.drainPools()
	for _, n := range names {
		s.removeNetwork(n)
	}
}

// release lets go of everything without stopping VMs: the VMMs keep running
// and the next supervisor re-adopts them from their records.
func (s *Supervisor) release() {
	// Pool members are not re-adopted: they end with this supervisor.
	s.drainPools()
	for _, v := range s.allVMs() {
		v.release()
	}
	s.mu.Lock()
	nets := make([]*network, 0, len(s.nets))
	for _, n := range s.nets {
		nets = append(nets, n)
	}
	s.mu.Unlock()
	for _, n := range nets {
		if gw := n.gateway(); gw != nil {
			gw.Close()
		}
		n.sw.Close()
	}
}

func (s *Supervisor) serveConn(ctx context.Context, c net.Conn) {
	s.conns.Add(1)
	defer func() {
		c.Close()
		s.conns.Add(-1)
		s.checkIdle()
	}()
	dec := json.NewDecoder(bufio.NewReader(c))
	var req api.Request
	if err := dec.Decode(&req); err != nil {
		return
	}
	enc := json.NewEncoder(c)
	switch req.Op {
	case api.OpWatch:
		s.watch(ctx, c, enc)
		return
	case api.OpExec:
		s.exec(ctx, dec, enc, &req) // dec: the client's ExecInputs follow
		return
	case api.OpSaveSnapshot:
		// A client that hangs up (a killed `stack snapshot save`) cancels
		// the save; its VMs run on.
		var cancel context.CancelFunc
		ctx, cancel = context.WithCancel(ctx)
		defer cancel()
		go func() {
			var b [1]byte
			c.Read(b[:]) // the client sends nothing more: this returns when it hangs up
			cancel()
		}()
	}
	resp := s.handle(ctx, &req)
	_ = enc.Encode(resp)
}

func (s *Supervisor) handle(ctx context.Context, req *api.Request) api.Response {
	var err error
	var resp api.Response
	switch req.Op {
	case api.OpPing:
		resp.Pong = &api.Pong{PID: os.Getpid(), Version: api.Version, StateRoot: s.opts.StateRoot}
	case api.OpEnsureNetwork:
		if req.Network == nil {
			err = errors.New("ensure-network without a network")
			break
		}
		err = s.ensureNetwork(*req.Network)
	case api.OpRemoveNetwork:
		err = s.removeNetwork(req.Address)
		s.checkIdle()
	case api.OpStartVM:
		if req.VM == nil {
			err = errors.New("start-vm without a vm")
			break
		}
		// A client that hangs up (a killed `up`) must not abort a start
		// half-way: the VM is started or cleanly not.
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		resp.Started, err = s.startVM(sctx, *req.VM)
		cancel()
	case api.OpUpdateVM:
		if req.Update == nil {
			err = errors.New("update-vm without an update")
			break
		}
		err = s.updateVM(*req.Update)
	case api.OpReleaseVM:
		err = s.releaseVM(ctx, req.Address)
	case api.OpStopVM:
		err = s.stopVM(ctx, req.Address, s.stopTimeout(req))
		s.checkIdle()
	case api.OpHaltVM:
		// Like a start, a stop is carried through when the client hangs up.
		timeout := s.stopTimeout(req)
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout+time.Minute)
		err = s.haltVM(hctx, req.Address, timeout)
		cancel()
	case api.OpBootVM:
		bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		resp.Started, err = s.bootVM(bctx, req.Address, req.Instance)
		cancel()
	case api.OpPauseVM:
		err = s.pauseVM(ctx, req.Address)
	case api.OpResumeVM:
		err = s.resumeVM(ctx, req.Address)
	case api.OpSignalVM:
		err = s.signalVM(req.Address, syscall.Signal(req.Signal))
	case api.OpStats:
		resp.Stats = s.stats(ctx)
	case api.OpStatus:
		resp.VMs, resp.Pools = s.status(), s.poolStatus()
	case api.OpSetPools:
		s.setPools(req.Pools)
	case api.OpSaveSnapshot:
		resp.Saved, err = s.saveSnapshot(ctx, req.Dir)
	case api.OpCheckRestore:
		err = s.checkRestore(ctx, req.Restore)
	case api.OpRestoreVMs:
		// Like a start: carried through when the client hangs up.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
		resp.Restored, err = s.restoreVMs(rctx, req.Restore)
		cancel()
	case api.OpShutdown:
		s.once.Do(func() { close(s.shutdown) })
	default:
		err = fmt.Errorf("unknown operation %q", req.Op)
	}
	if err != nil {
		resp.Error = err.Error()
	}
	return resp
}
