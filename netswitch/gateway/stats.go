package gateway

import "sync/atomic"

// Stats are a gateway's counters since it was created.
type Stats struct {
	// Spoofed counts frames dropped at the gateway's port because their
	// sender (IPv4 source, ARP sender, DHCP client address) is not what
	// the lease of their source MAC says.
	Spoofed uint64 `json:"spoofed"`
}

type counters struct {
	spoofed atomic.Uint64
}

// Stats returns the gateway's counters.
func (g *Gateway) Stats() Stats {
	return Stats{
		Spoofed: g.stats.spoofed.Load(),
	}
}
