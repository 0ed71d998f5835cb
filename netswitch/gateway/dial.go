package gateway

import (
	"context"
	"fmt"
	"net"
	"net/netip"

	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// DialGuest opens a TCP connection from the gateway to a guest on its
// network (addr is "ip:port"): readiness probes run through it, so they need
// no route from the host into the network.
func (g *Gateway) DialGuest(ctx context.Context, network, addr string) (net.Conn, error) {
	if network != "tcp" && network != "tcp4" {
		return nil, fmt.Errorf("dial %s %s: only tcp is supported", network, addr)
	}
	ap, err := netip.ParseAddrPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	if !g.cfg.Subnet.Contains(ap.Addr()) {
		return nil, fmt.Errorf("dial %s: not in network %s (%s)", addr, g.cfg.Network, g.cfg.Subnet)
	}
	return gonet.DialContextTCP(ctx, g.s, fullAddr(ap.Addr(), int(ap.Port())), ipv4.ProtocolNumber)
}
