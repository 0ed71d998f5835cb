package gateway

import (
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/insomniacslk/dhcp/dhcpv4"
	"github.com/miekg/dns"
)

// TestFloodDoesNotStarveOthers: one guest floods the gateway with DNS
// queries and DHCP discovers as fast as it can; another guest's DNS queries
// and DHCP exchange are answered during the flood, and the flood's excess
// is dropped and counted at the flooder's own queues.
func TestFloodDoesNotStarveOthers(t *testing.T) {
	sw, g := setup(t, nil)
	gs := newGuest(t, sw, "vm-b", macB, ipB)
	flooder := newRawPort(t, sw, "vm-a")
	// vm-b's DHCP client: a raw port of its own that keeps only the
	// replies to its transaction (the flood's offers are broadcast too).
	disc, err := dhcpv4.NewDiscovery(net.HardwareAddr(macB[:]))
	if err != nil {
		t.Fatal(err)
	}
	offers := make(chan *dhcpv4.DHCPv4, 1)
	dhcpB, err := sw.AddInternal("vm-b-dhcp", func(f []byte) {
		if m := dhcpFromFrame(f); m != nil && m.TransactionID == disc.TransactionID {
			select {
			case offers <- m:
			default:
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}

	// The flood's queries are as costly to parse as a frame allows: many
	// records. The gateway's DNS reader is then slower than its intake,
	// which is where a shared socket buffer let one guest crowd out the
	// others.
	q := new(dns.Msg)
	q.SetQuestion("db.", dns.TypeA)
	for i := 0; i < 90; i++ {
		q.Extra = append(q.Extra, &dns.A{Hdr: dns.RR_Header{Name: ".", Rrtype: dns.TypeA, Class: dns.ClassINET}, A: net.IPv4(10, 0, 0, byte(i))})
	}
	query, err := q.Pack()
	if err != nil || len(query) > 1400 {
		t.Fatalf("flood query of %d bytes (%v)", len(query), err)
	}
	floodDisc, _ := dhcpv4.NewDiscovery(net.HardwareAddr(macA[:]))
	zero, bcast := netipZero, netipBcast
	frames := [][]byte{
		udpFrame(macA, g.MAC(), ipA, gwIP, 40000, 53, query),
		udpFrame(macA, bcastMAC, zero, bcast, 68, 67, floodDisc.ToBytes()),
	}
	stop := make(chan struct{})
	var sent atomic.Uint64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			flooder.Inject(frames[i%len(frames)])
			sent.Add(1)
		}
	}()
	defer wg.Wait()
	defer close(stop)

	// The flood is on: the flooder's queue into the gateway overflows.
	waitCount(t, "flood frames dropped", func() uint64 {
		st, _ := sw.PortStats("vm-a")
		return min(st.QueueDrops, 1)
	}, 1)
	start := time.Now()
	for i := 0; i < 20; i++ {
		if resp := dnsQuery(t, gs, "web-0", dns.TypeA); len(resp.Answer) != 1 || resp.Answer[0].(*dns.A).A.String() != ipA.String() {
			t.Fatalf("query %d during the flood: %v", i, resp)
		}
	}
	dnsTime := time.Since(start)
	dhcpB.Inject(udpFrame(macB, bcastMAC, zero, bcast, 68, 67, disc.ToBytes()))
	select {
	case o := <-offers:
		if o.MessageType() != dhcpv4.MessageTypeOffer || !o.YourIPAddr.Equal(net.IP(ipB.AsSlice())) {
			t.Fatalf("vm-b got %s of %v during the flood", o.MessageType(), o.YourIPAddr)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("vm-b's DHCP discover was not answered during the flood")
	}
	if n := sent.Load(); n < 1000 {
		t.Fatalf("the flood sent only %d frames", n)
	}
	fa, _ := sw.PortStats("vm-a")
	fb, _ := sw.PortStats("vm-b")
	fd, _ := sw.PortStats("vm-b-dhcp")
	if fb.QueueDrops != 0 || fd.QueueDrops != 0 {
		t.Fatalf("the well-behaved ports lost frames at their queues: %d, %d", fb.QueueDrops, fd.QueueDrops)
	}
	t.Logf("flood: %d frames sent, %d dropped at the flooder's queue, %d service requests dropped; 20 DNS queries of vm-b answered in %v",
		sent.Load(), fa.QueueDrops, g.Stats().ServiceDrops, dnsTime.Round(time.Millisecond))
}

var (
	netipZero  = netip.IPv4Unspecified()
	netipBcast = netip.AddrFrom4([4]byte{255, 255, 255, 255})
)
