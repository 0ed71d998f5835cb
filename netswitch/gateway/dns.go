package gateway

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"gvisor.dev/gvisor/pkg/tcpip/adapters/gonet"
	"gvisor.dev/gvisor/pkg/tcpip/network/ipv4"
)

// startDNS serves DNS on UDP and TCP port 53 of the gateway address.
//
// UDP queries wait in a fair queue keyed by client address (which the
// intake has checked against the frame's source MAC), so that one guest's
// flood of queries does not keep another's from being answered. The intake
// puts them there from the frames, before the stack (takeService): a
// socket's receive buffer would be shared by all guests again. Queries
// for the gateway's own names are answered by one goroutine in the order
// each client sent them. Order matters: resolvers send A and AAAA back to
// back, and some (busybox nslookup on a guest whose clock is coarse, as
// under TCG) give both the same ID and match replies by ID alone, so an
// AAAA answer overtaking the A answer reads as "no address". Queries that
// go upstream are answered concurrently.
func (g *Gateway) startDNS() error {
	addr := fullAddr(g.cfg.GatewayIP, 53)
	pc, err := g.listenUDP(addr, false)
	if err != nil {
		return fmt.Errorf("open dns socket: %w", err)
	}
	ln, err := gonet.ListenTCP(g.s, addr, ipv4.ProtocolNumber)
	if err != nil {
		pc.Close()
		return fmt.Errorf("listen dns tcp: %w", err)
	}
	g.addCloser(pc.Close)
	g.wg.Add(1)
	go g.serveDNSUDP(pc)

	lim := &limitedListener{Listener: ln, slots: g.dnsConns, drops: &g.stats.dnsConnDrops}
	tcpSrv := &dns.Server{Listener: lim, Handler: dns.HandlerFunc(func(w dns.ResponseWriter, req *dns.Msg) {
		if !g.isLocalName(req) {
			client := clientAddr(w.RemoteAddr())
			if !g.upstream.acquire(client) {
				g.stats.upstreamDrops.Add(1)
				m := new(dns.Msg)
				w.WriteMsg(m.SetRcode(req, dns.RcodeServerFailure))
				return
			}
			defer g.upstream.release(client)
		}
		w.WriteMsg(g.answerDNS(req, "tcp"))
	})}
	started := make(chan struct{})
	tcpSrv.NotifyStartedFunc = func() { close(started) }
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		if err := tcpSrv.ActivateAndServe(); err != nil && g.ctx.Err() == nil {
			g.log.Warn("dns tcp server stopped", "err", err)
		}
	}()
	<-started
	g.addCloser(tcpSrv.Shutdown)
	return nil
}

// dnsRequest is a UDP query as read, waiting for its turn.
type dnsRequest struct {
	msg  []byte
	from net.Addr
}

// serveDNSUDP reads what queries reach the socket into the fair queue (the
// intake takes the others there itself: takeService); answerDNSUDP answers
// them.
func (g *Gateway) serveDNSUDP(pc *gonet.UDPConn) {
	defer g.wg.Done()
	g.wg.Add(1)
	go g.answerDNSUDP(pc)
	buf := make([]byte, 65535)
	for {
		n, from, err := pc.ReadFrom(buf)
		if err != nil {
			return
		}
		g.queueDNS(buf[:n], from)
	}
}

// queueDNS queues a copy of a query for its turn.
func (g *Gateway) queueDNS(msg []byte, from net.Addr) {
	if !g.dnsQueue.push(clientAddr(from), dnsRequest{msg: append([]byte(nil), msg...), from: from}) {
		g.stats.serviceDrops.Add(1)
	}
}

func (g *Gateway) answerDNSUDP(pc *gonet.UDPConn) {
	defer g.wg.Done()
	for {
		_, r, ok := g.dnsQueue.pop(g.ctx.Done())
		if !ok {
			return
		}
		from := r.from
		req := new(dns.Msg)
		if req.Unpack(r.msg) != nil || req.Response {
			continue // not a query: no answer, as the RFC allows for garbage
		}
		reply := func() {
			resp := g.answerDNS(req, "udp")
			size := dns.MinMsgSize
			if o := req.IsEdns0(); o != nil {
				size = int(o.UDPSize())
			}
			resp.Truncate(size)
			b, err := resp.Pack()
			if err != nil {
				return
			}
			pc.WriteTo(b, from)
		}
		if g.isLocalName(req) {
			reply()
			continue
		}
		client := clientAddr(from)
		if !g.upstream.acquire(client) {
			g.stats.upstreamDrops.Add(1) // no answer: the client retries
			continue
		}
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			defer g.upstream.release(client)
			reply()
		}()
	}
}

// isLocalName reports whether req is answered without going upstream.
func (g *Gateway) isLocalName(req *dns.Msg) bool {
	if len(req.Question) != 1 {
		return true
	}
	_, _, forward := g.classify(req.Question[0].Name)
	return !forward
}

// classify sorts a query name: a VM name (local != ""), a name in a zone
// the gateway owns with no such VM (nx), or a name to forward.
func (g *Gateway) classify(qname string) (local string, nx bool, forward bool) {
	name := strings.ToLower(strings.TrimSuffix(qname, "."))
	zone := strings.ToLower(g.cfg.Namespace) + ".internal"
	switch {
	case !strings.Contains(name, "."):
		return name, false, false
	case strings.HasSuffix(name, "."+zone):
		l := strings.TrimSuffix(name, "."+zone)
		if strings.Contains(l, ".") {
			return "", true, false // no names below a VM
		}
		return l, false, false
	case name == "internal" || strings.HasSuffix(name, ".internal"):
		return "", true, false // other namespaces' zones do not exist here
	}
	return "", false, true
}

// answerDNS answers one query. Names the gateway owns: "<vm>" (one label)
// and "<vm>.<namespace>.internal"; everything else under ".internal" does
// not exist. Other names go upstream when egress is on and are refused
// when it is off (the guests could not reach the answer anyway).
func (g *Gateway) answerDNS(req *dns.Msg, network string) *dns.Msg {
	m := new(dns.Msg)
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		m.SetRcode(req, dns.RcodeNotImplemented)
		return m
	}
	q := req.Question[0]
	local, nx, forward := g.classify(q.Name)
	if forward {
		return g.forwardDNS(req, network)
	}
	m.SetReply(req)
	m.Authoritative = true
	a, ok := g.lookupHost(local)
	if nx || !ok {
		m.SetRcode(req, dns.RcodeNameError)
		return m
	}
	if q.Qclass == dns.ClassINET && (q.Qtype == dns.TypeA || q.Qtype == dns.TypeANY) {
		m.Answer = append(m.Answer, &dns.A{
			Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeA, Class: dns.ClassINET, Ttl: 5},
			A:   net.IP(a.AsSlice()),
		})
	}
	// Other types for a known name: NOERROR with no data.
	return m
}

// forwardDNS relays a query for an outside name to the host's resolvers.
func (g *Gateway) forwardDNS(req *dns.Msg, network string) *dns.Msg {
	m := new(dns.Msg)
	if !g.cfg.Egress {
		m.SetRcode(req, dns.RcodeRefused)
		return m
	}
	servers := g.cfg.Upstream
	if len(servers) == 0 {
		if cc, err := dns.ClientConfigFromFile("/etc/resolv.conf"); err == nil {
			for _, s := range cc.Servers {
				servers = append(servers, net.JoinHostPort(s, cc.Port))
			}
		}
	}
	c := &dns.Client{Net: network, Timeout: 3 * time.Second}
	ctx, cancel := context.WithTimeout(g.ctx, 5*time.Second)
	defer cancel()
	for _, s := range servers {
		conn, err := g.cfg.Dial(ctx, network, s)
		if err != nil {
			continue
		}
		// The exchange waits for its read deadline, not for ctx: closing
		// the connection is what ends it when the gateway closes.
		stop := context.AfterFunc(ctx, func() { conn.Close() })
		resp, _, err := c.ExchangeWithConnContext(ctx, req, &dns.Conn{Conn: conn})
		stop()
		conn.Close()
		if err == nil {
			return resp
		}
	}
	m.SetRcode(req, dns.RcodeServerFailure)
	return m
}

// clientAddr is the address of a DNS client.
func clientAddr(a net.Addr) netip.Addr {
	switch a := a.(type) {
	case *net.UDPAddr:
		return a.AddrPort().Addr().Unmap()
	case *net.TCPAddr:
		return a.AddrPort().Addr().Unmap()
	}
	return netip.Addr{}
}

// limitedListener closes connections beyond its slots (per client and in
// all) as soon as they are accepted.
type limitedListener struct {
	net.Listener
	slots *clientSlots
	drops *atomic.Uint64
}

func (l *limitedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		client := clientAddr(c.RemoteAddr())
		if !l.slots.acquire(client) {
			l.drops.Add(1)
			c.Close()
			continue
		}
		return &slotConn{Conn: c, release: sync.OnceFunc(func() { l.slots.release(client) })}, nil
	}
}

// slotConn gives its slot back when closed.
type slotConn struct {
	net.Conn
	release func()
}

func (c *slotConn) Close() error {
	c.release()
	return c.Conn.Close()
}
