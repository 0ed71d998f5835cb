// Package gateway owns the services at a network's gateway address: ARP,
// DHCP (static leases given by the supervisor), DNS for the namespace's VMs,
// published ports (host 127.0.0.1:port to guest ip:port) and, when egress is
// on, NAT to the host's network. It needs no root.
//
// The IP layer is gVisor's netstack (gvisor.dev/gvisor/pkg/tcpip), attached
// to the network's switch as one in-process port: frames from the switch
// are injected into the stack, frames the stack sends are injected into the
// switch. DHCP is answered with the insomniacslk/dhcp codec and DNS with
// miekg/dns, replying on netstack sockets, so the policy (who gets which
// address, which names exist) is ours while TCP, ARP, ICMP echo and IP are
// the well-tested stack's.
//
// Guests are not trusted (docs/security.md). Frames come in through one
// bounded queue per switch port, taken in turn; a frame whose sender is
// not what the leases say is dropped; UDP requests to DNS and DHCP are
// taken from the frames into per-client queues; egress flows, upstream DNS
// queries and DNS connections are bounded per guest and in all (Limits);
// egress refuses the host and private destinations (EgressAllow).
package gateway

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/stackvm/stack/netswitch"

	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/icmp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
)

// Forward publishes a guest port on the host: on HostIP, else on the
// gateway's PublishHost (the loopback).
type Forward struct {
	Protocol  string     `json:"protocol"` // "tcp" (default) or "udp"
	HostPort  int        `json:"host_port"`
	HostIP    netip.Addr `json:"host_ip,omitzero"`
	GuestIP   netip.Addr `json:"guest_ip"`
	GuestPort int        `json:"guest_port"`
}

func (f Forward) key() string { return fmt.Sprintf("%s/%d", f.proto(), f.HostPort) }
func (f Forward) proto() string {
	if f.Protocol == "" {
		return "tcp"
	}
	return f.Protocol
}

// Config configures one network's gateway.
type Config struct {
	Namespace string
	Network   string
	Subnet    netip.Prefix
	GatewayIP netip.Addr
	// MAC is the gateway's Ethernet address; zero derives a stable
	// locally administered one from namespace and network.
	MAC netswitch.MAC
	MTU int // default netswitch.DefaultMTU

	DHCP bool
	DNS  bool
	// Egress relays the guests' TCP and UDP to outside addresses from the
	// host: to the internet, not to the host itself, its other networks
	// or cloud metadata services (see EgressAllow).
	Egress bool

	// Hosts maps VM names to addresses: "<vm>" and
	// "<vm>.<namespace>.internal" resolve to them.
	Hosts map[string]netip.Addr
	// Leases maps MAC addresses to the address DHCP gives them. Unknown
	// clients get no answer.
	Leases  map[netswitch.MAC]netip.Addr
	Publish []Forward

	// LeaseTime is the DHCP lease time (default 1 h).
	LeaseTime time.Duration
	// Upstream DNS servers ("ip:port") for other names when Egress is on;
	// default from /etc/resolv.conf.
	Upstream []string
	// Dial opens egress connections on the host (default net.Dialer). Tests
	// point it at loopback.
	Dial func(ctx context.Context, network, addr string) (net.Conn, error)
	// PublishHost is the host address published ports listen on (default
	// 127.0.0.1).
	PublishHost netip.Addr

	// EgressAllow lets egress reach destinations it refuses by default:
	// the host's own addresses, RFC 1918, 100.64/10, link-local (with the
	// metadata endpoint 169.254.169.254), other cloud metadata endpoints
	// and reserved ranges. The loopback network, 0/8, multicast and the
	// network's own subnet stay refused whatever it says. Note that a
	// prefix holding one of the host's addresses opens every service the
	// host binds to 0.0.0.0 to the guests.
	EgressAllow []netip.Prefix

	// Limits bound what the guests can make the gateway queue and hold;
	// zero fields take the defaults in DefaultLimits.
	Limits Limits

	// hostAddrs lists the host's addresses (default: its interfaces');
	// tests give their own.
	hostAddrs func() ([]netip.Addr, error)

	Logger *slog.Logger
}

// Limits bound the gateway's resources per network and per VM. A VM is
// told apart by its source address, which the intake checks against the
// leases (see spoofed), so one VM cannot spend another's share.
type Limits struct {
	// IntakeQueue is how many frames each switch port may have waiting
	// for the gateway (netswitch.QueuePerSource). A port sending faster
	// than the gateway takes frames loses its own excess; the others' are
	// taken in turn with its own.
	IntakeQueue int
	// ServiceQueuePerClient and ServiceQueue bound the DNS queries (per
	// client address) and DHCP messages (per client MAC) waiting for an
	// answer: for one client, and for all. Requests beyond are dropped;
	// clients retry.
	ServiceQueuePerClient int
	ServiceQueue          int

	// Flows and FlowsPerVM bound the egress flows (UDP 5-tuples, TCP
	// connections being dialled or established), each of which holds a
	// host socket: in all, and per guest. A new flow beyond a bound evicts
	// the least recently used flow of that guest, or at the total bound
	// of the guest with the most flows.
	Flows      int
	FlowsPerVM int
	// UDPIdle closes an egress UDP flow without traffic for this long once
	// the destination has answered; UDPUnrepliedIdle one it never has.
	UDPIdle          time.Duration
	UDPUnrepliedIdle time.Duration

	// UpstreamDNS and UpstreamDNSPerVM bound the DNS queries relayed to
	// the host's resolvers at once. A UDP query beyond is dropped, a TCP
	// one answered SERVFAIL.
	UpstreamDNS      int
	UpstreamDNSPerVM int
	// DNSTCPConns and DNSTCPConnsPerVM bound the open DNS-over-TCP
	// connections to the gateway; one beyond is closed at once.
	DNSTCPConns      int
	DNSTCPConnsPerVM int
}

// DefaultLimits are the limits a zero Config.Limits field takes.
var DefaultLimits = Limits{
	IntakeQueue:           256,
	ServiceQueuePerClient: 64,
	ServiceQueue:          1024,
	Flows:                 4096,
	FlowsPerVM:            1024,
	UDPIdle:               60 * time.Second,
	UDPUnrepliedIdle:      10 * time.Second,
	UpstreamDNS:           256,
	UpstreamDNSPerVM:      64,
	DNSTCPConns:           256,
	DNSTCPConnsPerVM:      16,
}

// withDefaults fills l's zero fields from DefaultLimits.
func (l Limits) withDefaults() Limits {
	d := DefaultLimits
	for _, f := range []struct{ v, def *int }{
		{&l.IntakeQueue, &d.IntakeQueue},
		{&l.ServiceQueuePerClient, &d.ServiceQueuePerClient},
		{&l.ServiceQueue, &d.ServiceQueue},
		{&l.Flows, &d.Flows},
		{&l.FlowsPerVM, &d.FlowsPerVM},
		{&l.UpstreamDNS, &d.UpstreamDNS},
		{&l.UpstreamDNSPerVM, &d.UpstreamDNSPerVM},
		{&l.DNSTCPConns, &d.DNSTCPConns},
		{&l.DNSTCPConnsPerVM, &d.DNSTCPConnsPerVM},
	} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	if l.UDPIdle <= 0 {
		l.UDPIdle = d.UDPIdle
	}
	if l.UDPUnrepliedIdle <= 0 {
		l.UDPUnrepliedIdle = d.UDPUnrepliedIdle
	}
	return l
}

// Update is what may change while the gateway runs.
type Update struct {
	Hosts   map[string]netip.Addr
	Leases  map[netswitch.MAC]netip.Addr
	Publish []Forward
}

const nicID tcpip.NICID = 1

// PortName is the gateway's port on the switch. The "@" keeps it apart
// from port names made of VM names (DNS labels).
const PortName = "@gateway"

// Gateway is one network's gateway.
type Gateway struct {
	cfg Config
	log *slog.Logger
	mac netswitch.MAC
	gw4 [4]byte

	s    *stack.Stack
	ch   *channel.Endpoint
	port *netswitch.InternalPort
	sw   *netswitch.Switch

	mu      sync.RWMutex
	hosts   map[string]netip.Addr // lower-case name -> address
	leases  map[netswitch.MAC]netip.Addr
	publish map[string]*publisher
	// neigh are the static neighbour entries in the stack, one per
	// lease; under mu.
	neigh map[netip.Addr]netswitch.MAC
	// senders is the leases keyed by MAC as the intake checks them,
	// replaced whole on every update so that reading it takes no lock.
	senders atomic.Pointer[senders]

	stats counters
	// flows are the egress flows; upstream the DNS queries relayed to the
	// host's resolvers, dnsConns the DNS-over-TCP connections.
	// dnsQueue and dhcpQueue hold the UDP requests waiting for an answer.
	dnsQueue  *fairQueue[netip.Addr, dnsRequest]
	dhcpQueue *fairQueue[netswitch.MAC, []byte]
	flows     *flowTable
	upstream  *clientSlots
	dnsConns  *clientSlots
	policy    *egressPolicy

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closer []func() error // service sockets
	once   sync.Once
}

// New builds the gateway's stack and services; it sees no traffic until
// Attach.
func New(cfg Config) (*Gateway, error) {
	if !cfg.Subnet.IsValid() || !cfg.Subnet.Addr().Is4() {
		return nil, fmt.Errorf("create gateway for %s: subnet %v is not IPv4", cfg.Network, cfg.Subnet)
	}
	cfg.Subnet = cfg.Subnet.Masked()
	if !cfg.GatewayIP.Is4() || !cfg.Subnet.Contains(cfg.GatewayIP) {
		return nil, fmt.Errorf("create gateway for %s: address %v not in %v", cfg.Network, cfg.GatewayIP, cfg.Subnet)
	}
	if cfg.MTU == 0 {
		cfg.MTU = netswitch.DefaultMTU
	}
	if cfg.LeaseTime == 0 {
		cfg.LeaseTime = time.Hour
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	cfg.Limits = cfg.Limits.withDefaults()
	if cfg.Dial == nil {
		var d net.Dialer
		cfg.Dial = d.DialContext
	}
	if !cfg.PublishHost.IsValid() {
		cfg.PublishHost = netip.AddrFrom4([4]byte{127, 0, 0, 1})
	}
	if cfg.MAC == (netswitch.MAC{}) {
		h := sha256.Sum256([]byte("stack-gateway\x00" + cfg.Namespace + "\x00" + cfg.Network))
		cfg.MAC = netswitch.MAC{0x02, h[0], h[1], h[2], h[3], h[4]}
	}
	g := &Gateway{
		cfg:       cfg,
		log:       cfg.Logger.With("network", cfg.Network, "gateway", cfg.GatewayIP),
		mac:       cfg.MAC,
		gw4:       cfg.GatewayIP.As4(),
		publish:   map[string]*publisher{},
		flows:     newFlowTable(cfg.Limits),
		dnsQueue:  newFairQueue[netip.Addr, dnsRequest](cfg.Limits.ServiceQueuePerClient, cfg.Limits.ServiceQueue),
		dhcpQueue: newFairQueue[netswitch.MAC, []byte](cfg.Limits.ServiceQueuePerClient, cfg.Limits.ServiceQueue),
		upstream:  newClientSlots(cfg.Limits.UpstreamDNSPerVM, cfg.Limits.UpstreamDNS),
		dnsConns:  newClientSlots(cfg.Limits.DNSTCPConnsPerVM, cfg.Limits.DNSTCPConns),
	}
	var err error
	if g.policy, err = newEgressPolicy(cfg.Subnet, cfg.EgressAllow, cfg.hostAddrs); err != nil {
		return nil, fmt.Errorf("create gateway for %s: %w", cfg.Network, err)
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	if err := g.buildStack(); err != nil {
		g.cancel()
		return nil, fmt.Errorf("create gateway for %s: %w", cfg.Network, err)
	}
	if err := g.setHosts(cfg.Hosts, cfg.Leases); err != nil {
		g.cancel()
		g.s.Close()
		g.s.Wait()
		return nil, fmt.Errorf("create gateway for %s: %w", cfg.Network, err)
	}
	return g, nil
}

// MAC is the gateway's Ethernet address.
func (g *Gateway) MAC() netswitch.MAC { return g.mac }

func (g *Gateway) buildStack() error {
	g.s = stack.New(stack.Options{
		NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
		TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol, icmp.NewProtocol4},
		HandleLocal:        false,
	})
	g.ch = channel.New(512, uint32(g.cfg.MTU+header.EthernetMinimumSize), tcpip.LinkAddress(g.mac[:]))
	if err := g.s.CreateNIC(nicID, ethernet.New(g.ch)); err != nil {
		return fmt.Errorf("create nic: %s", err)
	}
	bits := g.cfg.Subnet.Bits()
	if err := g.s.AddProtocolAddress(nicID, tcpip.ProtocolAddress{
		Protocol:          ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(g.gw4), PrefixLen: bits},
	}, stack.AddressProperties{}); err != nil {
		return fmt.Errorf("add address: %s", err)
	}
	sub, err := tcpip.NewSubnet(tcpip.AddrFrom4(g.cfg.Subnet.Addr().As4()), tcpip.MaskFromBytes(net.CIDRMask(bits, 32)))
	if err != nil {
		return fmt.Errorf("subnet: %w", err)
	}
	routes := []tcpip.Route{{Destination: sub, NIC: nicID}}
	// The limited broadcast address (DHCP replies) goes out of the NIC.
	bc, _ := tcpip.NewSubnet(tcpip.AddrFrom4([4]byte{255, 255, 255, 255}), tcpip.MaskFromBytes(net.CIDRMask(32, 32)))
	routes = append(routes, tcpip.Route{Destination: bc, NIC: nicID})
	g.s.SetRouteTable(routes)
	if g.cfg.Egress {
		// Accept and answer for any destination: the forwarders below
		// terminate the guests' connections and open them again from the
		// host. ARP is filtered in fromSwitch so that the gateway never
		// claims another VM's address.
		g.s.SetPromiscuousMode(nicID, true)
		g.s.SetSpoofing(nicID, true)
		// The forwarder's own bound on connections being set up stays
		// above the flow table's, which evicts (and so cancels) dials.
		tf := tcp.NewForwarder(g.s, 0, g.cfg.Limits.Flows+1024, g.egressTCP)
		g.s.SetTransportProtocolHandler(tcp.ProtocolNumber, tf.HandlePacket)
		uf := udp.NewForwarder(g.s, g.egressUDP)
		g.s.SetTransportProtocolHandler(udp.ProtocolNumber, uf.HandlePacket)
	}
	return nil
}

// Attach adds the gateway to sw as an internal port and starts its
// services.
func (g *Gateway) Attach(sw *netswitch.Switch) error {
	// The gateway's MAC is pinned to its port and its address reserved
	// in ARP: a guest sending from the one or claiming the other would
	// otherwise draw every other guest's gateway traffic to itself. (Its
	// address is not pinned: egress sends from outside addresses.) Each
	// port has its own queue into the gateway, so that a port's flood
	// costs that port: the switch drops its excess and takes the other
	// ports' frames in turn.
	p, err := sw.AddInternal(PortName, g.fromSwitch, netswitch.PinMACs(g.mac), netswitch.ReserveIPs(g.cfg.GatewayIP),
		netswitch.QueuePerSource(g.cfg.Limits.IntakeQueue))
	if err != nil {
		return fmt.Errorf("attach gateway to %s: %w", g.cfg.Network, err)
	}
	g.port, g.sw = p, sw
	g.wg.Add(1)
	go g.toSwitch()
	if g.cfg.Egress {
		g.wg.Add(1)
		go g.sweepFlows()
	}
	if g.cfg.DHCP {
		if err := g.startDHCP(); err != nil {
			g.Close()
			return fmt.Errorf("attach gateway to %s: %w", g.cfg.Network, err)
		}
	}
	if g.cfg.DNS {
		if err := g.startDNS(); err != nil {
			g.Close()
			return fmt.Errorf("attach gateway to %s: %w", g.cfg.Network, err)
		}
	}
	g.mu.Lock()
	err = g.setPublishLocked(g.cfg.Publish)
	g.mu.Unlock()
	if err != nil {
		g.Close()
		return fmt.Errorf("attach gateway to %s: %w", g.cfg.Network, err)
	}
	return nil
}

// fromSwitch takes a frame from the switch into the stack. Only frames for
// the gateway's own MAC, broadcasts and multicasts go in (the switch floods
// unknown unicast, and the stack is promiscuous when egress is on), only
// ARP requests for the gateway's address (a promiscuous stack would answer
// ARP for every address), and only frames whose sender is who the leases
// say (see spoofed).
func (g *Gateway) fromSwitch(f []byte) {
	if len(f) < header.EthernetMinimumSize {
		return
	}
	if f[0]&1 == 0 && [6]byte(f[0:6]) != g.mac {
		return
	}
	if g.spoofed(f) {
		g.stats.spoofed.Add(1)
		return
	}
	if g.takeService(f) {
		return
	}
	if header.Ethernet(f).Type() == header.ARPProtocolNumber {
		a := header.ARP(f[header.EthernetMinimumSize:])
		if a.Op() == header.ARPRequest && [4]byte(a.ProtocolAddressTarget()) != g.gw4 {
			return
		}
	}
	pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(f)})
	g.ch.InjectInbound(0, pkt)
	pkt.DecRef()
}

// toSwitch moves the stack's outgoing frames into the switch.
func (g *Gateway) toSwitch() {
	defer g.wg.Done()
	buf := make([]byte, 0, 65536)
	for {
		pkt := g.ch.ReadContext(g.ctx)
		if pkt == nil {
			return
		}
		buf = buf[:0]
		for _, s := range pkt.AsSlices() {
			buf = append(buf, s...)
		}
		pkt.DecRef()
		g.port.Inject(buf)
	}
}

// Update replaces the hosts, leases and published ports.
func (g *Gateway) Update(u Update) error {
	if err := g.setHosts(u.Hosts, u.Leases); err != nil {
		return fmt.Errorf("update gateway %s: %w", g.cfg.Network, err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if err := g.setPublishLocked(u.Publish); err != nil {
		return fmt.Errorf("update gateway %s: %w", g.cfg.Network, err)
	}
	return nil
}

// setHosts replaces the names and leases, and with the leases the static
// neighbour entries and the senders the intake accepts. An address may be
// leased to one MAC only: the lease is also what the gateway believes about
// who has the address.
func (g *Gateway) setHosts(hosts map[string]netip.Addr, leases map[netswitch.MAC]netip.Addr) error {
	h := make(map[string]netip.Addr, len(hosts))
	for n, a := range hosts {
		if !a.Is4() {
			return fmt.Errorf("host %q: address %v is not IPv4", n, a)
		}
		h[strings.ToLower(n)] = a
	}
	l := make(map[netswitch.MAC]netip.Addr, len(leases))
	neigh := make(map[netip.Addr]netswitch.MAC, len(leases))
	who := &senders{byMAC: make(map[netswitch.MAC][4]byte, len(leases)), byIP: make(map[[4]byte]netswitch.MAC, len(leases))}
	for mac, a := range leases {
		if !a.Is4() || !g.cfg.Subnet.Contains(a) || a == g.cfg.GatewayIP {
			return fmt.Errorf("lease for %s: address %v not usable in %v", mac, a, g.cfg.Subnet)
		}
		if other, dup := neigh[a]; dup {
			return fmt.Errorf("lease for %s: address %v also leased to %s", mac, a, other)
		}
		if mac.IsMulticast() || mac.IsZero() {
			return fmt.Errorf("lease for %s: not a unicast MAC", mac)
		}
		l[mac] = a
		neigh[a] = mac
		who.byMAC[mac] = a.As4()
		who.byIP[a.As4()] = mac
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.hosts, g.leases = h, l
	g.senders.Store(who)
	return g.setNeighborsLocked(neigh)
}

// setNeighborsLocked makes the stack's static neighbour entries exactly
// want. Static entries are what keeps the gateway's own traffic to a guest
// going to that guest's MAC: the stack ignores ARP about an address it has a
// static entry for, so a forged ARP reply or request cannot redirect it.
func (g *Gateway) setNeighborsLocked(want map[netip.Addr]netswitch.MAC) error {
	for a := range g.neigh {
		if _, ok := want[a]; !ok {
			// Not found is fine: the entry may have been removed with
			// the NIC.
			g.s.RemoveNeighbor(nicID, ipv4.ProtocolNumber, tcpip.AddrFrom4(a.As4()))
		}
	}
	for a, mac := range want {
		if old, ok := g.neigh[a]; ok && old == mac {
			continue
		}
		if err := g.s.AddStaticNeighbor(nicID, ipv4.ProtocolNumber, tcpip.AddrFrom4(a.As4()), tcpip.LinkAddress(mac[:])); err != nil {
			return fmt.Errorf("add neighbour %v: %s", a, err)
		}
	}
	g.neigh = want
	return nil
}

// Close stops every service, the stack, and removes the switch port.
func (g *Gateway) Close() error {
	var err error
	g.once.Do(func() {
		g.cancel()
		g.mu.Lock()
		for k, p := range g.publish {
			p.close()
			delete(g.publish, k)
		}
		closers := g.closer
		g.closer = nil
		g.mu.Unlock()
		for _, c := range closers {
			c()
		}
		if g.sw != nil {
			err = g.sw.RemovePort(g.port.Name())
			if errors.Is(err, netswitch.ErrNoPort) {
				err = nil // the switch was closed first
			}
		}
		g.s.Close()
		g.ch.Close()
		g.wg.Wait()
		g.s.Wait()
	})
	return err
}

// addCloser registers a service socket to close on Close.
func (g *Gateway) addCloser(c func() error) {
	g.mu.Lock()
	g.closer = append(g.closer, c)
	g.mu.Unlock()
}

func (g *Gateway) lookupHost(name string) (netip.Addr, bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	a, ok := g.hosts[name]
	return a, ok
}

func (g *Gateway) lease(m netswitch.MAC) (netip.Addr, string, bool) {
	g.mu.RLock()
	defer g.mu.RUnlock()
	a, ok := g.leases[m]
	if !ok {
		return a, "", false
	}
	host := ""
	for n, h := range g.hosts {
		if h == a && (host == "" || n < host) {
			host = n
		}
	}
	return a, host, true
}

func fullAddr(a netip.Addr, port int) tcpip.FullAddress {
	return tcpip.FullAddress{NIC: nicID, Addr: tcpip.AddrFrom4(a.As4()), Port: uint16(port)}
}
