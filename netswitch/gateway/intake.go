package gateway

import (
	"encoding/binary"
	"net"

	"gvisor.dev/gvisor/pkg/tcpip/checksum"
	"gvisor.dev/gvisor/pkg/tcpip/header"

	"github.com/stackvm/stack/netswitch"
)

// senders is what the intake believes about who holds which address: the
// leases, both ways.
type senders struct {
	byMAC map[netswitch.MAC][4]byte
	byIP  map[[4]byte]netswitch.MAC
}

// claims reports whether MAC src may send from address a: its lease, or an
// address leased to nobody when it has no lease itself, and never the
// gateway's address.
func (s *senders) claims(g *Gateway, src netswitch.MAC, a [4]byte) bool {
	if lease, ok := s.byMAC[src]; ok {
		return a == lease
	}
	_, taken := s.byIP[a]
	return !taken && a != g.gw4
}

// spoofed reports whether a frame's sender claims an address its source MAC
// does not hold. The gateway trusts a frame's source MAC (the switch pins
// each VM's MAC to its port) and believes the leases about which address
// goes with it (see claims), so:
//
//   - an ARP packet must name its source MAC as sender and an address the
//     MAC may claim (or 0.0.0.0, a probe) as sender address;
//   - an IPv4 packet must come from an address its MAC may claim, or from
//     0.0.0.0 when it is a DHCP message to the gateway (a client without
//     an address yet);
//   - a DHCP message to the gateway must carry its source MAC as client
//     hardware address;
//   - a packet to the gateway's own address or to the broadcast address
//     must not be a fragment, so that the checks above see whole messages.
//
// With these checks a guest with a lease cannot send as another: the source
// address of what reaches the stack names one VM, which the per-VM limits
// (egress flows, DNS) depend on.
func (g *Gateway) spoofed(f []byte) bool {
	src := netswitch.MAC(f[6:12])
	who := g.senders.Load()
	eth := header.Ethernet(f)
	switch eth.Type() {
	case header.ARPProtocolNumber:
		a := header.ARP(f[header.EthernetMinimumSize:])
		if !a.IsValid() {
			return true
		}
		if netswitch.MAC(a.HardwareAddressSender()) != src {
			return true
		}
		spa := [4]byte(a.ProtocolAddressSender())
		return spa != [4]byte{} && !who.claims(g, src, spa)
	case header.IPv4ProtocolNumber:
		ip := header.IPv4(f[header.EthernetMinimumSize:])
		if !ip.IsValid(len(ip)) {
			return true
		}
		dst := [4]byte(ip.DestinationAddressSlice())
		var dhcp []byte
		if dst == g.gw4 || dst == [4]byte{255, 255, 255, 255} {
			if ip.More() || ip.FragmentOffset() != 0 {
				return true
			}
			dhcp = isDHCPRequest(ip)
		}
		if dhcp != nil && (len(dhcp) < dhcpChaddrEnd || netswitch.MAC(dhcp[dhcpChaddr:dhcpChaddrEnd]) != src) {
			return true
		}
		sip := [4]byte(ip.SourceAddressSlice())
		if sip == [4]byte{} {
			return dhcp == nil
		}
		return !who.claims(g, src, sip)
	}
	// Nothing else reaches a service: the stack speaks IPv4 and ARP only.
	return false
}

// The client hardware address in a BOOTP/DHCP message.
const (
	dhcpChaddr    = 28
	dhcpChaddrEnd = dhcpChaddr + 6
)

// isDHCPRequest returns the UDP payload of an unfragmented packet to the
// DHCP server port, or nil.
func isDHCPRequest(ip header.IPv4) []byte {
	if ip.TransportProtocol() != header.UDPProtocolNumber || ip.More() || ip.FragmentOffset() != 0 {
		return nil
	}
	p := ip.Payload()
	if len(p) < header.UDPMinimumSize || binary.BigEndian.Uint16(p[2:4]) != 67 {
		return nil
	}
	return p[header.UDPMinimumSize:]
}

// takeService takes a UDP request for the gateway's DNS or DHCP out of the
// frame into its fair queue, and reports whether it did. Handing it to the
// stack instead would put it in the service socket's receive buffer, which
// all guests share: a guest sending faster than the service answers would
// fill it, and the others' requests would be dropped there, before the
// fair queue could give them their turn. spoofed has checked the frame.
func (g *Gateway) takeService(f []byte) bool {
	if header.Ethernet(f).Type() != header.IPv4ProtocolNumber {
		return false
	}
	ip := header.IPv4(f[header.EthernetMinimumSize:])
	if ip.TransportProtocol() != header.UDPProtocolNumber || ip.More() || ip.FragmentOffset() != 0 {
		return false
	}
	dst := [4]byte(ip.DestinationAddressSlice())
	u := header.UDP(ip.Payload())
	if len(u) < header.UDPMinimumSize || int(u.Length()) != len(u) {
		return false // the stack counts and drops it
	}
	dns := g.cfg.DNS && dst == g.gw4 && u.DestinationPort() == 53
	dhcp := g.cfg.DHCP && (dst == g.gw4 || dst == [4]byte{255, 255, 255, 255}) && u.DestinationPort() == 67
	if !dns && !dhcp {
		return false
	}
	if u.Checksum() != 0 && !u.IsChecksumValid(ip.SourceAddress(), ip.DestinationAddress(), checksum.Checksum(u.Payload(), 0)) {
		return true // corrupt: dropped, as the stack would
	}
	if dns {
		src := [4]byte(ip.SourceAddressSlice()) // a copy: the frame is reused
		from := &net.UDPAddr{IP: net.IPv4(src[0], src[1], src[2], src[3]), Port: int(u.SourcePort())}
		g.queueDNS(u.Payload(), from)
	} else {
		g.queueDHCP(u.Payload())
	}
	return true
}
