package gateway

import (
	"net"
	"net/netip"
	"testing"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/miekg/dns"
	"github.com/stackvm/stack/netswitch"
)

func fuzzGateway(f *testing.F) *Gateway {
	g, err := New(Config{Namespace: "demo", Network: "lan", Subnet: subnet, GatewayIP: gwIP, DHCP: true, DNS: true,
		Hosts: map[string]netip.Addr{"db": ipB}, Leases: map[netswitch.MAC]netip.Addr{macA: ipA}})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { g.Close() })
	return g
}

// FuzzDHCP feeds arbitrary bytes to the DHCP server: no panic, and any
// reply goes to the client's lease.
func FuzzDHCP(f *testing.F) {
	d, _ := dhcpv4.NewDiscovery(net.HardwareAddr(macA[:]))
	f.Add(d.ToBytes())
	r, _ := dhcpv4.NewRequestFromOffer(d)
	f.Add(r.ToBytes())
	f.Add([]byte{1, 1, 6, 0})
	g := fuzzGateway(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		reply, dst, err := g.dhcpReply(b)
		if err != nil {
			return
		}
		if dst == nil || reply == nil {
			t.Fatalf("reply without destination")
		}
		if y := reply.YourIPAddr; !y.IsUnspecified() && !y.Equal(net.IP(ipA.AsSlice())) {
			t.Fatalf("offered %v to someone", y)
		}
	})
}

// FuzzDNS feeds arbitrary messages to the DNS answerer: no panic, and a
// reply always carries the query's ID.
func FuzzDNS(f *testing.F) {
	for _, n := range []string{"db.", "db.demo.internal.", "x.y.demo.internal.", "example.com."} {
		m := new(dns.Msg)
		m.SetQuestion(n, dns.TypeA)
		b, _ := m.Pack()
		f.Add(b)
	}
	g := fuzzGateway(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		req := new(dns.Msg)
		if req.Unpack(b) != nil {
			return
		}
		resp := g.answerDNS(req, "udp")
		if resp.Id != req.Id {
			t.Fatalf("reply id %d for query %d", resp.Id, req.Id)
		}
		if _, err := resp.Pack(); err != nil && len(req.Question) == 1 && len(req.Question[0].Name) < 250 {
			t.Fatalf("reply does not pack: %v", err)
		}
	})
}
