package gateway

import "sync/atomic"

// Stats are a gateway's counters since it was created.
type Stats struct {
	// Spoofed counts frames dropped at the gateway's port because their
	// sender (IPv4 source, ARP sender, DHCP client address) is not what
	// the lease of their source MAC says.
	Spoofed uint64 `json:"spoofed"`
	// ServiceDrops counts DNS queries and DHCP messages dropped because
	// their client's share of the service queue, or the queue, was full
	// (Limits.ServiceQueuePerClient, Limits.ServiceQueue).
	ServiceDrops uint64 `json:"service_drops"`
}

type counters struct {
	spoofed, serviceDrops atomic.Uint64
}

// Stats returns the gateway's counters.
func (g *Gateway) Stats() Stats {
	return Stats{
		Spoofed:      g.stats.spoofed.Load(),
		ServiceDrops: g.stats.serviceDrops.Load(),
	}
}
