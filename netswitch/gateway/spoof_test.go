package gateway

import (
	"context"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/miekg/dns"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"

	"github.com/stackvm/stack/netswitch"
)

var macEvil = netswitch.MAC{0x52, 0x54, 0, 0, 0, 0xee}

// arpFrame builds an ARP packet from the Ethernet source src.
func arpFrame(src, dst netswitch.MAC, op header.ARPOp, sha netswitch.MAC, spa, tpa netip.Addr) []byte {
	f := make([]byte, header.EthernetMinimumSize+header.ARPSize)
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(src[:]), DstAddr: tcpip.LinkAddress(dst[:]), Type: header.ARPProtocolNumber})
	a := header.ARP(f[header.EthernetMinimumSize:])
	a.SetIPv4OverEthernet()
	a.SetOp(op)
	copy(a.HardwareAddressSender(), sha[:])
	s, d := spa.As4(), tpa.As4()
	copy(a.ProtocolAddressSender(), s[:])
	copy(a.ProtocolAddressTarget(), d[:])
	return f
}

// serveHello makes a guest answer TCP port 80 with "hello".
func serveHello(t *testing.T, gs *guest) {
	t.Helper()
	ln, err := gonet.ListenTCP(gs.s, tcpip.FullAddress{NIC: 1, Port: 80}, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	serveConns(t, ln, func(c net.Conn) { io.WriteString(c, "hello") })
}

// serveConns accepts on ln until the test ends, handing each connection to
// handle and closing it after.
func serveConns(t *testing.T, ln net.Listener, handle func(net.Conn)) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			handle(c)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
}

// TestGatewayMACIsPinned: a guest that sends from the gateway's MAC does
// not draw the other guests' gateway traffic to itself.
func TestGatewayMACIsPinned(t *testing.T) {
	sw, g := setup(t, nil)
	gs := newGuest(t, sw, "vm-b", macB, ipB)
	evil := newRawPort(t, sw, "evil") // unpinned, like a TAP: it may learn
	gm := g.MAC()
	// The guest knows the gateway's MAC (and the gateway has answered it,
	// so the switch has seen the gateway send) before the spoofed frame.
	if resp := dnsQuery(t, gs, "db", dns.TypeA); len(resp.Answer) != 1 {
		t.Fatalf("dns answer %v", resp)
	}
	evil.Inject(udpFrame(gm, bcastMAC, gwIP, netip.MustParseAddr("10.77.0.255"), 53, 53, []byte("mine now")))
	if st, _ := sw.PortStats("evil"); st.SpoofDrops != 1 {
		t.Fatalf("the frame from the gateway's MAC was not dropped as spoofed: %+v", st)
	}
	for i := 0; i < 3; i++ {
		if resp := dnsQuery(t, gs, "db", dns.TypeA); len(resp.Answer) != 1 {
			t.Fatalf("dns answer %v", resp)
		}
	}
	for len(evil.frames) > 0 {
		f := <-evil.frames
		if netswitch.MAC(f[0:6]) == gm {
			t.Fatalf("the spoofer got a frame for the gateway")
		}
	}
}

// TestForgedARPDoesNotRedirectGateway: ARP claiming a guest's address for
// another MAC changes nothing in the gateway; its connections to the guest
// still reach the guest.
func TestForgedARPDoesNotRedirectGateway(t *testing.T) {
	sw, g := setup(t, nil)
	gs := newGuest(t, sw, "vm-a", macA, ipA)
	serveHello(t, gs)
	evil := newRawPort(t, sw, "evil")
	// An unleased MAC and a leased one (vm-b's) each claim vm-a's
	// address, by request and by reply.
	for _, from := range []netswitch.MAC{macEvil, macB} {
		evil.Inject(arpFrame(from, bcastMAC, header.ARPRequest, from, ipA, gwIP))
		evil.Inject(arpFrame(from, g.MAC(), header.ARPReply, from, ipA, gwIP))
	}
	waitCount(t, "forged ARP packets", func() uint64 { return g.Stats().Spoofed }, 4)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := g.DialGuest(ctx, "tcp", netip.AddrPortFrom(ipA, 80).String())
	if err != nil {
		t.Fatalf("dial vm-a after forged ARP: %v", err)
	}
	if got := readAll(c); got != "hello" {
		t.Fatalf("vm-a answered %q", got)
	}
}

// readAll reads c to its end (or for 10 s at most) and closes it.
func readAll(c net.Conn) string {
	c.SetDeadline(time.Now().Add(10 * time.Second))
	got, _ := io.ReadAll(c)
	c.Close()
	return string(got)
}

// TestStaticNeighbors: the gateway's neighbour table holds one static entry
// per lease, follows updates, and ARP does not change it.
func TestStaticNeighbors(t *testing.T) {
	sw, g := setup(t, nil)
	static := func() map[netip.Addr]netswitch.MAC {
		t.Helper()
		ns, err := g.s.Neighbors(nicID, ipv4.ProtocolNumber)
		if err != nil {
			t.Fatalf("neighbours: %s", err)
		}
		m := map[netip.Addr]netswitch.MAC{}
		for _, n := range ns {
			if n.State.String() == "Static" {
				m[netip.AddrFrom4(n.Addr.As4())] = netswitch.MAC([]byte(n.LinkAddr))
			}
		}
		return m
	}
	want := func(w map[netip.Addr]netswitch.MAC) {
		t.Helper()
		got := static()
		if len(got) != len(w) {
			t.Fatalf("static neighbours %v, want %v", got, w)
		}
		for a, m := range w {
			if got[a] != m {
				t.Fatalf("static neighbours %v, want %v", got, w)
			}
		}
	}
	want(map[netip.Addr]netswitch.MAC{ipA: macA, ipB: macB})
	// A lease's MAC changes (a VM replaced), one lease goes.
	if err := g.Update(Update{Leases: map[netswitch.MAC]netip.Addr{macEvil: ipA}}); err != nil {
		t.Fatal(err)
	}
	want(map[netip.Addr]netswitch.MAC{ipA: macEvil})
	// ARP from the old holder, which now claims an address leased to
	// another MAC, is dropped as spoofed and changes nothing.
	r := newRawPort(t, sw, "old")
	r.Inject(arpFrame(macA, bcastMAC, header.ARPRequest, macA, ipA, gwIP))
	waitCount(t, "spoofed ARP packets", func() uint64 { return g.Stats().Spoofed }, 1)
	want(map[netip.Addr]netswitch.MAC{ipA: macEvil})
	// One address for two MACs is refused.
	if err := g.Update(Update{Leases: map[netswitch.MAC]netip.Addr{macA: ipA, macB: ipA}}); err == nil {
		t.Fatalf("an address leased twice was accepted")
	}
}

func discover(t *testing.T, m netswitch.MAC) []byte {
	t.Helper()
	d, err := dhcpv4.NewDiscovery(net.HardwareAddr(m[:]))
	if err != nil {
		t.Fatal(err)
	}
	return d.ToBytes()
}

// TestSpoofedSourcesDropped: a guest cannot send to the gateway from another
// guest's address, nor ask DHCP for another guest's MAC.
func TestSpoofedSourcesDropped(t *testing.T) {
	sw, g := setup(t, nil)
	r := newRawPort(t, sw, "vm-b")
	gm := g.MAC()
	q := new(dns.Msg)
	q.SetQuestion("db.", dns.TypeA)
	b, _ := q.Pack()
	zero, bcast := netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255})
	for _, f := range [][]byte{
		udpFrame(macB, gm, ipA, gwIP, 5353, 53, b),                       // vm-a's address from vm-b's MAC
		udpFrame(macB, gm, gwIP, gwIP, 5353, 53, b),                      // the gateway's address
		udpFrame(macB, gm, zero, gwIP, 5353, 53, b),                      // no address, not DHCP
		udpFrame(macEvil, gm, ipA, gwIP, 5353, 53, b),                    // a leased address from an unleased MAC
		udpFrame(macB, bcastMAC, zero, bcast, 68, 67, discover(t, macA)), // DHCP for another MAC
	} {
		r.Inject(f)
	}
	waitCount(t, "spoofed frames", func() uint64 { return g.Stats().Spoofed }, 5)
	// Its own address works.
	r.Inject(udpFrame(macB, gm, ipB, gwIP, 5353, 53, b))
	deadline := time.After(5 * time.Second)
	for {
		select {
		case f := <-r.frames:
			ip := header.IPv4(f[header.EthernetMinimumSize:])
			if header.Ethernet(f).Type() == header.IPv4ProtocolNumber && ip.TransportProtocol() == header.UDPProtocolNumber {
				if netip.AddrFrom4([4]byte(ip.DestinationAddressSlice())) != ipB {
					t.Fatalf("answer sent to %v", ip.DestinationAddressSlice())
				}
				return
			}
		case <-deadline:
			t.Fatalf("no dns answer to vm-b's own address")
		}
	}
}

// waitCount waits until count reaches want (the gateway takes frames on a
// goroutine of its own; the deadline only detects failure), then checks
// that it is exactly want.
func waitCount(t *testing.T, what string, count func() uint64, want uint64) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for count() < want && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if got := count(); got != want {
		t.Fatalf("%d %s counted, want %d", got, what, want)
	}
}

// TestGatewayAddressIsReserved: a guest announcing the gateway's address
// for its own MAC reaches nobody, so the other guests keep sending their
// gateway traffic to the gateway.
func TestGatewayAddressIsReserved(t *testing.T) {
	sw, _ := setup(t, nil)
	evil := newRawPort(t, sw, "evil")
	other := newRawPort(t, sw, "vm-b")
	evil.Inject(arpFrame(macEvil, bcastMAC, header.ARPReply, macEvil, gwIP, gwIP))
	if st, _ := sw.PortStats("evil"); st.SpoofDrops != 1 {
		t.Fatalf("the ARP claiming the gateway's address was not dropped: %+v", st)
	}
	// The switch forwards to internal ports synchronously: had the frame
	// gone out, it would be in other.frames now.
	if n := len(other.frames); n != 0 {
		t.Fatalf("another guest got %d frames", n)
	}
}

// TestDHCPRepliesUnicast: replies go to the client's MAC and leased
// address unless it asks for broadcast (RFC 2131, 4.1), so one guest's DHCP
// traffic does not reach every other guest.
func TestDHCPRepliesUnicast(t *testing.T) {
	sw, _ := setup(t, nil)
	r := newRawPort(t, sw, "vm-a")
	zero, bcast := netip.IPv4Unspecified(), netip.AddrFrom4([4]byte{255, 255, 255, 255})
	offerFrame := func(disc *dhcpv4.DHCPv4) []byte {
		t.Helper()
		r.Inject(udpFrame(macA, bcastMAC, zero, bcast, 68, 67, disc.ToBytes()))
		timeout := time.After(5 * time.Second)
		for {
			select {
			case f := <-r.frames:
				if m := dhcpFromFrame(f); m != nil && m.TransactionID == disc.TransactionID {
					return f
				}
			case <-timeout:
				t.Fatalf("no offer")
				return nil
			}
		}
	}
	disc, err := dhcpv4.NewDiscovery(net.HardwareAddr(macA[:]))
	if err != nil {
		t.Fatal(err)
	}
	disc.SetUnicast()
	f := offerFrame(disc)
	ip := header.IPv4(f[header.EthernetMinimumSize:])
	if netswitch.MAC(f[0:6]) != macA || netip.AddrFrom4([4]byte(ip.DestinationAddressSlice())) != ipA {
		t.Fatalf("offer sent to %s, %v; want %s, %v", netswitch.MAC(f[0:6]), ip.DestinationAddress(), macA, ipA)
	}
	disc.SetBroadcast()
	if f := offerFrame(disc); netswitch.MAC(f[0:6]) != bcastMAC {
		t.Fatalf("offer to a client asking for broadcast sent to %s", netswitch.MAC(f[0:6]))
	}
}
