package gateway

import (
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"
)

// Why egress refuses a destination. The guest sees a TCP reset or an ICMP
// port unreachable, as from a host that refuses.
const (
	refuseOwnNetwork = "own network"  // other VMs are reached over L2
	refuseThisHost   = "this host"    // 127/8 and 0/8, which Linux takes for the host itself
	refuseNotUnicast = "not unicast"  // multicast, broadcast
	refuseHost       = "host address" // the host's own addresses: every service bound to 0.0.0.0
	refuseLinkLocal  = "link-local"   // 169.254/16, with the usual metadata endpoint
	refusePrivate    = "private"      // RFC 1918
	refuseCGNAT      = "shared"       // 100.64/10, with Alibaba's metadata endpoint
	refuseMetadata   = "metadata"     // cloud metadata endpoints outside the ranges above
	refuseReserved   = "reserved"     // IANA special-purpose ranges not routed on the internet
)

// refusedRanges are the ranges refused unless the allow-list names them.
var refusedRanges = []struct {
	prefix netip.Prefix
	why    string
}{
	{netip.MustParsePrefix("169.254.0.0/16"), refuseLinkLocal},
	{netip.MustParsePrefix("10.0.0.0/8"), refusePrivate},
	{netip.MustParsePrefix("172.16.0.0/12"), refusePrivate},
	{netip.MustParsePrefix("192.168.0.0/16"), refusePrivate},
	{netip.MustParsePrefix("100.64.0.0/10"), refuseCGNAT},
	{netip.MustParsePrefix("168.63.129.16/32"), refuseMetadata}, // Azure's wire server
	{netip.MustParsePrefix("192.0.0.0/24"), refuseReserved},     // IETF assignments, with Oracle's 192.0.0.192
	{netip.MustParsePrefix("198.18.0.0/15"), refuseReserved},    // benchmarking, used as private space
	{netip.MustParsePrefix("240.0.0.0/4"), refuseReserved},      // reserved, used as private space
}

// hostAddrsMaxAge is how old the host's address list may be when a new
// flow is checked against it; it is read again, at most this often, on a
// new flow.
const hostAddrsMaxAge = time.Second

// egressPolicy decides which destinations egress may open flows to: the
// internet, not the host, its networks or the cloud's metadata services,
// unless Config.EgressAllow names them.
type egressPolicy struct {
	subnet    netip.Prefix
	allow     []netip.Prefix
	hostAddrs func() ([]netip.Addr, error)

	mu      sync.Mutex
	host    map[netip.Addr]bool
	readAt  time.Time
	readErr error
}

func newEgressPolicy(subnet netip.Prefix, allow []netip.Prefix, hostAddrs func() ([]netip.Addr, error)) (*egressPolicy, error) {
	p := &egressPolicy{subnet: subnet, hostAddrs: hostAddrs}
	if p.hostAddrs == nil {
		p.hostAddrs = interfaceAddrs
	}
	for _, a := range allow {
		if !a.IsValid() || !a.Addr().Is4() {
			return nil, fmt.Errorf("egress allow %v: not an IPv4 prefix", a)
		}
		p.allow = append(p.allow, a.Masked())
	}
	return p, nil
}

// refuse returns why dst is refused, or "" when egress may reach it.
func (p *egressPolicy) refuse(dst netip.Addr) string {
	dst = dst.Unmap()
	switch {
	case p.subnet.Contains(dst):
		return refuseOwnNetwork
	case dst.IsLoopback() || dst.IsUnspecified() || (dst.Is4() && dst.As4()[0] == 0):
		return refuseThisHost
	case dst.IsMulticast() || dst == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		return refuseNotUnicast
	}
	for _, a := range p.allow {
		if a.Contains(dst) {
			return ""
		}
	}
	for _, r := range refusedRanges {
		if r.prefix.Contains(dst) {
			return r.why
		}
	}
	if p.isHost(dst) {
		return refuseHost
	}
	return ""
}

// isHost reports whether a is one of the host's addresses, reading them
// again when the list is older than hostAddrsMaxAge. If they cannot be
// read, the last list read stands.
func (p *egressPolicy) isHost(a netip.Addr) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if now := time.Now(); p.host == nil || now.Sub(p.readAt) > hostAddrsMaxAge {
		p.readAt = now
		addrs, err := p.hostAddrs()
		p.readErr = err
		if err == nil || p.host == nil {
			p.host = map[netip.Addr]bool{}
			for _, h := range addrs {
				p.host[h.Unmap()] = true
			}
		}
	}
	return p.host[a]
}

// interfaceAddrs are the host's addresses.
func interfaceAddrs() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, fmt.Errorf("read host addresses: %w", err)
	}
	var out []netip.Addr
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}
