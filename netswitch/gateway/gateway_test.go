package gateway

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/miekg/dns"
	"go.uber.org/goleak"
	"gvisor.dev/gvisor/pkg/buffer"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/link/channel"
	"gvisor.dev/gvisor/pkg/tcpip/link/ethernet"
	"gvisor.dev/gvisor/pkg/tcpip/network/arp"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/stack"
	"gvisor.dev/gvisor/pkg/tcpip/transport/tcp"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"

	"github.com/stackvm/stack/netswitch"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var (
	subnet = netip.MustParsePrefix("10.77.0.0/24")
	gwIP   = netip.MustParseAddr("10.77.0.1")
	ipA    = netip.MustParseAddr("10.77.0.10")
	ipB    = netip.MustParseAddr("10.77.0.11")
	macA   = netswitch.MAC{0x52, 0x54, 0, 0, 0, 0x0a}
	macB   = netswitch.MAC{0x52, 0x54, 0, 0, 0, 0x0b}
)

// setup makes a switch with a gateway on it.
func setup(t *testing.T, mod func(*Config)) (*netswitch.Switch, *Gateway) {
	t.Helper()
	sw, err := netswitch.New(netswitch.Config{Name: "lan"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Namespace: "demo", Network: "lan", Subnet: subnet, GatewayIP: gwIP,
		DHCP: true, DNS: true,
		Hosts:  map[string]netip.Addr{"web-0": ipA, "db": ipB},
		Leases: map[netswitch.MAC]netip.Addr{macA: ipA, macB: ipB},
	}
	if mod != nil {
		mod(&cfg)
	}
	g, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Attach(sw); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := g.Close(); err != nil {
			t.Errorf("close gateway: %v", err)
		}
		sw.Close()
	})
	return sw, g
}

// guest is a fake VM: a netstack of its own on an internal switch port.
type guest struct {
	s  *stack.Stack
	ch *channel.Endpoint
	wg sync.WaitGroup
}

func newGuest(t *testing.T, sw *netswitch.Switch, name string, mac netswitch.MAC, ip netip.Addr) *guest {
	t.Helper()
	g := &guest{
		s: stack.New(stack.Options{
			NetworkProtocols:   []stack.NetworkProtocolFactory{ipv4.NewProtocol, arp.NewProtocol},
			TransportProtocols: []stack.TransportProtocolFactory{tcp.NewProtocol, udp.NewProtocol},
		}),
		ch: channel.New(256, 1514, tcpip.LinkAddress(mac[:])),
	}
	if err := g.s.CreateNIC(1, ethernet.New(g.ch)); err != nil {
		t.Fatal(err)
	}
	g.s.AddProtocolAddress(1, tcpip.ProtocolAddress{Protocol: ipv4.ProtocolNumber,
		AddressWithPrefix: tcpip.AddressWithPrefix{Address: tcpip.AddrFrom4(ip.As4()), PrefixLen: 24}}, stack.AddressProperties{})
	g.s.SetRouteTable([]tcpip.Route{{Destination: header.IPv4EmptySubnet, Gateway: tcpip.AddrFrom4(gwIP.As4()), NIC: 1}})
	port, err := sw.AddInternal(name, func(f []byte) {
		pkt := stack.NewPacketBuffer(stack.PacketBufferOptions{Payload: buffer.MakeWithData(f)})
		g.ch.InjectInbound(0, pkt)
		pkt.DecRef()
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		var buf []byte
		for {
			pkt := g.ch.ReadContext(ctx)
			if pkt == nil {
				return
			}
			buf = buf[:0]
			for _, s := range pkt.AsSlices() {
				buf = append(buf, s...)
			}
			pkt.DecRef()
			port.Inject(buf)
		}
	}()
	t.Cleanup(func() {
		cancel()
		sw.RemovePort(name)
		g.s.Close()
		g.ch.Close()
		g.wg.Wait()
		g.s.Wait()
	})
	return g
}

// rawPort is a fake VM that sends and records raw frames.
type rawPort struct {
	*netswitch.InternalPort
	frames chan []byte
}

func newRawPort(t *testing.T, sw *netswitch.Switch, name string) *rawPort {
	t.Helper()
	r := &rawPort{frames: make(chan []byte, 256)}
	p, err := sw.AddInternal(name, func(f []byte) {
		select {
		case r.frames <- append([]byte(nil), f...):
		default:
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	r.InternalPort = p
	return r
}

// udpFrame builds Ethernet/IPv4/UDP around payload.
func udpFrame(src, dst netswitch.MAC, sip, dip netip.Addr, sport, dport uint16, payload []byte) []byte {
	f := make([]byte, header.EthernetMinimumSize+header.IPv4MinimumSize+header.UDPMinimumSize+len(payload))
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(src[:]), DstAddr: tcpip.LinkAddress(dst[:]), Type: header.IPv4ProtocolNumber})
	ip := header.IPv4(f[header.EthernetMinimumSize:])
	ip.Encode(&header.IPv4Fields{
		TotalLength: uint16(len(f) - header.EthernetMinimumSize), TTL: 64, Protocol: uint8(udp.ProtocolNumber),
		SrcAddr: tcpip.AddrFrom4(sip.As4()), DstAddr: tcpip.AddrFrom4(dip.As4()),
	})
	ip.SetChecksum(^ip.CalculateChecksum())
	u := header.UDP(ip[header.IPv4MinimumSize:])
	u.Encode(&header.UDPFields{SrcPort: sport, DstPort: dport, Length: uint16(header.UDPMinimumSize + len(payload))})
	copy(u[header.UDPMinimumSize:], payload)
	return f
}

// dhcpFromFrame extracts a DHCP message to port 68 from a frame.
func dhcpFromFrame(f []byte) *dhcpv4.DHCPv4 {
	if len(f) < header.EthernetMinimumSize+header.IPv4MinimumSize+header.UDPMinimumSize ||
		header.Ethernet(f).Type() != header.IPv4ProtocolNumber {
		return nil
	}
	ip := header.IPv4(f[header.EthernetMinimumSize:])
	if !ip.IsValid(len(ip)) || ip.TransportProtocol() != udp.ProtocolNumber {
		return nil
	}
	u := header.UDP(ip.Payload())
	if u.DestinationPort() != 68 {
		return nil
	}
	m, err := dhcpv4.FromBytes(u.Payload())
	if err != nil {
		return nil
	}
	return m
}

func waitDHCP(t *testing.T, r *rawPort, want dhcpv4.MessageType) *dhcpv4.DHCPv4 {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case f := <-r.frames:
			if m := dhcpFromFrame(f); m != nil {
				if m.MessageType() != want {
					t.Fatalf("got DHCP %s, want %s", m.MessageType(), want)
				}
				return m
			}
		case <-timeout:
			t.Fatalf("no DHCP %s within 5s", want)
		}
	}
}

var bcastMAC = netswitch.MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func TestDHCP(t *testing.T) {
	sw, g := setup(t, nil)
	r := newRawPort(t, sw, "vm-a")
	zero, bcast := netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255})

	disc, err := dhcpv4.NewDiscovery(net.HardwareAddr(macA[:]))
	if err != nil {
		t.Fatal(err)
	}
	r.Inject(udpFrame(macA, bcastMAC, zero, bcast, 68, 67, disc.ToBytes()))
	offer := waitDHCP(t, r, dhcpv4.MessageTypeOffer)
	if !offer.YourIPAddr.Equal(net.IP(ipA.AsSlice())) {
		t.Fatalf("offered %v, want %v", offer.YourIPAddr, ipA)
	}
	if offer.TransactionID != disc.TransactionID {
		t.Fatalf("offer for another transaction")
	}
	gw := net.IP(gwIP.AsSlice())
	if r := offer.Router(); len(r) != 1 || !r[0].Equal(gw) {
		t.Fatalf("router %v, want %v", r, gw)
	}
	if d := offer.DNS(); len(d) != 1 || !d[0].Equal(gw) {
		t.Fatalf("dns %v, want %v", d, gw)
	}
	if m := offer.SubnetMask(); net.IP(m).String() != "255.255.255.0" {
		t.Fatalf("mask %v", net.IP(m))
	}
	if h := offer.HostName(); h != "web-0" {
		t.Fatalf("host name %q, want web-0", h)
	}
	if d := offer.DomainName(); d != "demo.internal" {
		t.Fatalf("domain %q", d)
	}

	req, err := dhcpv4.NewRequestFromOffer(offer)
	if err != nil {
		t.Fatal(err)
	}
	r.Inject(udpFrame(macA, bcastMAC, zero, bcast, 68, 67, req.ToBytes()))
	ack := waitDHCP(t, r, dhcpv4.MessageTypeAck)
	if !ack.YourIPAddr.Equal(net.IP(ipA.AsSlice())) {
		t.Fatalf("acked %v, want %v", ack.YourIPAddr, ipA)
	}
	if ack.IPAddressLeaseTime(0) != time.Hour {
		t.Fatalf("lease time %v", ack.IPAddressLeaseTime(0))
	}

	// Asking for another address is refused.
	bad, _ := dhcpv4.NewRequestFromOffer(offer, dhcpv4.WithOption(dhcpv4.OptRequestedIPAddress(net.IP(ipB.AsSlice()))))
	r.Inject(udpFrame(macA, bcastMAC, zero, bcast, 68, 67, bad.ToBytes()))
	waitDHCP(t, r, dhcpv4.MessageTypeNak)

	// An unknown client gets nothing.
	stranger := netswitch.MAC{0x52, 0x54, 0, 9, 9, 9}
	disc2, _ := dhcpv4.NewDiscovery(net.HardwareAddr(stranger[:]))
	r.Inject(udpFrame(stranger, bcastMAC, zero, bcast, 68, 67, disc2.ToBytes()))
	select {
	case f := <-r.frames:
		if m := dhcpFromFrame(f); m != nil {
			t.Fatalf("unknown client got DHCP %s", m.MessageType())
		}
	case <-time.After(300 * time.Millisecond):
	}

	// Leases change at run time.
	if err := g.Update(Update{Leases: map[netswitch.MAC]netip.Addr{stranger: ipB}}); err != nil {
		t.Fatal(err)
	}
	r.Inject(udpFrame(stranger, bcastMAC, zero, bcast, 68, 67, disc2.ToBytes()))
	if o := waitDHCP(t, r, dhcpv4.MessageTypeOffer); !o.YourIPAddr.Equal(net.IP(ipB.AsSlice())) {
		t.Fatalf("offered %v after update, want %v", o.YourIPAddr, ipB)
	}
}

func dnsQuery(t *testing.T, gs *guest, name string, qtype uint16) *dns.Msg {
	t.Helper()
	raddr := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(gwIP.As4()), Port: 53}
	c, err := gonet.DialUDP(gs.s, nil, &raddr, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(name), qtype)
	dc := &dns.Conn{Conn: c}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if err := dc.WriteMsg(m); err != nil {
		t.Fatal(err)
	}
	resp, err := dc.ReadMsg()
	if err != nil {
		t.Fatalf("dns query %s: %v", name, err)
	}
	return resp
}

func TestDNS(t *testing.T) {
	sw, g := setup(t, nil)
	gs := newGuest(t, sw, "vm-a", macA, ipA)

	for _, name := range []string{"db", "db.demo.internal", "DB.Demo.Internal"} {
		resp := dnsQuery(t, gs, name, dns.TypeA)
		if resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 1 {
			t.Fatalf("%s: rcode %d, %d answers", name, resp.Rcode, len(resp.Answer))
		}
		if a := resp.Answer[0].(*dns.A).A.String(); a != ipB.String() {
			t.Fatalf("%s resolved to %s, want %s", name, a, ipB)
		}
	}
	if resp := dnsQuery(t, gs, "db", dns.TypeAAAA); resp.Rcode != dns.RcodeSuccess || len(resp.Answer) != 0 {
		t.Fatalf("AAAA for a known name: rcode %d, %d answers", resp.Rcode, len(resp.Answer))
	}
	for _, name := range []string{"nope", "nope.demo.internal", "db.other.internal"} {
		if resp := dnsQuery(t, gs, name, dns.TypeA); resp.Rcode != dns.RcodeNameError {
			t.Fatalf("%s: rcode %d, want NXDOMAIN", name, resp.Rcode)
		}
	}
	// Without egress, outside names are refused, not forwarded.
	if resp := dnsQuery(t, gs, "example.com", dns.TypeA); resp.Rcode != dns.RcodeRefused {
		t.Fatalf("example.com without egress: rcode %d, want REFUSED", resp.Rcode)
	}
	// Hosts change at run time.
	if err := g.Update(Update{Hosts: map[string]netip.Addr{"cache": ipB}, Leases: map[netswitch.MAC]netip.Addr{}}); err != nil {
		t.Fatal(err)
	}
	if resp := dnsQuery(t, gs, "cache", dns.TypeA); len(resp.Answer) != 1 {
		t.Fatalf("new host not resolved")
	}
	if resp := dnsQuery(t, gs, "db", dns.TypeA); resp.Rcode != dns.RcodeNameError {
		t.Fatalf("removed host still resolves")
	}
}

// freePort finds a free loopback port (it may be taken again before use,
// which would fail the test loudly, not wrongly).
func freePort(t *testing.T, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func TestPublishedPorts(t *testing.T) {
	var wg sync.WaitGroup
	defer wg.Wait() // after the closes below
	tcpPort, udpPort := freePort(t, "tcp"), freePort(t, "udp")
	sw, g := setup(t, func(c *Config) {
		c.Publish = []Forward{
			{Protocol: "tcp", HostPort: tcpPort, GuestIP: ipA, GuestPort: 80},
			{Protocol: "udp", HostPort: udpPort, GuestIP: ipA, GuestPort: 53},
		}
	})
	gs := newGuest(t, sw, "vm-a", macA, ipA)

	// The guest serves TCP 80 (echo with a greeting) and UDP 53 (echo).
	ln, err := gonet.ListenTCP(gs.s, tcpip.FullAddress{NIC: 1, Port: 80}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			b, _ := io.ReadAll(c)
			fmt.Fprintf(c, "hello %s", b)
			c.Close()
		}
	}()
	uc, err := gonet.DialUDP(gs.s, &tcpip.FullAddress{NIC: 1, Port: 53}, nil, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		b := make([]byte, 1500)
		for {
			n, from, err := uc.ReadFrom(b)
			if err != nil {
				return
			}
			uc.WriteTo(append([]byte("echo "), b[:n]...), from)
		}
	}()

	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tcpPort))
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "host")
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(got) != "hello host" {
		t.Fatalf("published tcp port answered %q (%v)", got, err)
	}

	u, err := net.Dial("udp", fmt.Sprintf("127.0.0.1:%d", udpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer u.Close()
	u.SetDeadline(time.Now().Add(10 * time.Second))
	u.Write([]byte("ping"))
	b := make([]byte, 100)
	n, err := u.Read(b)
	if err != nil || string(b[:n]) != "echo ping" {
		t.Fatalf("published udp port answered %q (%v)", b[:n], err)
	}

	// The host dials the guest through the gateway (readiness probes).
	dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer dcancel()
	dc, err := g.DialGuest(dctx, "tcp", netip.AddrPortFrom(ipA, 80).String())
	if err != nil {
		t.Fatalf("dial guest: %v", err)
	}
	dc.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(dc, "probe")
	dc.(interface{ CloseWrite() error }).CloseWrite()
	got, err = io.ReadAll(dc)
	dc.Close()
	if err != nil || string(got) != "hello probe" {
		t.Fatalf("dial guest read %q (%v)", got, err)
	}
	if c, err := g.DialGuest(dctx, "tcp", "192.0.2.1:80"); err == nil {
		c.Close()
		t.Fatalf("dialed an address outside the network")
	}

	// Unpublishing closes the host listener.
	if err := g.Update(Update{Hosts: map[string]netip.Addr{}, Leases: map[netswitch.MAC]netip.Addr{}}); err != nil {
		t.Fatal(err)
	}
	if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tcpPort)); err == nil {
		c.Close()
		t.Fatalf("unpublished port still accepts")
	}
}

func TestEgressAndARP(t *testing.T) {
	// An "outside" server, on loopback; the gateway's dialer sends the
	// guest's connections to 198.51.100.7:80 (TEST-NET-2) there, so no
	// traffic leaves the machine.
	var wg sync.WaitGroup
	defer wg.Wait() // after outside.Close
	outside, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer outside.Close()
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := outside.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "from outside")
			c.Close()
		}
	}()
	var dialed []string
	var mu sync.Mutex
	sw, _ := setup(t, func(c *Config) {
		c.Egress = true
		c.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			mu.Lock()
			dialed = append(dialed, network+" "+addr)
			mu.Unlock()
			if addr != "198.51.100.7:80" {
				return nil, fmt.Errorf("test dialer: %s not allowed", addr)
			}
			var d net.Dialer
			return d.DialContext(ctx, "tcp", outside.Addr().String())
		}
	})
	gs := newGuest(t, sw, "vm-a", macA, ipA)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := gonet.DialContextTCP(ctx, gs.s, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4([4]byte{198, 51, 100, 7}), Port: 80}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatalf("egress connect: %v", err)
	}
	if got := readAll(c); got != "from outside" {
		t.Fatalf("egress got %q", got)
	}
	// A destination the host refuses is a reset for the guest.
	if c, err := gonet.DialContextTCP(ctx, gs.s, tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4([4]byte{198, 51, 100, 8}), Port: 80}, ipv4.ProtocolNumber); err == nil {
		c.Close()
		t.Fatalf("connection to a refused destination succeeded")
	}

	// The promiscuous gateway answers ARP only for its own address.
	r := newRawPort(t, sw, "raw")
	arpReq := func(target netip.Addr) []byte {
		return arpFrame(macB, bcastMAC, header.ARPRequest, macB, ipB, target)
	}
	arpReplyFrom := func(wait time.Duration) (netip.Addr, bool) {
		timeout := time.After(wait)
		for {
			select {
			case f := <-r.frames:
				if header.Ethernet(f).Type() != header.ARPProtocolNumber {
					continue
				}
				a := header.ARP(f[header.EthernetMinimumSize:])
				if a.Op() == header.ARPReply {
					return netip.AddrFrom4([4]byte(a.ProtocolAddressSender())), true
				}
			case <-timeout:
				return netip.Addr{}, false
			}
		}
	}
	r.Inject(arpReq(netip.MustParseAddr("10.77.0.99")))
	if a, ok := arpReplyFrom(300 * time.Millisecond); ok {
		t.Fatalf("gateway answered ARP for %v", a)
	}
	r.Inject(arpReq(gwIP))
	if a, ok := arpReplyFrom(5 * time.Second); !ok || a != gwIP {
		t.Fatalf("no ARP reply for the gateway (got %v %v)", a, ok)
	}
}

func TestNewValidates(t *testing.T) {
	for _, cfg := range []Config{
		{Network: "x", Subnet: netip.MustParsePrefix("fd00::/64"), GatewayIP: netip.MustParseAddr("fd00::1")},
		{Network: "x", Subnet: subnet, GatewayIP: netip.MustParseAddr("10.9.9.9")},
		{Network: "x", Subnet: subnet, GatewayIP: gwIP, Leases: map[netswitch.MAC]netip.Addr{macA: netip.MustParseAddr("10.9.9.9")}},
	} {
		if g, err := New(cfg); err == nil {
			g.Close()
			t.Errorf("config %+v accepted", cfg)
		}
	}
}
