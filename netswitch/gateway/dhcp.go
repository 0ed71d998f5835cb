package gateway

import (
	"errors"
	"fmt"
	"net"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
	"gvisor.dev/gvisor/pkg/tcpip/transport/udp"
	"gvisor.dev/gvisor/pkg/waiter"

	"github.com/stackvm/stack/netswitch"
)

// startDHCP serves DHCP on UDP port 67 of the gateway. Clients get the
// address the planner assigned to their MAC (static leases only); unknown
// clients get no answer, so that two servers on one segment cannot fight
// over them and an unexpected guest stays visible as unconfigured.
//
// Messages wait in a fair queue keyed by client MAC (which the intake has
// checked against the frame's source), so that one client's flood does not
// keep another's messages from being answered. The intake puts them there
// (takeService); the socket is for the replies, and for the odd message the
// intake leaves to the stack (one to a subnet broadcast address).
func (g *Gateway) startDHCP() error {
	conn, err := g.listenUDP(tcpip.FullAddress{NIC: nicID, Port: 67}, true)
	if err != nil {
		return fmt.Errorf("open dhcp socket: %w", err)
	}
	g.addCloser(conn.Close)
	g.wg.Add(2)
	go func() {
		defer g.wg.Done()
		buf := make([]byte, 1500)
		for {
			n, _, err := conn.ReadFrom(buf)
			if err != nil {
				return
			}
			g.queueDHCP(buf[:n])
		}
	}()
	go func() {
		defer g.wg.Done()
		for {
			_, msg, ok := g.dhcpQueue.pop(g.ctx.Done())
			if !ok {
				return
			}
			reply, dst, err := g.dhcpReply(msg)
			if err != nil {
				g.log.Debug("dhcp request ignored", "err", err)
				continue
			}
			if _, err := conn.WriteTo(reply.ToBytes(), dst); err != nil && g.ctx.Err() == nil {
				g.log.Warn("send dhcp reply", "err", err)
			}
		}
	}()
	return nil
}

// queueDHCP queues a copy of a DHCP message for its turn.
func (g *Gateway) queueDHCP(msg []byte) {
	if len(msg) < dhcpChaddrEnd || !g.dhcpQueue.push(netswitch.MAC(msg[dhcpChaddr:dhcpChaddrEnd]), append([]byte(nil), msg...)) {
		g.stats.serviceDrops.Add(1)
	}
}

// serviceRcvBuf is the receive buffer of the DNS and DHCP sockets, which
// get what the intake does not take itself.
const serviceRcvBuf = 1 << 20

// listenUDP opens a UDP socket of the gateway's stack bound at addr.
func (g *Gateway) listenUDP(addr tcpip.FullAddress, broadcast bool) (*gonet.UDPConn, error) {
	var wq waiter.Queue
	ep, terr := g.s.NewEndpoint(udp.ProtocolNumber, ipv4.ProtocolNumber, &wq)
	if terr != nil {
		return nil, fmt.Errorf("create socket: %s", terr)
	}
	ep.SocketOptions().SetBroadcast(broadcast)
	ep.SocketOptions().SetReceiveBufferSize(serviceRcvBuf, true)
	if terr := ep.Bind(addr); terr != nil {
		ep.Close()
		return nil, fmt.Errorf("bind socket: %s", terr)
	}
	return gonet.NewUDPConn(&wq, ep), nil
}

var errNoLease = errors.New("no lease for client")

// dhcpReply answers one DHCP message: OFFER for DISCOVER, ACK or NAK for
// REQUEST, ACK without an address for INFORM. It returns where to send it.
func (g *Gateway) dhcpReply(b []byte) (*dhcpv4.DHCPv4, *net.UDPAddr, error) {
	req, err := dhcpv4.FromBytes(b)
	if err != nil {
		return nil, nil, fmt.Errorf("parse dhcp message: %w", err)
	}
	if req.OpCode != dhcpv4.OpcodeBootRequest || len(req.ClientHWAddr) != 6 {
		return nil, nil, fmt.Errorf("parse dhcp message: not an ethernet boot request")
	}
	mac := netswitch.MAC(req.ClientHWAddr)
	ip, host, ok := g.lease(mac)
	if !ok {
		return nil, nil, fmt.Errorf("dhcp from %s: %w", mac, errNoLease)
	}
	gw := net.IP(g.gw4[:])
	mods := []dhcpv4.Modifier{
		dhcpv4.WithServerIP(gw),
		dhcpv4.WithOption(dhcpv4.OptServerIdentifier(gw)),
		dhcpv4.WithNetmask(net.CIDRMask(g.cfg.Subnet.Bits(), 32)),
		dhcpv4.WithRouter(gw),
		dhcpv4.WithLeaseTime(uint32(g.cfg.LeaseTime.Seconds())),
		dhcpv4.WithOption(dhcpv4.OptIPAddressLeaseTime(g.cfg.LeaseTime)),
		dhcpv4.WithGeneric(dhcpv4.OptionInterfaceMTU, []byte{byte(g.cfg.MTU >> 8), byte(g.cfg.MTU)}),
	}
	if g.cfg.DNS {
		mods = append(mods,
			dhcpv4.WithDNS(gw),
			dhcpv4.WithOption(dhcpv4.OptDomainName(g.cfg.Namespace+".internal")))
	}
	if host != "" {
		mods = append(mods, dhcpv4.WithOption(dhcpv4.OptHostName(host)))
	}
	yours := net.IP(ip.AsSlice())
	switch req.MessageType() {
	case dhcpv4.MessageTypeDiscover:
		mods = append(mods, dhcpv4.WithMessageType(dhcpv4.MessageTypeOffer), dhcpv4.WithYourIP(yours))
	case dhcpv4.MessageTypeRequest:
		want := req.RequestedIPAddress()
		if want == nil || want.IsUnspecified() {
			want = req.ClientIPAddr
		}
		if sid := req.ServerIdentifier(); sid != nil && !sid.Equal(gw) {
			return nil, nil, fmt.Errorf("dhcp request from %s: for another server %v", mac, sid)
		}
		if !want.Equal(yours) {
			mods = []dhcpv4.Modifier{
				dhcpv4.WithServerIP(gw),
				dhcpv4.WithOption(dhcpv4.OptServerIdentifier(gw)),
				dhcpv4.WithMessageType(dhcpv4.MessageTypeNak),
			}
		} else {
			mods = append(mods, dhcpv4.WithMessageType(dhcpv4.MessageTypeAck), dhcpv4.WithYourIP(yours))
		}
	case dhcpv4.MessageTypeInform:
		mods = append(mods, dhcpv4.WithMessageType(dhcpv4.MessageTypeAck))
	default:
		return nil, nil, fmt.Errorf("dhcp %s from %s: nothing to answer", req.MessageType(), mac)
	}
	reply, err := dhcpv4.NewReplyFromRequest(req, mods...)
	if err != nil {
		return nil, nil, fmt.Errorf("build dhcp reply: %w", err)
	}
	// Where to send it (RFC 2131, 4.1): a client with an address
	// (renewing, informing) is answered at it; a NAK, and a reply to a
	// client that asked for broadcast, is broadcast; any other reply goes
	// to the leased address, which the gateway's static neighbour entry
	// maps to the client's MAC (clients take it on a raw socket before
	// they have the address). Unicast keeps one guest's DHCP traffic,
	// a flood included, from reaching every other guest.
	dst := &net.UDPAddr{IP: net.IPv4bcast, Port: 68}
	switch {
	case reply.MessageType() == dhcpv4.MessageTypeNak:
	case req.ClientIPAddr != nil && !req.ClientIPAddr.IsUnspecified():
		dst.IP = req.ClientIPAddr
	case !req.IsBroadcast() && !reply.YourIPAddr.IsUnspecified():
		dst.IP = reply.YourIPAddr
	}
	return reply, dst, nil
}
