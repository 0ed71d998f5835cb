// Package netswitch owns the L2 data path of a stack network: a learning
// Ethernet switch in user space with ports for unix datagram sockets, unix
// stream sockets (QEMU's 4-byte length framing), fd-passed socketpairs, TAP
// devices and in-process ports (the gateway). One Switch is one network;
// switches share nothing, so two networks (or two namespaces) never see each
// other's frames.
//
// The hot path moves frames in batches (recvmmsg/sendmmsg on datagram
// sockets) and does not allocate per frame. Each port has one reader
// goroutine that receives a batch, looks every frame up in the MAC table
// under one read lock, queues it for its destination ports and sends each
// destination its share in one call.
//
// There are no output queues: a reader sends to its destinations itself.
// A destination that cannot take a frame (a VMM whose socket queue is full)
// is waited for up to Config.StallTimeout, then marked stalled; while
// stalled it gets what fits and the rest is dropped (counted as tx drops)
// without waiting, until a send succeeds again. So a paused VM costs the
// others at most one stall timeout, not a blocked switch.
//
// A port may be created with pinned addresses (PinMACs): the VM NIC's
// configured MAC. Such a port sends from those addresses only, nobody else
// may send from them, and they never age out. Ports without pins learn as a
// plain learning switch does; a guest behind one can take over any
// unpinned address, so every VM port should be pinned. Pinned IPv4
// addresses (PinIPs) likewise bind the port's IPv4 sources and ARP claims,
// so that a guest cannot answer ARP for another machine's address.
//
// Use from the supervisor, per network:
//
//	sw, _ := netswitch.New(netswitch.Config{Name: net, Dir: filenames.NetworkRuntime(run, ns, net)})
//	swPath, _ := sw.AddDgramPort(portName, vmmPath, netswitch.PinMACs(nic.MAC), netswitch.PinIPs(nic.IP)) // NIC{DgramLocal: vmmPath, DgramRemote: swPath}
//	...
//	sw.RemovePort(portName); sw.Close()
package netswitch

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// maxBatch is how many frames move per system call.
const maxBatch = 32

// Defaults for Config fields left zero.
const (
	DefaultMACAge         = 300 * time.Second
	DefaultMaxMACsPerPort = 256
	DefaultMaxMACs        = 8192
	DefaultSocketBuffer   = 4 << 20
	// DefaultStallTimeout is how long a sender waits for a full port before
	// it drops and marks the port stalled.
	DefaultStallTimeout = 20 * time.Millisecond
)

// Config configures one switch.
type Config struct {
	// Name names the network in logs.
	Name string
	// Dir holds the switch's socket files; it is created 0700 when missing
	// and must not be shared with another switch.
	Dir string
	// MTU is the IP MTU; frames longer than MTU+18 are dropped.
	MTU int
	// MACAge is how long a learned address is trusted without traffic.
	MACAge time.Duration
	// MaxMACsPerPort bounds the addresses learned behind one port. A port
	// at its limit learns nothing new (its frames are still forwarded, and
	// frames to its unlearned addresses are flooded), so a port flooding
	// random source addresses can neither grow the table nor push out the
	// addresses of other ports.
	MaxMACsPerPort int
	// MaxMACs bounds the whole table.
	MaxMACs int
	// SocketBuffer is SO_SNDBUF/SO_RCVBUF for the switch's sockets.
	SocketBuffer int
	// StallTimeout: see DefaultStallTimeout.
	StallTimeout time.Duration
	// Now is the clock (tests inject one). Default time.Now.
	Now func() time.Time
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Switch is one learning Ethernet switch.
type Switch struct {
	cfg      Config
	maxFrame int
	log      *slog.Logger

	mu     sync.Mutex // serialises port management
	byName map[string]*port
	closed bool

	ports atomic.Pointer[[]*port] // indexed by port slot; nil entries are free slots
	table macTable

	wg   sync.WaitGroup
	stop chan struct{}
}

// ErrClosed is returned by operations on a closed switch.
var ErrClosed = errors.New("switch is closed")

// New creates a switch. It starts the goroutine that ages the MAC table.
func New(cfg Config) (*Switch, error) {
	if cfg.MTU == 0 {
		cfg.MTU = DefaultMTU
	}
	if cfg.MTU < 68 || cfg.MTU > 65535-EthHeaderLen-vlanTagLen {
		return nil, fmt.Errorf("create switch %q: mtu %d out of range", cfg.Name, cfg.MTU)
	}
	if cfg.MACAge <= 0 {
		cfg.MACAge = DefaultMACAge
	}
	if cfg.MaxMACsPerPort <= 0 {
		cfg.MaxMACsPerPort = DefaultMaxMACsPerPort
	}
	if cfg.MaxMACs <= 0 {
		cfg.MaxMACs = DefaultMaxMACs
	}
	if cfg.SocketBuffer <= 0 {
		cfg.SocketBuffer = DefaultSocketBuffer
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = DefaultStallTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Dir != "" {
		if err := ensurePrivateDir(cfg.Dir); err != nil {
			return nil, fmt.Errorf("create switch %q: %w", cfg.Name, err)
		}
	}
	sw := &Switch{
		cfg:      cfg,
		maxFrame: maxFrameLen(cfg.MTU),
		log:      cfg.Logger.With("network", cfg.Name),
		byName:   map[string]*port{},
		stop:     make(chan struct{}),
	}
	sw.table.init(cfg.MACAge, cfg.MaxMACsPerPort, cfg.MaxMACs)
	empty := []*port{}
	sw.ports.Store(&empty)
	sw.wg.Add(1)
	go sw.ager()
	return sw, nil
}

func ensurePrivateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create socket directory: %w", err)
	}
	// MkdirAll leaves an existing directory's mode alone.
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("restrict socket directory: %w", err)
	}
	return nil
}

// MaxFrame is the longest frame the switch forwards.
func (sw *Switch) MaxFrame() int { return sw.maxFrame }

// MTU is the switch's IP MTU.
func (sw *Switch) MTU() int { return sw.cfg.MTU }

// ager drops expired MAC entries so that memory follows the live addresses
// (lookups ignore expired entries on their own; this only frees them), and
// has datagram ports check their peers.
func (sw *Switch) ager() {
	defer sw.wg.Done()
	every := sw.cfg.MACAge / 4
	if every > 30*time.Second {
		every = 30 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	peers := time.NewTicker(peerCheckEvery)
	defer peers.Stop()
	for {
		select {
		case <-sw.stop:
			return
		case <-t.C:
			sw.Expire()
		case <-peers.C:
			for _, p := range *sw.ports.Load() {
				if p == nil {
					continue
				}
				if d, ok := p.io.(*dgramIO); ok {
					d.checkPeer()
				}
			}
		}
	}
}

// Expire removes the MAC entries older than MACAge now. The switch calls it
// periodically; tests with an injected clock call it directly.
func (sw *Switch) Expire() int {
	return sw.table.expire(sw.cfg.Now().UnixNano())
}

// portIO is one transport. write may be called from many goroutines at
// once; it sends what it can and returns how many frames it sent, in order.
type portIO interface {
	write(frames [][]byte, b *sendBatch) int
	// run reads frames and hands them to fw until the port is closed.
	run(fw *forwarder)
	close() error
}

// port is a switch port: a transport plus counters and its learned count.
type port struct {
	name string
	kind string
	slot int
	io   portIO
	path string // socket file the switch created, removed on close

	learned int // addresses in the table behind this port; under table.mu
	// pins are the port's pinned addresses (PinMACs); a port with pins
	// sends from them only and learns nothing. Fixed at creation.
	pins []MAC
	// ips are its pinned or reserved IPv4 addresses (PinIPs, ReserveIPs);
	// ownIP says its own frames are checked against them (PinIPs). Fixed
	// at creation.
	ips     [][4]byte
	ownIP   bool
	removed atomic.Bool

	rxFrames, rxBytes, rxDrops atomic.Uint64
	txFrames, txBytes, txDrops atomic.Uint64
	spoofDrops, queueDrops     atomic.Uint64
}

// Port kinds, as reported in Stats.
const (
	KindDgram      = "dgram"
	KindStream     = "stream"
	KindSocketpair = "socketpair"
	KindTAP        = "tap"
	KindInternal   = "internal"
)

// addPort registers a port with its pinned addresses and, when the
// transport reads on its own, starts its reader.
func (sw *Switch) addPort(name, kind, path string, io portIO, reader bool, o portOptions) (*port, error) {
	sw.mu.Lock()
	defer sw.mu.Unlock()
	if sw.closed {
		return nil, ErrClosed
	}
	if _, ok := sw.byName[name]; ok {
		return nil, fmt.Errorf("add port %q: name in use", name)
	}
	p := &port{name: name, kind: kind, io: io, path: path, pins: append([]MAC(nil), o.pins...), ownIP: o.ownIP}
	for _, m := range p.pins {
		if m.IsMulticast() || m.IsZero() {
			return nil, fmt.Errorf("add port %q: cannot pin %s", name, m)
		}
	}
	for _, a := range o.ips {
		if !a.Is4() || a.IsUnspecified() || a.IsMulticast() {
			return nil, fmt.Errorf("add port %q: cannot pin %v", name, a)
		}
		p.ips = append(p.ips, a.As4())
	}
	old := *sw.ports.Load()
	slot := -1
	for i, q := range old {
		if q == nil {
			slot = i
			break
		}
	}
	next := append([]*port(nil), old...)
	if slot < 0 {
		slot = len(next)
		next = append(next, nil)
	}
	p.slot = slot // before pin publishes p to the forwarders
	if len(p.pins)+len(p.ips) > 0 {
		if err := sw.table.pin(p); err != nil {
			return nil, fmt.Errorf("add port %q: %w", name, err)
		}
	}
	next[slot] = p
	sw.byName[name] = p
	sw.ports.Store(&next)
	if reader {
		sw.wg.Add(1)
		go func() {
			defer sw.wg.Done()
			io.run(sw.newForwarder(p))
		}()
	}
	sw.log.Debug("port added", "port", name, "kind", kind)
	return p, nil
}

// ErrNoPort is returned by RemovePort for an unknown name.
var ErrNoPort = errors.New("no such port")

// RemovePort closes a port, forgets its addresses and removes its socket
// file or TAP device.
func (sw *Switch) RemovePort(name string) error {
	sw.mu.Lock()
	p, ok := sw.byName[name]
	if !ok {
		sw.mu.Unlock()
		return fmt.Errorf("remove port %q: %w", name, ErrNoPort)
	}
	delete(sw.byName, name)
	p.removed.Store(true)
	old := *sw.ports.Load()
	next := append([]*port(nil), old...)
	next[p.slot] = nil
	sw.ports.Store(&next)
	sw.mu.Unlock()

	sw.table.forget(p)
	err := p.io.close()
	if p.path != "" {
		if rerr := os.Remove(p.path); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
			err = rerr
		}
	}
	if err != nil {
		return fmt.Errorf("remove port %q: %w", name, err)
	}
	sw.log.Debug("port removed", "port", name)
	return nil
}

// Close removes every port and stops the switch's goroutines.
func (sw *Switch) Close() error {
	sw.mu.Lock()
	if sw.closed {
		sw.mu.Unlock()
		return nil
	}
	sw.closed = true
	names := make([]string, 0, len(sw.byName))
	for n := range sw.byName {
		names = append(names, n)
	}
	sw.mu.Unlock()
	var errs []error
	for _, n := range names {
		if err := sw.RemovePort(n); err != nil {
			errs = append(errs, err)
		}
	}
	close(sw.stop)
	sw.wg.Wait()
	return errors.Join(errs...)
}

// PortStats are one port's counters. Rx counts what the port sent into the
// switch, Tx what the switch delivered to it. Drops in are refused frames
// (runts, oversize, bad source, strangers, bad stream prefixes, spoofed
// sources); drops out are frames the port could not take (full, gone).
type PortStats struct {
	Name     string `json:"name"`
	Kind     string `json:"kind"`
	RxFrames uint64 `json:"rx_frames"`
	RxBytes  uint64 `json:"rx_bytes"`
	RxDrops  uint64 `json:"rx_drops"`
	TxFrames uint64 `json:"tx_frames"`
	TxBytes  uint64 `json:"tx_bytes"`
	TxDrops  uint64 `json:"tx_drops"`
	// SpoofDrops counts the frames among RxDrops whose source address the
	// port may not use: not one of its pinned addresses, or pinned to
	// another port.
	SpoofDrops uint64 `json:"spoof_drops"`
	// QueueDrops counts frames from this port that an internal port with
	// QueuePerSource (the gateway) dropped because this port's queue
	// into it was full.
	QueueDrops uint64 `json:"queue_drops"`
	// MACs is how many addresses are known behind the port: learned or
	// pinned.
	MACs int `json:"macs"`
}

// Stats is a snapshot of the switch's counters.
type Stats struct {
	Ports []PortStats `json:"ports"` // in slot order
	MACs  int         `json:"macs"`
	// LearnRefused counts source addresses not learned because a port or
	// the table was at its limit.
	LearnRefused uint64 `json:"learn_refused"`
}

// Stats returns the current counters.
func (sw *Switch) Stats() Stats {
	var st Stats
	ports := *sw.ports.Load()
	sw.table.mu.RLock()
	st.MACs = len(sw.table.m)
	for _, p := range ports {
		if p == nil {
			continue
		}
		st.Ports = append(st.Ports, PortStats{
			Name: p.name, Kind: p.kind,
			RxFrames: p.rxFrames.Load(), RxBytes: p.rxBytes.Load(), RxDrops: p.rxDrops.Load(),
			TxFrames: p.txFrames.Load(), TxBytes: p.txBytes.Load(), TxDrops: p.txDrops.Load(),
			SpoofDrops: p.spoofDrops.Load(), QueueDrops: p.queueDrops.Load(),
			MACs: p.learned + len(p.pins),
		})
	}
	sw.table.mu.RUnlock()
	st.LearnRefused = sw.table.refused.Load()
	return st
}

// PortStats returns one port's counters.
func (sw *Switch) PortStats(name string) (PortStats, bool) {
	for _, p := range sw.Stats().Ports {
		if p.Name == name {
			return p, true
		}
	}
	return PortStats{}, false
}
