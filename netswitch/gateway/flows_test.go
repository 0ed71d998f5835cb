package gateway

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/miekg/dns"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/header"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func heapAndStacks() uint64 {
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse + ms.StackInuse
}

// udpOutside is an "outside" UDP server on loopback that a test dialer sends
// every egress flow to. It answers datagrams that start with "echo".
type udpOutside struct {
	pc    net.PacketConn
	mu    sync.Mutex
	conns map[uint16]*net.UDPConn // by the guest's source port
	dials atomic.Int64
	wg    sync.WaitGroup
}

func newUDPOutside(t *testing.T) *udpOutside {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	o := &udpOutside{pc: pc, conns: map[uint16]*net.UDPConn{}}
	o.wg.Add(1)
	go func() {
		defer o.wg.Done()
		b := make([]byte, 65536)
		for {
			n, from, err := pc.ReadFrom(b)
			if err != nil {
				return
			}
			if n >= 4 && string(b[:4]) == "echo" {
				pc.WriteTo(b[:n], from)
			}
		}
	}()
	t.Cleanup(func() { pc.Close(); o.wg.Wait() })
	return o
}

// dial is the gateway's Dial: UDP to the outside server, whatever the
// destination; it remembers each flow's host socket.
func (o *udpOutside) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", o.pc.LocalAddr().String())
	if err != nil {
		return nil, err
	}
	o.dials.Add(1)
	return c, nil
}

// floodUDP sends one datagram each from n new source ports of ipA, in
// steps that the gateway has taken before the next (so that the measure is
// of flows, not of the intake queue's drops).
func floodUDP(t *testing.T, r *rawPort, gwMAC [6]byte, o *udpOutside, first uint16, n int, payload string) {
	t.Helper()
	dst := netip.MustParseAddr("198.51.100.7")
	start := o.dials.Load()
	for i := 0; i < n; i++ {
		r.Inject(udpFrame(macA, gwMAC, ipA, dst, first+uint16(i), 9, []byte(payload)))
		if i%64 == 63 || i == n-1 {
			waitCount(t, "flows dialled", func() uint64 { return uint64(min(o.dials.Load()-start, int64(i+1))) }, uint64(i+1))
		}
	}
}

// TestEgressFloodIsBounded: a guest opening UDP flows as fast as the
// gateway takes them holds at most FlowsPerVM host sockets, and little
// memory per flow; flows nobody answers go after UDPUnrepliedIdle.
func TestEgressFloodIsBounded(t *testing.T) {
	const offered = 4000
	o := newUDPOutside(t)
	sw, g := setup(t, func(c *Config) {
		c.Egress = true
		c.Dial = o.dial
	})
	r := newRawPort(t, sw, "vm-a")
	perVM := g.cfg.Limits.FlowsPerVM
	heap0, fd0, gr0 := heapAndStacks(), openFDs(t), runtime.NumGoroutine()
	start := time.Now()
	floodUDP(t, r, g.MAC(), o, 10000, offered, "x")
	el := time.Since(start)
	heap1, fd1, gr1 := heapAndStacks(), openFDs(t), runtime.NumGoroutine()
	st := g.Stats()
	t.Logf("%d flows offered in %v (%.0f/s): %d open, %d evicted; heap+stacks %+.1f MiB (%.1f KiB a flow), fds %+d, goroutines %+d",
		offered, el.Round(time.Millisecond), offered/el.Seconds(), st.Flows, st.FlowsEvicted,
		float64(int64(heap1)-int64(heap0))/(1<<20), float64(int64(heap1)-int64(heap0))/1024/float64(st.Flows), fd1-fd0, gr1-gr0)
	if st.Flows != perVM || st.FlowsEvicted != uint64(offered-perVM) {
		t.Fatalf("%d flows open and %d evicted, want %d and %d", st.Flows, st.FlowsEvicted, perVM, offered-perVM)
	}
	if fd1-fd0 > perVM+16 {
		t.Fatalf("%d more descriptors for %d flows", fd1-fd0, perVM)
	}
	// Before: 2 x 64 KiB of buffers a flow. Now: no buffer while idle.
	if perFlow := (int64(heap1) - int64(heap0)) / int64(perVM); perFlow > 40<<10 {
		t.Fatalf("%d bytes a flow", perFlow)
	}

	// Nobody answered: the flows go after UDPUnrepliedIdle.
	if n := g.flows.sweep(time.Now().Add(g.cfg.Limits.UDPUnrepliedIdle + time.Second)); n != perVM {
		t.Fatalf("sweep closed %d unanswered flows, want %d", n, perVM)
	}
	waitCount(t, "descriptors over the start", func() uint64 { return uint64(max(openFDs(t)-fd0, 0)) }, 0)
	if st := g.Stats(); st.Flows != 0 || st.FlowsExpired != uint64(perVM) {
		t.Fatalf("after the sweep: %d flows, %d expired", st.Flows, st.FlowsExpired)
	}
}

// hostConns returns the host sockets the gateway dialled, in order.
type recordingDialer struct {
	*udpOutside
	mu    sync.Mutex
	conns []net.Conn
}

func (d *recordingDialer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := d.udpOutside.dial(ctx, network, addr)
	if err == nil {
		d.mu.Lock()
		d.conns = append(d.conns, c)
		d.mu.Unlock()
	}
	return c, err
}

// open reports which of the dialled sockets are still open.
func (d *recordingDialer) open() []bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	var o []bool
	for _, c := range d.conns {
		o = append(o, c.SetReadDeadline(time.Time{}) == nil) // fails once closed
	}
	return o
}

func wantOpen(t *testing.T, d *recordingDialer, want ...bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := d.open()
		same := len(got) == len(want)
		for i := 0; same && i < len(got); i++ {
			same = got[i] == want[i]
		}
		if same {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("host sockets open %v, want %v", got, want)
		}
		time.Sleep(time.Millisecond)
	}
}

// TestFlowLimits: at its bound a guest loses its least recently used flow;
// at the total bound the guest holding the most flows does.
func TestFlowLimits(t *testing.T) {
	d := &recordingDialer{udpOutside: newUDPOutside(t)}
	sw, g := setup(t, func(c *Config) {
		c.Egress = true
		c.Dial = d.dial
		c.Limits.Flows, c.Limits.FlowsPerVM = 6, 4
	})
	g.flows.moveEvery = 0 // exact LRU order for the test
	a := newRawPort(t, sw, "vm-a")
	b := newRawPort(t, sw, "vm-b")
	dst := netip.MustParseAddr("198.51.100.7")
	send := func(r *rawPort, mac [6]byte, ip netip.Addr, sport uint16, dials int64) {
		t.Helper()
		r.Inject(udpFrame(mac, g.MAC(), ip, dst, sport, 9, []byte("x")))
		waitCount(t, "dials", func() uint64 { return uint64(d.dials.Load()) }, uint64(dials))
	}
	for i := 0; i < 4; i++ {
		send(a, macA, ipA, uint16(1000+i), int64(i+1)) // flows a0..a3
	}
	// a0 is used again (its echo back shows the gateway took it); a4 then
	// evicts a1, the least recently used.
	a.Inject(udpFrame(macA, g.MAC(), ipA, dst, 1000, 9, []byte("echo")))
	waitUDPTo(t, a, 1000)
	send(a, macA, ipA, 1004, 5)
	wantOpen(t, d, true, false, true, true, true)
	if _, ofA := g.flows.counts(ipA); ofA != 4 {
		t.Fatalf("vm-a holds %d flows, want 4", ofA)
	}
	// b opens 3: the third reaches the total of 6 and evicts vm-a's least
	// recently used (a2), not one of b's.
	send(b, macB, ipB, 2000, 6)
	send(b, macB, ipB, 2001, 7)
	send(b, macB, ipB, 2002, 8)
	wantOpen(t, d, true, false, false, true, true, true, true, true)
	all, ofB := g.flows.counts(ipB)
	if all != 6 || ofB != 3 {
		t.Fatalf("%d flows, %d of vm-b; want 6 and 3", all, ofB)
	}
	if st := g.Stats(); st.FlowsEvicted != 2 {
		t.Fatalf("%d flows evicted, want 2", st.FlowsEvicted)
	}
}

// waitUDPTo waits for a UDP datagram to port on r.
func waitUDPTo(t *testing.T, r *rawPort, port uint16) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case f := <-r.frames:
			ip := header.IPv4(f[header.EthernetMinimumSize:])
			if header.Ethernet(f).Type() == header.IPv4ProtocolNumber && ip.TransportProtocol() == header.UDPProtocolNumber &&
				header.UDP(ip.Payload()).DestinationPort() == port {
				return
			}
		case <-timeout:
			t.Fatalf("no datagram to port %d within 5s", port)
		}
	}
}

// TestUDPFlowTimeouts: a flow nobody answers goes after UDPUnrepliedIdle;
// one that was answered lives until UDPIdle.
func TestUDPFlowTimeouts(t *testing.T) {
	d := &recordingDialer{udpOutside: newUDPOutside(t)}
	sw, g := setup(t, func(c *Config) {
		c.Egress = true
		c.Dial = d.dial
	})
	a := newRawPort(t, sw, "vm-a")
	dst := netip.MustParseAddr("198.51.100.7")
	a.Inject(udpFrame(macA, g.MAC(), ipA, dst, 1000, 9, []byte("echo"))) // answered
	waitUDPTo(t, a, 1000)
	a.Inject(udpFrame(macA, g.MAC(), ipA, dst, 1001, 9, []byte("x"))) // not
	waitCount(t, "dials", func() uint64 { return uint64(d.dials.Load()) }, 2)
	l := g.cfg.Limits
	if n := g.flows.sweep(time.Now().Add(l.UDPUnrepliedIdle - time.Second)); n != 0 {
		t.Fatalf("swept %d flows before any timeout", n)
	}
	if n := g.flows.sweep(time.Now().Add(l.UDPUnrepliedIdle + time.Second)); n != 1 {
		t.Fatalf("swept %d flows after the unanswered timeout, want 1", n)
	}
	wantOpen(t, d, true, false)
	if n := g.flows.sweep(time.Now().Add(l.UDPIdle + time.Second)); n != 1 {
		t.Fatalf("swept %d flows after the idle timeout, want 1", n)
	}
	wantOpen(t, d, false, false)
}

// TestUpstreamDNSBounded: queries relayed to an upstream that never answers
// stop at UpstreamDNSPerVM in flight; the rest are dropped, and local names
// are still answered.
func TestUpstreamDNSBounded(t *testing.T) {
	pc, err := net.ListenPacket("udp", "127.0.0.1:0") // reads nothing: a black hole
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	sw, g := setup(t, func(c *Config) {
		c.Egress = true
		c.Upstream = []string{pc.LocalAddr().String()}
		c.Limits.UpstreamDNSPerVM = 4
	})
	r := newRawPort(t, sw, "vm-a")
	for i := 0; i < 50; i++ {
		q := new(dns.Msg)
		q.SetQuestion(fmt.Sprintf("host%d.example.com.", i), dns.TypeA)
		b, _ := q.Pack()
		r.Inject(udpFrame(macA, g.MAC(), ipA, gwIP, uint16(3000+i), 53, b))
	}
	waitCount(t, "upstream queries dropped", func() uint64 { return g.Stats().UpstreamDrops }, 46)
	gs := newGuest(t, sw, "vm-b", macB, ipB)
	if resp := dnsQuery(t, gs, "db", dns.TypeA); len(resp.Answer) != 1 {
		t.Fatalf("local answer during the upstream stall: %v", resp)
	}
}

// TestDNSTCPConnsBounded: a guest holds at most DNSTCPConnsPerVM
// connections to the gateway's DNS; more are closed as they come.
func TestDNSTCPConnsBounded(t *testing.T) {
	sw, g := setup(t, func(c *Config) { c.Limits.DNSTCPConnsPerVM = 3 })
	gs := newGuest(t, sw, "vm-a", macA, ipA)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i < 10; i++ {
		c, err := gonet.DialContextTCP(ctx, gs.s, fullAddr(gwIP, 53), ipv4.ProtocolNumber)
		if err != nil {
			t.Fatalf("connect %d: %v", i, err)
		}
		defer c.Close()
	}
	waitCount(t, "connections refused", func() uint64 { return g.Stats().DNSConnDrops }, 7)
}
