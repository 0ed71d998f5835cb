package netswitch

import "errors"

// PortOption configures a port when it is added. Every Add* method takes
// options; a port added without any behaves as before options existed: it
// learns the addresses it sends from.
type PortOption func(*portOptions)

type portOptions struct {
	pins  []MAC
	queue int // internal ports: frames queued per source port; 0 = none
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

// externalOptions checks options for a port with a transport of its own,
// which only pinning applies to.
func externalOptions(opts []PortOption) (portOptions, error) {
	o := collectOptions(opts)
	if o.queue != 0 {
		return o, errors.New("source queues are for internal ports")
	}
	return o, nil
}
