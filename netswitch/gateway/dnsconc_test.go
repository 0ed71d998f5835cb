package gateway

import (
	"testing"
	"time"

	"github.com/miekg/dns"
	"gvisor.dev/gvisor/pkg/tcpip"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// TestDNSParallelQueries sends A and AAAA back to back from one socket, as
// resolvers (busybox nslookup, glibc) do, and expects both answers.
func TestDNSParallelQueries(t *testing.T) {
	sw, _ := setup(t, nil)
	gs := newGuest(t, sw, "vm-a", macA, ipA)
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
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := dc.WriteMsg(qa); err != nil {
			t.Fatal(err)
		}
		if err := dc.WriteMsg(qaaaa); err != nil {
			t.Fatal(err)
		}
		got := map[uint16]*dns.Msg{}
		for len(got) < 2 {
			r, err := dc.ReadMsg()
			if err != nil {
				t.Fatalf("round %d: got %d of 2 answers: %v", i, len(got), err)
			}
			got[r.Id] = r
		}
		if r := got[qa.Id]; r == nil || len(r.Answer) != 1 {
			t.Fatalf("round %d: A answer %v", i, r)
		}
	}
}
