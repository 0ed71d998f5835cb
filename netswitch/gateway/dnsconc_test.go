package gateway

import (
	"net"
	"testing"
	"time"

	"github.com/miekg/dns"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// TestDNSAnswersInOrder sends A and AAAA back to back with the same ID, as
// busybox nslookup does when the guest clock is coarse, and expects the
// answers in the order asked: such clients match replies by ID alone.
func TestDNSAnswersInOrder(t *testing.T) {
	sw, _ := setup(t, nil)
	gs := newGuest(t, sw, "vm-a", macA, ipA)
	// Resolve the gateway's MAC first. The test guest's stack (gvisor)
	// holds packets while it ARPs and may send a packet written after the
	// reply arrived ahead of the held ones; that reorders the guest's
	// sending, which is not what this test is about.
	dnsQuery(t, gs, "db", dns.TypeA)
	raddr := tcpip.FullAddress{NIC: 1, Addr: tcpip.AddrFrom4(gwIP.As4()), Port: 53}
	c, err := gonet.DialUDP(gs.s, nil, &raddr, ipv4.ProtocolNumber)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dc := &dns.Conn{Conn: c}
	for i := 0; i < 200; i++ {
		qa, qaaaa := new(dns.Msg), new(dns.Msg)
		qa.SetQuestion("db.demo.internal.", dns.TypeA)
		qaaaa.SetQuestion("db.demo.internal.", dns.TypeAAAA)
		qaaaa.Id = qa.Id
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := dc.WriteMsg(qa); err != nil {
			t.Fatal(err)
		}
		if err := dc.WriteMsg(qaaaa); err != nil {
			t.Fatal(err)
		}
		for _, want := range []uint16{dns.TypeA, dns.TypeAAAA} {
			r, err := dc.ReadMsg()
			if err != nil {
				t.Fatalf("round %d: %v", i, err)
			}
			if r.Question[0].Qtype != want {
				t.Fatalf("round %d: answer for type %d came before type %d", i, r.Question[0].Qtype, want)
			}
		}
	}
}

// TestDNSForwardsWithEgress: outside names go to the upstream resolver
// (here a server on the host's loopback) only when egress is on.
func TestDNSForwardsWithEgress(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	upstream := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
		m := new(dns.Msg)
		m.SetReply(r)
		m.Answer = append(m.Answer, &dns.A{Hdr: dns.RR_Header{Name: r.Question[0].Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 60}, A: net.IPv4(192, 0, 2, 7)})
		w.WriteMsg(m)
	})}
	started := make(chan struct{})
	upstream.NotifyStartedFunc = func() { close(started) }
	go upstream.ActivateAndServe()
	<-started
	defer upstream.Shutdown()

	sw, _ := setup(t, func(c *Config) {
		c.Egress = true
		c.Upstream = []string{pc.LocalAddr().String()}
	})
	gs := newGuest(t, sw, "vm-a", macA, ipA)
	resp := dnsQuery(t, gs, "example.com", dns.TypeA)
	if len(resp.Answer) != 1 || resp.Answer[0].(*dns.A).A.String() != "192.0.2.7" {
		t.Fatalf("forwarded answer %v", resp)
	}
	// Own names are still answered locally.
	if resp := dnsQuery(t, gs, "db", dns.TypeA); len(resp.Answer) != 1 || resp.Answer[0].(*dns.A).A.String() != ipB.String() {
		t.Fatalf("local answer %v", resp)
	}
}
