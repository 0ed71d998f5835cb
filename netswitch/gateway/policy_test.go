package gateway

import (
	"context"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/stackvm/stack/netswitch"
)

// tcpSynFrame builds Ethernet/IPv4/TCP SYN.
func tcpSynFrame(src, dst netswitch.MAC, sip, dip netip.Addr, sport, dport uint16) []byte {
	f := make([]byte, header.EthernetMinimumSize+header.IPv4MinimumSize+header.TCPMinimumSize)
	header.Ethernet(f).Encode(&header.EthernetFields{SrcAddr: tcpip.LinkAddress(src[:]), DstAddr: tcpip.LinkAddress(dst[:]), Type: header.IPv4ProtocolNumber})
	ip := header.IPv4(f[header.EthernetMinimumSize:])
	s, d := tcpip.AddrFrom4(sip.As4()), tcpip.AddrFrom4(dip.As4())
	ip.Encode(&header.IPv4Fields{TotalLength: uint16(len(f) - header.EthernetMinimumSize), TTL: 64, Protocol: uint8(header.TCPProtocolNumber), SrcAddr: s, DstAddr: d})
	ip.SetChecksum(^ip.CalculateChecksum())
	tc := header.TCP(ip[header.IPv4MinimumSize:])
	tc.Encode(&header.TCPFields{SrcPort: sport, DstPort: dport, SeqNum: 1, DataOffset: header.TCPMinimumSize, Flags: header.TCPFlagSyn, WindowSize: 65535})
	xsum := header.PseudoHeaderChecksum(header.TCPProtocolNumber, s, d, uint16(len(tc)))
	tc.SetChecksum(^tc.CalculateChecksum(xsum))
	return f
}

// tcpAnswer waits for the gateway's answer to a SYN from port sport: true
// for SYN-ACK, false for RST.
func tcpAnswer(t *testing.T, r *rawPort, sport uint16) bool {
	t.Helper()
	timeout := time.After(15 * time.Second)
	for {
		select {
		case f := <-r.frames:
			ip := header.IPv4(f[header.EthernetMinimumSize:])
			if header.Ethernet(f).Type() != header.IPv4ProtocolNumber || ip.TransportProtocol() != header.TCPProtocolNumber {
				continue
			}
			tc := header.TCP(ip.Payload())
			if tc.DestinationPort() != sport {
				continue
			}
			return tc.Flags().Contains(header.TCPFlagSyn | header.TCPFlagAck)
		case <-timeout:
			t.Fatalf("no answer to the SYN from port %d", sport)
			return false
		}
	}
}

// policyDialer is an egress Dial that connects every allowed flow to a
// server on loopback and records the destinations asked for.
type policyDialer struct {
	tcp net.Listener
	udp net.PacketConn
	mu  sync.Mutex
	log []string
}

func newPolicyDialer(t *testing.T) *policyDialer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	d := &policyDialer{tcp: ln, udp: pc}
	t.Cleanup(func() { pc.Close() })
	serveConns(t, ln, func(net.Conn) {})
	return d
}

func (d *policyDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	d.mu.Lock()
	d.log = append(d.log, network+" "+addr)
	d.mu.Unlock()
	to := d.tcp.Addr().String()
	if network == "udp" {
		to = d.udp.LocalAddr().String()
	}
	var nd net.Dialer
	return nd.DialContext(ctx, network, to)
}

func (d *policyDialer) dialled() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.log)
}

// hostAddr stands for a public address of the host's own.
var hostAddr = netip.MustParseAddr("203.0.113.5")

// TestEgressPolicy drives each kind of destination through the gateway's
// egress, by TCP and by UDP: refused ones never reach the host's dialer
// and the guest gets a reset; the allow-list opens the ones it names.
func TestEgressPolicy(t *testing.T) {
	allowed := netip.MustParsePrefix("10.1.2.0/24")
	d := newPolicyDialer(t)
	sw, g := setup(t, func(c *Config) {
		c.Egress = true
		c.Dial = d.dial
		c.EgressAllow = []netip.Prefix{allowed, netip.PrefixFrom(hostAddr, 32), netip.MustParsePrefix("127.0.0.0/8")}
		c.hostAddrs = func() ([]netip.Addr, error) {
			return []netip.Addr{netip.MustParseAddr("127.0.0.1"), hostAddr, netip.MustParseAddr("203.0.113.6")}, nil
		}
	})
	r := newRawPort(t, sw, "vm-a")
	sport := uint16(20000)
	// probe sends a SYN and a datagram to dst and reports whether egress
	// let them through, checking that the dialer saw them iff so. The
	// netstack drops packets to the loopback network before egress sees
	// them ("martians"): no answer to wait for.
	probe := func(dst netip.Addr) bool {
		t.Helper()
		before := len(d.dialled())
		sport++
		r.Inject(tcpSynFrame(macA, g.MAC(), ipA, dst, sport, 80))
		ok := false
		if !dst.IsLoopback() {
			ok = tcpAnswer(t, r, sport)
		}
		// A datagram to dst, then one to an allowed sentinel: the gateway
		// takes them in order, so once the sentinel is dialled the
		// first would have been too.
		sentinel := netip.MustParseAddr("198.51.100.9")
		r.Inject(udpFrame(macA, g.MAC(), ipA, dst, sport, 53, []byte("x")))
		r.Inject(udpFrame(macA, g.MAC(), ipA, sentinel, sport, 53, []byte("x")))
		want := []string{"udp " + sentinel.String() + ":53"}
		if ok {
			want = []string{"tcp " + netip.AddrPortFrom(dst, 80).String(), "udp " + netip.AddrPortFrom(dst, 53).String(), want[0]}
		}
		deadline := time.Now().Add(10 * time.Second)
		for len(d.dialled()) < before+len(want) && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if got := d.dialled()[before:]; !slices.Equal(got, want) {
			t.Fatalf("%v: dialled %v, want %v", dst, got, want)
		}
		return ok
	}
	for _, c := range []struct {
		dst  string
		what string
	}{
		{"203.0.113.6", "a host address"},
		{"10.9.9.9", "RFC 1918 (10/8)"},
		{"172.16.5.4", "RFC 1918 (172.16/12)"},
		{"192.168.1.1", "RFC 1918 (192.168/16)"},
		{"100.64.0.1", "CGNAT"},
		{"100.100.100.200", "Alibaba Cloud metadata"},
		{"168.63.129.16", "Azure wire server"},
		{"169.254.169.254", "link-local metadata"},
		{"192.0.0.192", "IETF range (Oracle metadata)"},
		{"198.18.0.1", "benchmarking range"},
		{"240.0.0.1", "reserved range"},
		{"127.0.0.1", "loopback, though allowed"},
		{"0.1.2.3", "this network"},
		{"10.77.0.11", "the network itself"},
	} {
		if probe(netip.MustParseAddr(c.dst)) {
			t.Errorf("%s (%s) reached", c.dst, c.what)
		}
	}
	for _, c := range []struct {
		dst  string
		what string
	}{
		{"198.51.100.7", "an outside address"},
		{"10.1.2.3", "allowed private"},
		{hostAddr.String(), "allowed host address"},
	} {
		if !probe(netip.MustParseAddr(c.dst)) {
			t.Errorf("%s (%s) refused", c.dst, c.what)
		}
	}
	if n := g.Stats().EgressRefused; n != 2*13 {
		t.Errorf("%d refusals counted, want %d (all but the martians)", n, 2*13)
	}
}

// TestEgressRefusesRealHostAddresses: with the host's real interface
// addresses, each of them is refused.
func TestEgressRefusesRealHostAddresses(t *testing.T) {
	addrs, err := interfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	p, err := newEgressPolicy(subnet, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, a := range addrs {
		if !a.Is4() {
			continue
		}
		n++
		if why := p.refuse(a); why == "" {
			t.Errorf("host address %v allowed", a)
		}
	}
	if n == 0 {
		t.Fatalf("the host has no IPv4 address to check")
	}
	// A public address the host does not have is allowed.
	if why := p.refuse(netip.MustParseAddr("198.51.100.7")); why != "" {
		t.Fatalf("198.51.100.7 refused: %s", why)
	}
	if _, err := newEgressPolicy(subnet, []netip.Prefix{netip.MustParsePrefix("fd00::/8")}, nil); err == nil {
		t.Fatalf("an IPv6 allow prefix was accepted")
	}
}
