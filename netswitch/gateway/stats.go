package gateway

import (
	"net/netip"
	"sync/atomic"
)

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

	// Flows is the number of egress flows open now; FlowsEvicted and
	// FlowsExpired count those closed at a bound (Limits.Flows,
	// Limits.FlowsPerVM) and those closed idle (Limits.UDPIdle,
	// Limits.UDPUnrepliedIdle).
	Flows        int    `json:"flows"`
	FlowsEvicted uint64 `json:"flows_evicted"`
	FlowsExpired uint64 `json:"flows_expired"`
	// UpstreamDrops counts DNS queries not relayed upstream because the
	// client or the gateway had as many in flight as allowed
	// (Limits.UpstreamDNSPerVM, Limits.UpstreamDNS).
	UpstreamDrops uint64 `json:"upstream_drops"`
	// DNSConnDrops counts DNS-over-TCP connections closed at once because
	// of Limits.DNSTCPConnsPerVM or Limits.DNSTCPConns.
	DNSConnDrops uint64 `json:"dns_conn_drops"`
	// EgressRefused counts egress flows refused for their destination
	// (see Config.EgressAllow).
	EgressRefused uint64 `json:"egress_refused"`
}

type counters struct {
	spoofed, serviceDrops, upstreamDrops, dnsConnDrops, egressRefused atomic.Uint64
}

// Stats returns the gateway's counters.
func (g *Gateway) Stats() Stats {
	flows, _ := g.flows.counts(netip.Addr{})
	return Stats{
		Flows:        flows,
		Spoofed:      g.stats.spoofed.Load(),
		ServiceDrops: g.stats.serviceDrops.Load(),

		FlowsEvicted:  g.flows.evicted.Load(),
		FlowsExpired:  g.flows.expired.Load(),
		UpstreamDrops: g.stats.upstreamDrops.Load(),
		DNSConnDrops:  g.stats.dnsConnDrops.Load(),
		EgressRefused: g.stats.egressRefused.Load(),
	}
}
