package netswitch

import (
	"errors"
	"net/netip"
)

// PortOption configures a port when it is added. Every Add* method takes
// options; a port added without any behaves as before options existed: it
// learns the addresses it sends from.
type PortOption func(*portOptions)

type portOptions struct {
	pins  []MAC
	ips   []netip.Addr
	ownIP bool // the port's own IPv4 and ARP are checked against ips
	queue int  // internal ports: frames queued per source port; 0 = none
}

func collectOptions(opts []PortOption) portOptions {
	var o portOptions
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// PinMACs pins addresses to the port: frames from the port with any other
// source address are dropped (counted in PortStats.SpoofDrops), frames from
// any other port with one of these source addresses are dropped too, and the
// port learns nothing. Pin a VM NIC's configured MAC to its port so that a
// guest can neither send as another machine nor draw another machine's
// traffic to itself by sending from its address. Adding a port fails when
// one of the addresses is pinned to another port; an address learned behind
// another port moves to this one.
func PinMACs(macs ...MAC) PortOption {
	return func(o *portOptions) { o.pins = append(o.pins, macs...) }
}

// PinIPs pins IPv4 addresses to the port (the VM NIC's configured address):
// the port's IPv4 packets must come from one of them (or from 0.0.0.0, a
// DHCP client without an address), its ARP packets must claim one of them
// (or 0.0.0.0, a probe) and, when it has pinned MACs, one of those as
// sender hardware address; and no other port may claim them in ARP. Frames
// that break this are dropped and counted in PortStats.SpoofDrops. So a
// guest cannot answer ARP for the gateway or another guest and draw their
// traffic to itself. Adding a port fails when one of the addresses is
// pinned to another port. IPv6 is not checked.
func PinIPs(ips ...netip.Addr) PortOption {
	return func(o *portOptions) { o.ips, o.ownIP = append(o.ips, ips...), true }
}

// ReserveIPs reserves IPv4 addresses for the port in ARP: no other port may
// claim them (frames that do are dropped and counted), but the port's own
// frames are not checked. For a port that sends from many addresses by
// design, as the gateway does for egress.
func ReserveIPs(ips ...netip.Addr) PortOption {
	return func(o *portOptions) { o.ips = append(o.ips, ips...) }
}

// externalOptions checks options for a port with a transport of its own,
// which only pinning applies to.
func externalOptions(opts []PortOption) (portOptions, error) {
	o := collectOptions(opts)
	if o.queue != 0 {
		return o, errors.New("source queues are for internal ports")
	}
	return o, nil
}
